"""Token ids for training: corpus -> train/val split -> cached token ids -> windows.

Follows nanoGPT: `data/shakespeare_char/prepare.py` (first 90% of the characters
train, the rest validation; ids stored as uint16 `.bin` files read through
`np.memmap`) and `train.py:get_batch` (random windows of block_size + 1 tokens,
y = x shifted by one). Unlike nanoGPT, a batch is a pure function of
(seed, stream, step), so a resumed run draws the same batches as an
uninterrupted one. The LightningDataModule that serves these windows as batches is
in ``lm/data/datamodule.py``.
"""

import hashlib
import json
import os
import secrets
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from lm.data.corpus import DataError
from lm.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_dict, tokenizer_spec

# Random-number streams of get_batch: training step s uses seed sequence
# [seed, TRAIN_STREAM, s], validation batch i uses [eval_seed, VAL_STREAM, i]
# (``data.eval_seed``), so the fixed validation batches never coincide with any training
# batch's draw, and runs at every seed are scored on the same ones.
TRAIN_STREAM, VAL_STREAM = 0, 1


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(train_text, val_text): the first int(len(text) * (1 - val_fraction)) characters
    train, the rest validation (nanoGPT shakespeare_char `prepare.py`).

    Raises:
        DataError: val_fraction is not in (0, 1).
    """
    check_val_fraction(val_fraction)
    n_train = int(len(text) * (1 - val_fraction))
    return text[:n_train], text[n_train:]


def check_val_fraction(val_fraction: float) -> None:
    """Raise ``DataError`` unless ``val_fraction`` is in (0, 1)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction={val_fraction} must be in (0, 1)")


def get_batch(
    ids: np.ndarray,
    block_size: int,
    batch_size: int,
    seed: int,
    step: int,
    stream: int = TRAIN_STREAM,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of block_size + 1 consecutive tokens of `ids` (nanoGPT `get_batch`),
    rank `rank`'s share of a data-parallel step.

    The step's global batch is `world_size * batch_size` offsets drawn from
    `np.random.default_rng([seed, stream, step])`; rank r takes offsets
    `[r * batch_size, (r + 1) * batch_size)`. So a batch depends on these integers
    (all >= 0) only, never on global RNG state; ranks draw different windows; one
    process (world_size 1) draws what it always did; and the global batch of N ranks
    equals one process's batch of N * batch_size (NumPy draws bounded integers one after
    another, so the first k of a longer draw are the k of a shorter one).

    Args:
        ids: 1-D token ids (array or memmap), length N >= block_size + 1.
        rank, world_size: this process's global rank in [0, world_size) and the number
            of data-parallel processes.
    Returns:
        x, y: int64 tensors of shape (batch_size, block_size), x = window[:-1],
        y = window[1:].
    Raises:
        ValueError: N < block_size + 1, or rank not in [0, world_size).
    """
    if len(ids) < block_size + 1:
        raise ValueError(
            f"{len(ids)} tokens cannot fill a window of block_size + 1 = {block_size + 1}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    rng = np.random.default_rng([seed, stream, step])
    offsets = rng.integers(0, len(ids) - block_size, size=world_size * batch_size)  # (W*B,)
    return windows_at(ids, offsets[rank * batch_size:(rank + 1) * batch_size], block_size)


def windows_at(
    ids: np.ndarray, offsets: np.ndarray | list[int], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y: int64 (B, length) inputs and next-token targets of the windows of
    ``length + 1`` consecutive ids starting at each of the B ``offsets``."""
    index = np.asarray(offsets)[:, None] + np.arange(length + 1)  # (B, length + 1)
    windows = torch.from_numpy(np.asarray(ids[index], dtype=np.int64))  # (B, length + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, length) each


def token_cache_dir(
    text: str, tokenizer: str | dict, val_fraction: float, cache_dir: str | os.PathLike
) -> Path:
    """`<cache_dir>/tokens/<sha256(text)[:16]>-<name>-<sha256(spec)[:8]>-<val_fraction>`.

    The name holds a hash of the whole tokenizer spec, so a trained tokenizer (BPE) is
    cached by (corpus hash, tokenizer config) and two vocab sizes never share a cache.
    """
    spec = tokenizer_spec(tokenizer)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    spec_digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    name = f"{digest[:16]}-{spec['name']}-{spec_digest[:8]}-{float(val_fraction)!r}"
    return Path(cache_dir) / "tokens" / name


def fixed_tokenizer_spec(tokenizer: Tokenizer) -> dict:
    """The spec of a given tokenizer (a fine-tune's, from its checkpoint): its type and
    the SHA-256 of its ``to_dict()``, so its token cache is its own."""
    state = tokenizer.to_dict()
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    return {"name": state["type"], "fixed_sha256": digest}


