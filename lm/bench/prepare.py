"""Benchmark: ``lm prepare`` against the loop of nanoGPT's and llm.c's ``fineweb.py``.

The input is a ``.jsonl`` file of documents: the corpus (default: Shakespeare) cut at
blank lines into documents of about ``DOCUMENT_CHARS`` characters, repeated until the
documents hold ``size_mb`` MB of text; it is written once into ``work_dir`` and reused.
Both sides encode it with the same BPE (``vocab_size``, trained once on the first
``tokenizer_sample_mb`` MB of the corpus, saved as GPT-2 files in ``work_dir``), so
tokenizer training is not timed:

- **lm prepare**: ``prepare(PrepareSettings(...))`` (``lm/data/prepare.py``) into a new
  directory, ``tokenizer.path`` naming the BPE files;
- **fineweb.py**: ``reference`` below, the loop of build-nanogpt's and llm.c's
  ``fineweb.py``: a ``multiprocessing.Pool(workers)`` maps ``tokenize`` (the end-of-text
  id, then ``encode_ordinary`` of a ``tiktoken.Encoding`` of the BPE, as a uint16 array)
  over the documents with ``imap(..., chunksize=16)``, and the main process copies the
  arrays into a preallocated shard of ``shard_tokens`` tokens, writing it when full.

Each run is a fresh Python process (``python -c ... child(job)``), alternating lm,
reference, ``repeats`` times. MB/s is MB (10^6 bytes) of UTF-8 document text per wall
second of the work in that process (``prepare(...)`` or ``reference(...)``, pool start-up
and the final writes included; the interpreter's start and imports left out). Peak
memory is sampled from ``/proc`` (``lm/bench/memory.py``) over the process and all its
descendants (the pool's workers): the largest sum of RSS, and of PSS (a page shared by k
processes counts 1/k: forked workers share the parent's pages, so RSS counts them once
per worker and PSS once in all). ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` would give the
largest single process only. Then lm alone on ``small_mb`` MB shows whether its memory
grows with the input. The first repeat checks that both token streams are the same: lm's
train and validation shards against the reference's stream split by document with lm's
rule (``is_val``). The last lm output is kept in ``work_dir`` for ``lm bench train
compare=data``.

    lm bench prepare [size_mb=1000] [small_mb=250] [workers=2] [repeats=2]
    (conf/bench_prepare.yaml)

Sources: karpathy/build-nanogpt ``fineweb.py``, karpathy/llm.c ``dev/data/fineweb.py``
(which converts each full shard to a Python list before writing it; build-nanogpt writes
the array, as here, without its ``np.save`` header).
"""

import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm.atomic import atomic_file
from lm.bench import BenchPrepareConfig
from lm.bench.memory import Measured, run_measured

MB = 10**6
DOCUMENT_CHARS = 4000  # a document: paragraphs until this many characters (FineWeb's: a few KB)
IMAP_CHUNKSIZE = 16  # fineweb.py's pool.imap chunksize
BLOCK_TOKENS = 1 << 24  # tokens read at a time by the stream check
WHOLE = 2**62  # shard_tokens above any corpus's tokens: one shard per split
CHILD = "import sys; from lm.bench.prepare import child; child(sys.argv[1])"
NAMES = {"lm": "lm prepare", "reference": "fineweb.py"}


# --- the input: documents, their .jsonl file, the BPE -------------------------------

def documents_of(text: str, chars: int = DOCUMENT_CHARS) -> list[str]:
    """``text`` cut at blank lines (``"\\n\\n"``) into documents: consecutive paragraphs
    until one holds at least ``chars`` characters (the last holds the rest)."""
    docs, paragraphs, size = [], [], 0
    for paragraph in text.split("\n\n"):
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
        if size >= chars:
            docs.append("\n\n".join(paragraphs))
            paragraphs, size = [], 0
    docs.append("\n\n".join(paragraphs))
    return [doc for doc in docs if doc]


def _cached(path: Path, meta: dict) -> bool:
    """Whether ``path`` was written by this benchmark from the same input (its
    ``<path>.json`` holds ``meta``, written after ``path``)."""
    record = path.with_name(path.name + ".json")
    return path.exists() and record.is_file() and json.loads(record.read_text()) == meta


