"""Token windows for training: corpus -> train/val split -> cached token ids -> batches.

Follows nanoGPT: `data/shakespeare_char/prepare.py` (first 90% of the characters
train, the rest validation; ids stored as uint16 `.bin` files read through
`np.memmap`) and `train.py:get_batch` (random windows of block_size + 1 tokens,
y = x shifted by one). Unlike nanoGPT, a batch is a pure function of
(seed, stream, step), so a resumed run draws the same batches as an
uninterrupted one.
"""

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lm.data.corpus import DataError, load_text
from lm.tokenizers.char import build_tokenizer, tokenizer_from_dict

# Random-number streams of get_batch: training step s uses seed sequence
# [seed, TRAIN_STREAM, s], validation batch i uses [seed, VAL_STREAM, i], so the
# fixed validation batches never coincide with any training batch's draw.
TRAIN_STREAM, VAL_STREAM = 0, 1


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(train_text, val_text): the first int(len(text) * (1 - val_fraction)) characters
    train, the rest validation (nanoGPT shakespeare_char `prepare.py`).

    Raises:
        DataError: val_fraction is not in (0, 1).
    """
    _check_val_fraction(val_fraction)
    n_train = int(len(text) * (1 - val_fraction))
    return text[:n_train], text[n_train:]


def _check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction={val_fraction} must be in (0, 1)")


def get_batch(
    ids: np.ndarray,
    block_size: int,
    batch_size: int,
    seed: int,
    step: int,
    stream: int = TRAIN_STREAM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of block_size + 1 consecutive tokens of `ids` (nanoGPT `get_batch`).

    Offsets are drawn from `np.random.default_rng([seed, stream, step])`: the batch
    depends on these three integers (all >= 0) only, never on global RNG state.

    Args:
        ids: 1-D token ids (array or memmap), length N >= block_size + 1.
    Returns:
        x, y: int64 tensors of shape (batch_size, block_size), x = window[:-1],
        y = window[1:].
    Raises:
        ValueError: N < block_size + 1.
    """
    if len(ids) < block_size + 1:
        raise ValueError(
            f"{len(ids)} tokens cannot fill a window of block_size + 1 = {block_size + 1}"
        )
    rng = np.random.default_rng([seed, stream, step])
    offsets = rng.integers(0, len(ids) - block_size, size=batch_size)  # (B,)
    index = offsets[:, None] + np.arange(block_size + 1)  # (B, T + 1)
    windows = torch.from_numpy(np.asarray(ids[index], dtype=np.int64))  # (B, T + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T), (B, T)


def tokenizer_spec(tokenizer: str | dict) -> dict:
    """``"char"`` or ``{"name": "bpe", "vocab_size": 2048}`` -> a dict with ``name``
    and only the options that are set (None means "the tokenizer's default")."""
    spec = {"name": tokenizer} if isinstance(tokenizer, str) else dict(tokenizer)
    return {key: value for key, value in spec.items() if value is not None}


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