def prepare_tokens(
    text: str, tokenizer: str | dict, val_fraction: float, cache_dir: str | os.PathLike,
    fixed: Tokenizer | None = None,
) -> Path:
    """Tokenize `text` once into a cache directory and return its path.

    `fixed`: encode with this tokenizer (a fine-tune keeps its checkpoint's) instead of
    training one on the train split; `tokenizer` is then ignored for
    `fixed_tokenizer_spec(fixed)`.

    The directory (see `token_cache_dir`) holds `train.bin`, `val.bin` (raw token
    ids, uint16 if the vocabulary has fewer than 65536 entries else uint32),
    `tokenizer.json` (trained on the train split only) and `meta.json` (token
    counts, dtype, text SHA-256, character and UTF-8 byte counts). It is built in
    a temporary sibling directory and renamed into place, so an interrupted build
    leaves no partial cache; an existing cache is returned untouched.

    Raises:
        DataError: bad val_fraction. ValueError: unknown tokenizer name.
    """
    spec = fixed_tokenizer_spec(fixed) if fixed is not None else tokenizer_spec(tokenizer)
    out = token_cache_dir(text, spec, val_fraction, cache_dir)
    if out.is_dir():
        return out
    print(f"tokenizing {len(text):,} characters with {spec} into {out} (once; cached after)",
          flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()  # not mkdtemp: the cache should get the umask's permissions, not 0700
    try:
        _build_token_cache(tmp, text, spec, val_fraction, fixed)
        os.rename(tmp, out)
    except OSError:
        if not out.is_dir():  # a concurrent build that won the rename is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_token_cache(out: Path, text: str, spec: dict, val_fraction: float,
                       fixed: Tokenizer | None = None) -> None:
    train_text, val_text = split_text(text, val_fraction)
    if fixed is not None:
        tokenizer = fixed
    else:
        options = {key: value for key, value in spec.items() if key != "name"}
        tokenizer = build_tokenizer(spec["name"], train_text, **options)
    dtype = np.uint16 if tokenizer.vocab_size < 2**16 else np.uint32
    train_ids = tokenizer.encode_array(train_text).astype(dtype)
    val_ids = tokenizer.encode_array(val_text).astype(dtype)
    train_ids.tofile(out / "train.bin")
    val_ids.tofile(out / "val.bin")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer.to_dict()))
    meta = {
        "tokenizer": spec,
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "val_fraction": val_fraction,
        "n_train": len(train_ids),
        "n_val": len(val_ids),
        "n_chars": len(text),
        "val_text_bytes": len(val_text.encode("utf-8")),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def unknown_chars(text: str, ids: np.ndarray, tokenizer: Tokenizer) -> Counter[str]:
    """The characters of ``text`` that ``tokenizer`` cannot represent (each encodes to
    ``<unk>``), with their counts in ``text``; ``ids`` (shape (N,)) is ``text`` encoded.

    Empty, without reading ``text``, when no id is ``unk_id``: always for a tokenizer
    without ``<unk>`` (byte-level ones, BPE included, cover every text). A char
    tokenizer makes one ``<unk>`` per such character, so the counts sum to its
    ``<unk>`` tokens.
    """
    unk = tokenizer.unk_id
    if unk is None or not np.any(ids == unk):
        return Counter()
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)  # (len(text),)
    distinct, counts = np.unique(codes, return_counts=True)  # (K,) each
    return Counter({chr(c): int(n) for c, n in zip(distinct, counts, strict=True)
                    if tokenizer.encode(chr(c)) == [unk]})


def load_tokens(directory: str | os.PathLike) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
    """(tokenizer, train_ids, val_ids) from a `prepare_tokens` directory; the ids are
    read-only `np.memmap`s of shape (N,) (an empty split is an empty array)."""
    directory = Path(directory)
    meta = load_meta(directory)
    tokenizer = tokenizer_from_dict(json.loads((directory / "tokenizer.json").read_text()))
    splits = [
        _memmap(directory / f"{s}.bin", meta["dtype"], meta[f"n_{s}"]) for s in ("train", "val")
    ]
    return tokenizer, *splits


def load_meta(directory: str | os.PathLike) -> dict:
    """The ``meta.json`` of a ``prepare_tokens`` directory (see ``_build_token_cache``)."""
    return json.loads((Path(directory) / "meta.json").read_text())


def _memmap(path: Path, dtype: str, n: int) -> np.ndarray:
    if n == 0:  # np.memmap cannot map an empty file
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))
