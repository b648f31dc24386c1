"""``lm prepare``: a large corpus -> token shards + manifest, in parallel, resumable.

The shape of nanoGPT's ``data/openwebtext/prepare.py`` and llm.c's ``fineweb.py``
(documents encoded by a process pool, each preceded by the end-of-text token, written as
uint16 shards of a fixed number of tokens), with three more guarantees:

- **Memory stays flat.** The main process streams documents (``lm/data/sources.py``) into
  chunks of about ``chunk_mb`` MB and keeps at most two chunks per worker in flight; a
  worker writes its chunk's tokens to disk itself (``lm/data/encode.py``), and shards are
  assembled from those parts block by block (``lm.data.shards.write_shards``). Peak
  memory does not grow with the corpus.
- **Kill it, run it again: the same bytes.** A finished chunk is a part file renamed into
  ``<out>/.parts/`` with a marker written last; a rerun skips finished chunks. The output
  (shards, manifest, digest) depends on the documents, the tokenizer, ``val_fraction``
  and ``shard_tokens`` only, never on ``num_workers``, ``chunk_mb`` or interruptions. The
  manifest is written last, so a directory without one is never trained on, and a lock
  (``flock`` on ``<out>/.lock``, which the kernel drops when a process dies) keeps two
  prepares out of one directory.
- **Validation is held out by document**: document ``i`` (counting from 0 in source
  order) is validation when ``i % k == k - 1``, ``k = round(1 / val_fraction)``; the same
  documents whatever the worker count.

The tokenizer is trained (BPE, char) on the first ``tokenizer_sample_mb`` MB of training
documents, or read from files (GPT-2's: ``tokenizer.path``); it is saved as
``tokenizer.json`` before any chunk is encoded, so a resumed prepare encodes with it.
"""

import contextlib
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lm.data.corpus import DataError
from lm.data.encode import dtype_of, encode_chunks, is_val, utf8_length, write_json
from lm.data.shards import (
    FORMAT,
    MANIFEST,
    SPLITS,
    TOKENIZER,
    is_prepared,
    load_tokenizer,
    manifest_digest,
    read_manifest,
    write_shards,
)
from lm.data.sources import Source
from lm.tokenizers import (
    Tokenizer,
    build_tokenizer,
    tokenizer_spec,
)

PARTS = ".parts"  # unfinished work: one part per chunk, removed once the manifest is written
PLAN = "plan.json"  # what the parts were made from; a rerun with other settings starts over
LOCK = ".lock"
MB = 10**6


@dataclass
class PrepareSettings:
    """One prepare: what to read (``source``), how to encode it, where to write.

    ``tokenizer``: a ``data.tokenizer`` spec (``{"name": "bpe", "vocab_size": 8192}``,
    ``{"name": "bpe", "path": <GPT-2 files>}``, ``"byte"``). ``num_workers``: encoding
    processes (None: the machine's cores). ``shard_tokens``: tokens per shard file (the
    last of each split holds the rest). Sizes in MB are 10^6 bytes.
    """

    source: Source
    out: str
    tokenizer: str | dict = "byte"
    val_fraction: float = 0.005
    tokenizer_sample_mb: float = 10.0
    num_workers: int | None = None
    shard_tokens: int = 100_000_000
    chunk_mb: float = 8.0
    progress: bool = True
    wait: bool = False  # wait for another prepare of `out` (lm train's first use) or refuse
    workers: int = field(init=False, default=1)

    def __post_init__(self):
        for key, value in [("val_fraction", self.val_fraction),
                           ("tokenizer_sample_mb", self.tokenizer_sample_mb),
                           ("chunk_mb", self.chunk_mb), ("shard_tokens", self.shard_tokens)]:
            if not value > 0:
                raise DataError(f"{key}={value} must be > 0")
        if self.val_fraction >= 0.5:
            raise DataError(f"val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.num_workers is not None and self.num_workers < 1:
            raise DataError(f"num_workers={self.num_workers} must be >= 1, or null for every core")
        self.workers = self.num_workers or os.cpu_count() or 1

    @property
    def val_period(self) -> int:
        """k: every k-th document (i % k == k - 1) is held out for validation."""
        return max(2, round(1 / self.val_fraction))


def prepare(settings: PrepareSettings) -> dict:
    """Prepare ``settings.source`` into ``settings.out`` and return its manifest; an
    ``out`` already prepared from the same input and settings is returned as it is.

    Raises:
        DataError: bad input (see ``Source.documents``), an empty source or an empty
            validation split, ``out`` holding something else (a file, another dataset),
            ``out`` being prepared by another process, or a disk that is full (the work
            done so far is kept for the rerun). On bad input, what this call wrote is
            removed.
    """
    out = Path(settings.out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"out={out} is a file; name a directory for the dataset")
    if out.is_dir() and not is_prepared(out) and any(out.iterdir()) and \
            not (out / PARTS).is_dir() and not (out / LOCK).exists():
        raise DataError(f"out={out} is a directory that holds other files; name a new one")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out, settings.wait):
        try:
            return _prepare_locked(settings, out)
        except DataError:  # bad input: what this prepare wrote is of no use to a rerun
            if not is_prepared(out):
                shutil.rmtree(out / PARTS, ignore_errors=True)
                (out / TOKENIZER).unlink(missing_ok=True)
                if created:
                    shutil.rmtree(out, ignore_errors=True)
            raise
        except OSError as err:  # disk full, permissions: keep the finished chunks
            raise DataError(f"writing {out} failed ({err.strerror or err}); free space or fix "
                            "permissions and run the same command again: finished chunks "
                            "are kept") from None