def prepare_tokens(
    text: str, tokenizer: str | dict, val_fraction: float, cache_dir: str | os.PathLike
) -> Path:
    """Tokenize `text` once into a cache directory and return its path.

    The directory (see `token_cache_dir`) holds `train.bin`, `val.bin` (raw token
    ids, uint16 if the vocabulary has fewer than 65536 entries else uint32),
    `tokenizer.json` (trained on the train split only) and `meta.json` (token
    counts, dtype, text SHA-256, character and UTF-8 byte counts). It is built in
    a temporary sibling directory and renamed into place, so an interrupted build
    leaves no partial cache; an existing cache is returned untouched.

    Raises:
        DataError: bad val_fraction. ValueError: unknown tokenizer name.
    """
    out = token_cache_dir(text, tokenizer, val_fraction, cache_dir)
    if out.is_dir():
        return out
    spec = tokenizer_spec(tokenizer)
    print(f"tokenizing {len(text):,} characters with {spec} into {out} (once; cached after)",
          flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()  # not mkdtemp: the cache should get the umask's permissions, not 0700
    try:
        _build_token_cache(tmp, text, tokenizer_spec(tokenizer), val_fraction)
        os.rename(tmp, out)
    except OSError:
        if not out.is_dir():  # a concurrent build that won the rename is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_token_cache(out: Path, text: str, spec: dict, val_fraction: float) -> None:
    train_text, val_text = split_text(text, val_fraction)
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


def load_tokens(directory: str | os.PathLike):
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
    return json.loads((Path(directory) / "meta.json").read_text())


def _memmap(path: Path, dtype: str, n: int) -> np.ndarray:
    if n == 0:  # np.memmap cannot map an empty file
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


class _TrainBatches(IterableDataset):
    """Endless (x, y) batches, one per training step, from `start` on."""

    def __init__(self, ids, block_size, batch_size, seed, start):
        self.ids, self.block_size, self.batch_size = ids, block_size, batch_size
        self.seed, self.start = seed, start

    def __iter__(self):
        step = self.start
        while True:
            yield get_batch(self.ids, self.block_size, self.batch_size, self.seed, step)
            step += 1


class _ValBatches(Dataset):
    """The same `n` (x, y) batches every time, from the validation stream."""

    def __init__(self, ids, block_size, batch_size, seed, n):
        self.ids, self.block_size, self.batch_size = ids, block_size, batch_size
        self.seed, self.n = seed, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return get_batch(self.ids, self.block_size, self.batch_size, self.seed, i, VAL_STREAM)


class LMDataModule(L.LightningDataModule):
    """Corpus -> cached token ids -> batches of (x, y), each int64 (batch_size, block_size).

    `prepare_data` loads the text (`lm.data.corpus.load_text`) and builds the token
    cache under `<data_dir>/tokens/`; `setup` memory-maps it and checks that both
    splits hold a window of block_size + 1 tokens. After `setup`: `tokenizer`,
    `train_ids`, `val_ids`, `val_text_bytes` (UTF-8 bytes of the val text, for
    bits per byte), `meta`.

    Training batch k of a run is `get_batch(train_ids, ..., seed, step=k)`; the
    stream starts at `trainer.global_step`, so a resumed run continues the same
    sequence. Validation uses `eval_iters` fixed batches from a separate stream
    (see `TRAIN_STREAM`, `VAL_STREAM`).

    Raises:
        DataError: bad val_fraction / sizes (at construction), bad corpus, or a split
            too short for block_size (in `setup`).
    """

    def __init__(
        self,
        source: str = "shakespeare",
        path: str | None = None,
        data_dir: str = "data",
        tokenizer: str | dict = "char",
        val_fraction: float = 0.1,
        block_size: int = 64,
        batch_size: int = 12,
        seed: int = 1337,
        eval_iters: int = 20,
    ):
        super().__init__()
        _check_val_fraction(val_fraction)
        for key, value in [
            ("model.block_size", block_size),
            ("data.batch_size", batch_size),
            ("data.eval_iters", eval_iters),
        ]:
            if value < 1:
                raise DataError(f"{key}={value} must be a positive integer")
        self.source, self.path, self.data_dir = source, path, data_dir
        self.tokenizer_spec, self.val_fraction = tokenizer_spec(tokenizer), val_fraction
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.eval_iters = seed, eval_iters
        self.tokenizer = self.train_ids = self.val_ids = self.meta = None
        self.val_text_bytes = None

    def prepare_data(self) -> None:
        self._prepare()

    def _prepare(self) -> Path:
        try:
            text = load_text(self.source, self.path, self.data_dir)
            return prepare_tokens(text, self.tokenizer_spec, self.val_fraction, self.data_dir)
        except OSError as err:  # a data dir that cannot be written (the cache is built once)
            raise DataError(f"paths.data_dir={self.data_dir} cannot be written "
                            f"({err.strerror or err}: {err.filename}); pick a writable dir "
                            "or build the cache there once as its owner") from None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        directory = self._prepare()  # cheap when prepare_data already built it
        meta = load_meta(directory)
        for split, n in [("training", meta["n_train"]), ("validation", meta["n_val"])]:
            self._check_split_length(split, n, meta["n_chars"])
        self.tokenizer, self.train_ids, self.val_ids = load_tokens(directory)
        self.meta, self.val_text_bytes = meta, meta["val_text_bytes"]

    def _check_split_length(self, split: str, n_tokens: int, n_chars: int) -> None:
        if n_tokens >= self.block_size + 1:
            return
        fraction = (
            f"data.val_fraction={self.val_fraction}"
            if split == "validation"
            else f"1 - data.val_fraction={self.val_fraction}"
        )
        raise DataError(
            f"model.block_size={self.block_size} needs a {split} split of at least "
            f"{self.block_size + 1} tokens; the corpus has {n_tokens} ({fraction} of "
            f"{n_chars} characters); use a longer text or a smaller block_size"
        )

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        batches = _TrainBatches(self.train_ids, self.block_size, self.batch_size, self.seed, start)
        return DataLoader(batches, batch_size=None, num_workers=0, generator=_private_generator())

    def val_dataloader(self) -> DataLoader:
        batches = _ValBatches(
            self.val_ids, self.block_size, self.batch_size, self.seed, self.eval_iters
        )
        return DataLoader(
            batches, batch_size=None, shuffle=False, num_workers=0, generator=_private_generator()
        )


def _private_generator() -> torch.Generator:
    """A generator for a DataLoader's own seed draw. Without one, every ``iter(loader)``
    draws from the global torch RNG, so a resumed run (or a validation) would shift the
    dropout masks that follow. Batches themselves never use it (see ``get_batch``)."""
    return torch.Generator().manual_seed(0)