def _record(path: Path, meta: dict) -> None:
    with atomic_file(path.with_name(path.name + ".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def corpus_file(text: str, name: str, work_dir: Path, size_mb: float | None) -> tuple[Path, dict]:
    """``work_dir/<name>-<size_mb>mb.jsonl``: ``{"text": document}`` lines of
    ``documents_of(text)``, repeated until they hold ``size_mb`` MB of UTF-8 text (None:
    ``text`` once, ``<name>.jsonl``); written once, reused while ``text`` is the same.
    Returns the path and ``{"documents", "text_bytes", ...}``."""
    docs = documents_of(text)
    sizes = [len(doc.encode("utf-8")) for doc in docs]
    target = sum(sizes) if size_mb is None else size_mb * MB
    count, text_bytes = 0, 0
    while text_bytes < target:
        text_bytes += sizes[count % len(docs)]
        count += 1
    meta = {"text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "document_chars": DOCUMENT_CHARS, "documents": count, "text_bytes": text_bytes}
    path = work_dir / (f"{name}.jsonl" if size_mb is None else f"{name}-{size_mb:g}mb.jsonl")
    if not _cached(path, meta):
        print(f"writing {path}: {count:,} documents, {text_bytes / MB:,.1f} MB of text", flush=True)
        lines = [json.dumps({"text": doc}, ensure_ascii=False).encode("utf-8") + b"\n"
                 for doc in docs]
        copies, rest = divmod(count, len(docs))
        with atomic_file(path) as tmp, tmp.open("wb") as f:
            whole = b"".join(lines)
            for _ in range(copies):
                f.write(whole)
            f.write(b"".join(lines[:rest]))
        _record(path, meta)
    return path, meta


def tokenizer_files(text: str, name: str, work_dir: Path, vocab_size: int,
                    sample_mb: float) -> Path:
    """``work_dir/<name>-bpe<vocab_size>-<sample_mb>mb/``: GPT-2's ``encoder.json`` +
    ``vocab.bpe`` of a BPE trained on the first ``sample_mb`` MB of ``text``; trained
    once, reused while ``text`` is the same.

    Raises:
        ValueError: ``vocab_size`` below 257 (bytes + ``<eos>``).
    """
    from lm.tokenizers.bpe import BPETokenizer

    sample = text.encode("utf-8")[:int(sample_mb * MB)].decode("utf-8", errors="ignore")
    meta = {"sample_sha256": hashlib.sha256(sample.encode("utf-8")).hexdigest(),
            "vocab_size": vocab_size}
    path = work_dir / f"{name}-bpe{vocab_size}-{sample_mb:g}mb"
    if not _cached(path, meta):
        print(f"training BPE to vocab_size {vocab_size} on {len(sample) / MB:.1f} MB of {name} "
              f"into {path} ...", flush=True)
        tokenizer = BPETokenizer.train(sample, vocab_size)
        shutil.rmtree(path, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=work_dir, prefix=f".{path.name}."))
        tokenizer.save_gpt2(tmp)
        tmp.rename(path)
        _record(path, meta)
    return path


def dataset_dir(work_dir: Path, corpus: Path, tokenizer: Path, shard_tokens: int) -> Path:
    """Where a kept ``lm prepare`` of ``corpus`` with ``tokenizer`` in shards of
    ``shard_tokens`` tokens lies in ``work_dir`` (``...-whole`` for ``WHOLE``)."""
    shards = "whole" if shard_tokens == WHOLE else str(shard_tokens)
    return work_dir / f"prepared-{corpus.stem}-{tokenizer.name}-{shards}"


def prepared_dataset(corpus: Path, tokenizer: Path, out: Path, shard_tokens: int,
                     val_fraction: float) -> Path:
    """``out``, prepared by ``lm prepare`` from ``corpus`` with the BPE files ``tokenizer``
    unless it already holds a finished dataset."""
    from lm.data.prepare import PrepareSettings, prepare
    from lm.data.shards import is_prepared
    from lm.data.sources import Source

    if not is_prepared(out):
        prepare(PrepareSettings(source=Source(path=str(corpus)), out=str(out),
                                tokenizer={"name": "bpe", "path": str(tokenizer)},
                                val_fraction=val_fraction, shard_tokens=shard_tokens))
    return out


# --- the two variants, each run in a child process ----------------------------------

def run_lm(job: dict) -> dict:
    """``lm prepare`` of ``job["input"]`` into ``job["out"]``: seconds and tokens."""
    from lm.data.prepare import PrepareSettings, prepare
    from lm.data.sources import Source

    start = time.perf_counter()
    manifest = prepare(PrepareSettings(
        source=Source(path=job["input"]), out=job["out"],
        tokenizer={"name": "bpe", "path": job["tokenizer"]}, val_fraction=job["val_fraction"],
        num_workers=job["workers"], shard_tokens=job["shard_tokens"], progress=False))
    seconds = time.perf_counter() - start
    tokens = {split: sum(s["tokens"] for s in shards) for split, shards in manifest["shards"].items()}
    return {"seconds": seconds, "tokens": sum(tokens.values()), "split_tokens": tokens}


_ENCODER: dict = {}  # a reference worker's tiktoken.Encoding and end-of-text id


def _init_reference(tokenizer_dir: str) -> None:
    from lm.tokenizers.bpe import BPETokenizer

    tokenizer = BPETokenizer.load_gpt2(tokenizer_dir)
    _ENCODER.update(enc=tokenizer.to_tiktoken(), eot=tokenizer.eos_id)


def tokenize(text: str) -> np.ndarray:
    """fineweb.py's ``tokenize``: the end-of-text id, then the document's ids, uint16."""
    tokens = [_ENCODER["eot"]]  # the special <|endoftext|> token delimits all documents
    tokens.extend(_ENCODER["enc"].encode_ordinary(text))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)


def _texts(path: str):
    """The documents of a .jsonl file, read in the main process (fineweb.py's ``fw``)."""
    with open(path, "rb") as f:
        for line in f:
            yield json.loads(line)["text"]


def reference(input_path: str, out: str, tokenizer_dir: str, workers: int,
              shard_tokens: int) -> list[str]:
    """fineweb.py's loop: encode the documents of ``input_path`` in ``workers`` processes
    into ``out/fineweb_{val,train}_NNNNNN.bin`` (the first shard is "val", as there);
    return the shard files in stream order."""
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    files = []
    with context.Pool(workers, initializer=_init_reference, initargs=(tokenizer_dir,)) as pool:
        shard_index = 0
        all_tokens_np = np.empty((shard_tokens,), dtype=np.uint16)  # the current shard
        token_count = 0
        for tokens in pool.imap(tokenize, _texts(input_path), chunksize=IMAP_CHUNKSIZE):
            if token_count + len(tokens) < shard_tokens:
                all_tokens_np[token_count:token_count + len(tokens)] = tokens
                token_count += len(tokens)
            else:  # fill the shard, write it, start the next with the document's rest
                remainder = shard_tokens - token_count
                all_tokens_np[token_count:token_count + remainder] = tokens[:remainder]
                files.append(_write_shard(out, shard_index, all_tokens_np))
                shard_index += 1
                all_tokens_np[0:len(tokens) - remainder] = tokens[remainder:]
                token_count = len(tokens) - remainder
        if token_count != 0:
            files.append(_write_shard(out, shard_index, all_tokens_np[:token_count]))
    return files


def _write_shard(out: str, index: int, tokens: np.ndarray) -> str:
    split = "val" if index == 0 else "train"
    path = os.path.join(out, f"fineweb_{split}_{index:06d}.bin")
    tokens.tofile(path)
    return path


def run_reference(job: dict) -> dict:
    """``reference`` of ``job["input"]`` into ``job["out"]``: seconds, tokens, shard files."""
    os.makedirs(job["out"])
    start = time.perf_counter()
    files = reference(job["input"], job["out"], job["tokenizer"], job["workers"],
                      job["shard_tokens"])
    seconds = time.perf_counter() - start
    tokens = sum(os.path.getsize(f) // 2 for f in files)
    return {"seconds": seconds, "tokens": tokens, "files": files}


VARIANTS = {"lm": run_lm, "reference": run_reference}


def child(job_path: str) -> None:
    """A child process's work: run ``VARIANTS[job["variant"]]`` on the job in
    ``job_path`` (JSON) and write its result to ``job["result"]``."""
    job = json.loads(Path(job_path).read_text())
    result = VARIANTS[job["variant"]](job)
    Path(job["result"]).write_text(json.dumps(result))


@dataclass
class Run:
    """One variant's run: its result (``seconds``, ``tokens``, ...) and memory."""

    variant: str
    result: dict
    measured: Measured
    out: Path


def run_variant(variant: str, job: dict, run_dir: Path) -> Run:
    """``variant`` on ``job`` in a fresh Python process, writing into ``run_dir/<variant>``."""
    out = run_dir / variant
    job = {**job, "variant": variant, "out": str(out), "result": str(run_dir / f"{variant}.json")}
    job_path = run_dir / f"{variant}.job.json"
    job_path.write_text(json.dumps(job))
    measured = run_measured([sys.executable, "-c", CHILD, str(job_path)],
                            run_dir / f"{variant}.log")
    return Run(variant, json.loads(Path(job["result"]).read_text()), measured, out)


# --- the token streams --------------------------------------------------------------

def _digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def same_streams(lm_out: Path, reference_files: list[str], tokenizer: Path) -> bool:
    """Whether lm's train and val shards hold the reference's token stream split by
    document with lm's rule: document ``i`` (counted from its end-of-text token) goes to
    val when ``is_val(i, period)``. Reads ``BLOCK_TOKENS`` tokens at a time."""
    from lm.data.prepare import is_val
    from lm.data.shards import read_manifest
    from lm.tokenizers.bpe import BPETokenizer

    manifest = read_manifest(lm_out)
    period = max(2, round(1 / manifest["val_fraction"]))  # PrepareSettings.val_period
    eot = BPETokenizer.load_gpt2(tokenizer).eos_id
    got = {"train": hashlib.sha256(), "val": hashlib.sha256()}
    started = 0  # documents begun before this block
    for path in reference_files:
        with open(path, "rb") as f:
            while len(ids := np.fromfile(f, dtype=np.uint16, count=BLOCK_TOKENS)):
                document = started - 1 + np.cumsum(ids == eot)  # (n,) each token's document
                val = is_val(document, period)
                got["train"].update(ids[~val].tobytes())
                got["val"].update(ids[val].tobytes())
                started = int(document[-1]) + 1
    return all(got[split].hexdigest() ==
               _digest([lm_out / s["file"] for s in manifest["shards"][split]])
               for split in got)


# --- the benchmark -------------------------------------------------------------------

def _mb(n: int | None) -> str:
    return "   n/a" if n is None else f"{n / MB:6.0f}"


def _row(label: str, run: Run, text_bytes: int) -> str:
    m = run.measured
    return (f"  {label}: {NAMES[run.variant]:<10} {text_bytes / MB / run.result['seconds']:7.2f} "
            f"MB/s  {run.result['seconds']:7.1f} s  peak RSS {_mb(m.peak_rss)} MB "
            f"(PSS {_mb(m.peak_pss)} MB)  {run.result['tokens']:,} tokens")


def check_settings(cfg: BenchPrepareConfig) -> None:
    """Raises ValueError (one line) for a setting out of its range."""
    for key in ("size_mb", "small_mb", "tokenizer_sample_mb", "val_fraction"):
        if not getattr(cfg, key) > 0:
            raise ValueError(f"{key}={getattr(cfg, key)} is invalid: must be > 0")
    for key in ("workers", "repeats", "shard_tokens"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} is invalid: must be an integer >= 1")
    if not 257 <= cfg.vocab_size <= 2**16:
        raise ValueError(f"vocab_size={cfg.vocab_size} is invalid: must be in [257, 65536] "
                         "(bytes + <eos>; fineweb.py writes uint16)")
    if cfg.val_fraction >= 0.5:
        raise ValueError(f"val_fraction={cfg.val_fraction} is invalid: must be in (0, 0.5)")


def bench_inputs(cfg: BenchPrepareConfig) -> tuple[str, str]:
    """(the corpus text, its name): ``corpus``, or the Shakespeare corpus of ``data_dir``."""
    from lm.bench.tokenizer import read_corpus
    from lm.data.corpus import shakespeare_text

    if cfg.corpus is None:
        return shakespeare_text(cfg.data_dir), "shakespeare"
    return read_corpus(Path(cfg.corpus)), Path(cfg.corpus).stem


def bench_prepare(cfg: BenchPrepareConfig) -> int:
    """``lm bench prepare``: print MB/s and peak memory of each run, the token counts and
    whether the streams agree, the medians and their ratio, and lm's memory at two sizes.

    Raises:
        ValueError: a setting out of range, or a corpus that cannot be read (one line).
        RuntimeError: a run failed (its last line).
    """
    check_settings(cfg)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    text, name = bench_inputs(cfg)
    tokenizer = tokenizer_files(text, name, work, cfg.vocab_size, cfg.tokenizer_sample_mb)
    big, big_meta = corpus_file(text, name, work, cfg.size_mb)
    small, small_meta = corpus_file(text, name, work, cfg.small_mb)
    job = {"tokenizer": str(tokenizer), "workers": cfg.workers, "val_fraction": cfg.val_fraction,
           "shard_tokens": cfg.shard_tokens}
    print(f"benchmark: {NAMES['lm']} against {NAMES['reference']}'s loop on {big} "
          f"({big_meta['documents']:,} documents, {big_meta['text_bytes'] / MB:,.1f} MB of text), "
          f"BPE vocab_size {cfg.vocab_size}, {cfg.workers} worker(s), {cfg.repeats} alternating "
          f"repeat(s); peak memory: sums over each process tree", flush=True)
    runs: dict[str, list[Run]] = {"lm": [], "reference": []}
    for repeat in range(1, cfg.repeats + 1):
        with tempfile.TemporaryDirectory(dir=work, prefix="run-") as tmp:
            for variant, done in runs.items():
                done.append(run_variant(variant, {**job, "input": str(big)}, Path(tmp)))
                print(_row(f"repeat {repeat}", done[-1], big_meta["text_bytes"]), flush=True)
            if repeat == 1:
                print(stream_line(runs["lm"][0], runs["reference"][0], tokenizer), flush=True)
            keep(runs["lm"][-1].out, dataset_dir(work, big, tokenizer, cfg.shard_tokens))
    with tempfile.TemporaryDirectory(dir=work, prefix="run-") as tmp:
        small_run = run_variant("lm", {**job, "input": str(small)}, Path(tmp))
    print(_row(f"{cfg.small_mb:g} MB input", small_run, small_meta["text_bytes"]), flush=True)
    print_summary(cfg, runs, small_run, big_meta["text_bytes"])
    return 0


def stream_line(lm_run: Run, reference_run: Run, tokenizer: Path) -> str:
    """The tokens each side wrote and whether the streams are the same."""
    split = lm_run.result["split_tokens"]
    same = same_streams(lm_run.out, reference_run.result["files"], tokenizer)
    return (f"tokens: {NAMES['lm']} {lm_run.result['tokens']:,} (train {split['train']:,} + "
            f"val {split['val']:,}), {NAMES['reference']} {reference_run.result['tokens']:,}; "
            f"token streams identical: {'yes' if same else 'NO'}")


def keep(out: Path, where: Path) -> None:
    """Move lm's output ``out`` to ``where`` unless a dataset is there already (for
    ``lm bench train compare=data``)."""
    from lm.data.shards import is_prepared

    if not is_prepared(where):
        shutil.rmtree(where, ignore_errors=True)
        out.rename(where)


def _median(runs: list, value) -> float | None:
    values = [value(r) for r in runs]
    return None if None in values else statistics.median(values)


def print_summary(cfg: BenchPrepareConfig, runs: dict[str, list[Run]], small_run: Run,
                  text_bytes: int) -> None:
    """The medians of MB/s and peak memory, their ratios and lm's memory at two sizes."""
    speed = {v: _median(r, lambda run: text_bytes / MB / run.result["seconds"])
             for v, r in runs.items()}
    rss = {v: _median(r, lambda run: run.measured.peak_rss) for v, r in runs.items()}
    pss = {v: _median(r, lambda run: run.measured.peak_pss) for v, r in runs.items()}
    for v in runs:
        print(f"{NAMES[v]:<10} (median): {speed[v]:7.2f} MB/s, peak RSS {_mb(rss[v])} MB "
              f"(PSS {_mb(pss[v])} MB)")
    print(f"ratio lm/reference MB/s: {speed['lm'] / speed['reference']:.3f} (target >= 0.8)")
    if rss["reference"]:
        print(f"ratio lm/reference peak RSS: {rss['lm'] / rss['reference']:.3f}, "
              f"PSS: {pss['lm'] / pss['reference']:.3f}")
    m = small_run.measured
    print(f"lm prepare peak RSS by input size: {cfg.small_mb:g} MB {_mb(m.peak_rss).strip()} MB "
          f"(PSS {_mb(m.peak_pss).strip()} MB), {cfg.size_mb:g} MB {_mb(rss['lm']).strip()} MB "
          f"(PSS {_mb(pss['lm']).strip()} MB)")