@contextlib.contextmanager
def _locked(out: Path, wait: bool) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out/.lock`` for the block (released on exit and by
    the kernel if the process dies, kill -9 included). A prepare that waited behind one
    that failed and removed ``out`` makes ``out`` again and locks the new one."""
    while True:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise DataError(f"out={out} is being prepared by another process; wait for "
                                "it to finish or name another directory") from None
            if not (out / LOCK).exists():  # removed while we waited: lock the new one
                continue
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
            return


def _prepare_locked(settings: PrepareSettings, out: Path) -> dict:
    source = settings.source
    print(f"prepare: reading {source.describe()}", flush=True)
    spec = tokenizer_spec(settings.tokenizer)
    plan = {  # what the output depends on; a tokenizer read from files is named by its
        "format": FORMAT,  # content (the manifest's tokenizer sha256), not by their path
        "source": source.identity(),
        "tokenizer": {key: value for key, value in spec.items() if key != "path"},
        "tokenizer_sample_mb": settings.tokenizer_sample_mb,
        "val_fraction": settings.val_fraction,
        "shard_tokens": settings.shard_tokens,
    }
    if is_prepared(out):
        manifest = read_manifest(out)
        if manifest["plan_digest"] != manifest_digest(plan):
            raise DataError(f"out={out} already holds a dataset prepared from other input or "
                            "settings; name another directory, or remove it to prepare again")
        print(f"prepare: {out} is already prepared (digest {manifest['digest'][:12]})")
        shutil.rmtree(out / PARTS, ignore_errors=True)
        return manifest
    parts = out / PARTS
    chunk_bytes = int(settings.chunk_mb * MB)
    stored = {**plan, "chunk_bytes": chunk_bytes, "tokenizer_path": spec.get("path")}
    if (parts / PLAN).is_file() and json.loads((parts / PLAN).read_text()) != stored:
        print(f"prepare: discarding an unfinished prepare of other input or settings in {out}")
        shutil.rmtree(parts)
        (out / TOKENIZER).unlink(missing_ok=True)
    parts.mkdir(exist_ok=True)
    write_json(parts / PLAN, stored)
    for stale in parts.glob(".*.tmp"):  # temporaries of a killed prepare
        stale.unlink()
    tokenizer = _tokenizer(settings, out)
    counts = encode_chunks(source, tokenizer, parts, chunk_bytes, settings.val_period,
                           settings.workers, settings.progress)
    if counts["documents"]["train"] == 0:
        raise DataError(f"{source.describe()} holds no documents; the source is empty")
    if counts["documents"]["val"] == 0:
        raise DataError(
            f"{source.describe()} holds {counts['documents']['train']} document(s); validation "
            f"holds out every {settings.val_period}th (val_fraction={settings.val_fraction}), "
            "so it is empty: use more documents (one per .txt file or record) or raise "
            "val_fraction")
    dtype = dtype_of(tokenizer)
    manifest = {
        **{k: v for k, v in plan.items() if k != "tokenizer"},
        "plan_digest": manifest_digest(plan),
        "tokenizer": {"spec": plan["tokenizer"], "type": tokenizer.to_dict()["type"],
                      "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                      "sha256": _sha256_json(tokenizer.to_dict())},
        "dtype": dtype,
        **counts,
        "shards": {split: write_shards(out, parts, split, dtype, settings.shard_tokens,
                                    settings.progress) for split in SPLITS},
    }
    manifest["digest"] = manifest_digest(manifest)
    write_json(out / MANIFEST, manifest)
    shutil.rmtree(parts, ignore_errors=True)
    tokens = {s: sum(x["tokens"] for x in manifest["shards"][s]) for s in SPLITS}
    print(f"prepare: wrote {out}: {tokens['train']:,} train tokens in "
          f"{len(manifest['shards']['train'])} shard(s), {tokens['val']:,} val tokens "
          f"({manifest['documents']['val']:,} of {sum(manifest['documents'].values()):,} "
          f"documents), {dtype}, digest {manifest['digest'][:12]}", flush=True)
    if counts["replaced"]:
        print(f"warning: {counts['replaced']:,} document(s) held bytes that are not "
              "UTF-8; they were decoded with U+FFFD in their place", file=sys.stderr, flush=True)
    return manifest


def _sha256_json(data: dict) -> str:
    return manifest_digest({"data": data})


def _tokenizer(settings: PrepareSettings, out: Path) -> Tokenizer:
    """The tokenizer of ``out`` if a killed prepare saved it; otherwise built from
    ``settings.tokenizer`` (trained on the first ``tokenizer_sample_mb`` MB of training
    documents, or read from files) and saved as ``out/tokenizer.json``."""
    if (out / TOKENIZER).is_file():
        return load_tokenizer(out)
    spec = tokenizer_spec(settings.tokenizer)
    options = {key: value for key, value in spec.items() if key != "name"}
    sample, limit = [], settings.tokenizer_sample_mb * MB
    if "path" not in options and spec["name"] != "byte":  # trained on text (char, bpe)
        size = 0
        for i, doc in enumerate(settings.source.documents()):
            if is_val(i, settings.val_period):
                continue
            sample.append(doc)
            size += utf8_length(doc)
            if size >= limit:
                break
        print(f"prepare: training the {spec['name']} tokenizer on {size / MB:.1f} MB of "
              "training documents", flush=True)
    try:
        tokenizer = build_tokenizer(spec["name"], "".join(sample), **options)
    except ValueError as err:
        raise DataError(str(err)) from None
    except OSError as err:  # tokenizer.path: files missing or unreadable
        raise DataError(f"tokenizer.path={options.get('path')}: {err.strerror or err}") from None
    if tokenizer.eos_id is None:
        raise DataError(f"tokenizer {spec} has no end-of-text token to separate documents")
    write_json(out / TOKENIZER, tokenizer.to_dict())
    return tokenizer


def settings_from_config(node: dict, out: str, progress: bool = True,
                         wait: bool = False) -> PrepareSettings:
    """``PrepareSettings`` from a ``PrepareConfig`` node as plain data (``conf/prepare.yaml``'s
    keys, or a data config's ``prepare`` node) and the output directory ``out``.

    Raises:
        DataError: a bad value or source (one line).
    """
    source = dict(node["source"])
    source["max_document_bytes"] = int(node.get("max_document_mb", 256) * MB)
    return PrepareSettings(
        source=Source(**source), out=out, tokenizer=node["tokenizer"],
        val_fraction=node["val_fraction"], tokenizer_sample_mb=node["tokenizer_sample_mb"],
        num_workers=node.get("num_workers"), shard_tokens=node["shard_tokens"],
        chunk_mb=node.get("chunk_mb", 8.0), progress=progress, wait=wait)


def ensure_prepared(data: dict) -> None:
    """Before a run on ``data.source=prepared`` (``data``: the resolved ``data`` node):
    if ``data.path`` holds no finished dataset and the config says how to make one
    (``data.prepare``: ``data=tinystories``), prepare it now, once, and say so; a
    concurrent run of the same config waits for it instead of preparing twice.

    Raises:
        DataError: no ``data.path``, or no dataset there and no ``data.prepare``.
    """
    if data.get("source") != "prepared":
        return
    path = data.get("path")
    if not path:
        raise DataError("data.source=prepared needs data.path=<a directory written by "
                        "lm prepare>")
    if is_prepared(path):
        return
    if not data.get("prepare"):
        read_manifest(path)  # raises: says what is missing and what to run
    print(f"data.path={path} is not prepared yet: preparing it now, once "
          "(lm prepare; later runs reuse it)", flush=True)
    prepare(settings_from_config(data["prepare"], path, wait=True))
