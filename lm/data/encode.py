"""The encoding half of ``lm prepare`` (``lm/data/prepare.py``): documents -> chunks ->
token parts, in a pool of worker processes.

The main process streams documents (``lm/data/sources.py``) and cuts them into chunks of
about ``chunk_mb`` MB (``chunks``), keeping at most two chunks per worker in flight; each
worker encodes its chunk (``encode_chunk``: every document after the end-of-text token,
training and validation documents apart) and writes it itself as
``<parts>/<chunk>.{train,val}.bin`` with a marker ``<chunk>.json`` written last, so a
chunk is finished exactly when its marker exists and a rerun skips it. Workers are
spawned: they import the tokenizers and numpy, not the torch and Hydra of the command.
"""

import contextlib
import json
import multiprocessing
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lm.atomic import atomic_file
from lm.data.shards import SPLITS
from lm.data.sources import Source
from lm.tokenizers import Tokenizer, ordinary_encoder, tokenizer_from_dict
from lm.tokenizers.byte import to_valid_unicode


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as sorted, indented JSON, atomically (``atomic_file``)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))


def dtype_of(tokenizer: Tokenizer) -> str:
    """The token dtype of a prepared dataset: uint16 while the ids fit (< 65,536), else uint32."""
    return "uint16" if tokenizer.vocab_size <= 2**16 else "uint32"


def is_val(index: int, period: int) -> bool:
    """Whether document ``index`` (0-based, source order) is held out for validation."""
    return index % period == period - 1


def encode_chunks(source: Source, tokenizer: Tokenizer, parts: Path, chunk_bytes: int,
                  val_period: int, workers: int, progress: bool = True) -> dict:
    """Encode every chunk of ``source`` not finished yet in ``workers`` processes (one:
    this process), validation documents by ``is_val(index, val_period)``; return the
    totals over all chunks: documents, UTF-8 bytes and ``<unk>`` tokens per split, and the
    documents decoded with replacement. A progress bar (``progress``, on a terminal) shows
    MB/s and the ETA."""
    totals = {"documents": dict.fromkeys(SPLITS, 0), "bytes": dict.fromkeys(SPLITS, 0),
              "unk_tokens": dict.fromkeys(SPLITS, 0)}
    with tqdm(total=source.input_bytes, unit="B", unit_scale=True, unit_divisor=1000,
              desc="prepare", disable=None if progress else True,  # None: a terminal
              mininterval=1.0, smoothing=0.1) as bar, \
            _pool(workers, tokenizer, parts) as pool:

        def add(done: dict) -> None:
            for key, total in totals.items():
                for split in SPLITS:
                    total[split] += done[key][split]
            bar.update(done["bytes"]["train"] + done["bytes"]["val"])

        pending: deque = deque()
        for number, first, docs in _chunks(source, chunk_bytes):
            marker = parts / f"{number:06d}.json"
            if marker.is_file():  # finished before an interruption
                add(json.loads(marker.read_text()))
                continue
            pending.append(pool.apply_async(_encode_chunk,
                                            (number, first, docs, val_period)))
            while len(pending) >= 2 * workers:
                add(pending.popleft().get())
        while pending:
            add(pending.popleft().get())
        bar.total = bar.n  # the input's size only estimates the documents' bytes
    return {**totals, "replaced": source.replaced}


class _InProcess:
    """``num_workers=1``: the chunks are encoded in this process, one by one, by the same
    ``_encode_chunk`` (no pool to start); ``apply_async(...).get()`` as a pool's."""

    def __init__(self, tokenizer: Tokenizer, parts: Path):
        _init_worker(tokenizer.to_dict(), str(parts))

    def apply_async(self, function, args) -> "_Done":
        return _Done(function(*args))


@dataclass
class _Done:
    """A result already computed, with the ``get()`` of a pool's ``AsyncResult``."""

    value: dict

    def get(self) -> dict:
        return self.value


@contextlib.contextmanager
def _pool(workers: int, tokenizer: Tokenizer, parts: Path):
    """A process pool of ``workers`` encoders, or this process for one."""
    if workers == 1:
        yield _InProcess(tokenizer, parts)
        return
    # Workers start fresh (spawn): they import the tokenizers and numpy, not the torch
    # and Hydra of the command that started them, and no thread state is forked.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker,
                      initargs=(tokenizer.to_dict(), str(parts))) as pool:
        yield pool


def _chunks(source: Source, chunk_bytes: int) -> Iterator[tuple[int, int, list[str]]]:
    """(chunk number, index of its first document, its documents): consecutive documents
    until they pass ``chunk_bytes`` UTF-8 bytes (the last chunk holds the rest). The cut
    depends on the documents alone, so a rerun cuts the same chunks."""
    number, first, docs, size = 0, 0, [], 0
    for index, doc in enumerate(source.documents()):
        docs.append(doc)
        size += len(doc)  # characters: a cheap, deterministic stand-in for bytes
        if size >= chunk_bytes:
            yield number, first, docs
            number, first, docs, size = number + 1, index + 1, [], 0
    if docs:
        yield number, first, docs


_WORKER: dict = {}


def _init_worker(tokenizer_state: dict, parts: str) -> None:
    tokenizer = tokenizer_from_dict(tokenizer_state)
    _WORKER.update(encode=ordinary_encoder(tokenizer), eos=tokenizer.eos_id,
                   unk=tokenizer.unk_id, dtype=dtype_of(tokenizer), parts=Path(parts))


def _encode_chunk(number: int, first: int, docs: list[str], period: int) -> dict:
    """Encode one chunk into ``<parts>/<number>.{train,val}.bin`` and its marker
    ``<number>.json`` (written last: the chunk is finished when the marker exists)."""
    encode, dtype = _WORKER["encode"], _WORKER["dtype"]
    eos = np.array([_WORKER["eos"]], dtype=dtype)
    pieces = {split: [] for split in SPLITS}
    done = {"documents": dict.fromkeys(SPLITS, 0), "bytes": dict.fromkeys(SPLITS, 0),
            "unk_tokens": dict.fromkeys(SPLITS, 0)}
    for index, doc in enumerate(docs, start=first):
        split = "val" if is_val(index, period) else "train"
        pieces[split] += [eos, encode(doc)]
        done["documents"][split] += 1
        done["bytes"][split] += utf8_length(doc)
    parts = _WORKER["parts"]
    for split in SPLITS:
        ids = np.concatenate(pieces[split]).astype(dtype) if pieces[split] else \
            np.empty(0, dtype=dtype)
        if _WORKER["unk"] is not None:
            done["unk_tokens"][split] = int(np.count_nonzero(ids == _WORKER["unk"]))
        with atomic_file(parts / f"{number:06d}.{split}.bin") as tmp:
            ids.tofile(tmp)
    write_json(parts / f"{number:06d}.json", done)
    return done


def utf8_length(text: str) -> int:
    """UTF-8 bytes of ``text`` (a lone surrogate as U+FFFD's 3); ASCII text is not encoded
    (``str.isascii`` reads a flag CPython keeps)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return len(to_valid_unicode(text).encode("utf-8"))
