"""The LightningDataModule: cached token ids (``lm/data/tokens.py``) served as batches.

``build_datamodule(cfg)`` makes one from a run config, prepared and set up, so data
errors (a missing corpus, a split too short for ``block_size``, too many ``<unk>``
tokens) come before any model is built; ``lm train`` and ``lm evaluate`` both use it.
"""

import sys
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lm.data.corpus import DataError, load_text
from lm.data.shards import load_tokenizer, open_split, read_manifest, verify_shards
from lm.data.tokens import (
    VAL_STREAM,
    check_val_fraction,
    get_batch,
    load_meta,
    load_tokens,
    prepare_tokens,
    split_text,
    unknown_chars,
)
from lm.tokenizers import Tokenizer, tokenizer_spec

TOP_MISSING = 5  # the characters a <unk> line names


class _TrainBatches(IterableDataset):
    """Endless (x, y) batches, one per training step, from `start` on: rank `rank`'s
    share of each step's global batch (``get_batch``)."""

    def __init__(self, ids, block_size, batch_size, seed, start, rank=0, world_size=1):
        self.ids, self.block_size, self.batch_size = ids, block_size, batch_size
        self.seed, self.start, self.rank, self.world_size = seed, start, rank, world_size

    def __iter__(self):
        step = self.start
        while True:
            yield get_batch(self.ids, self.block_size, self.batch_size, self.seed, step,
                            rank=self.rank, world_size=self.world_size)
            step += 1


class _ValBatches(Dataset):
    """The same validation batches every time: of the `n` fixed batches of the
    validation stream, rank `rank` of `world_size` takes numbers rank, rank +
    world_size, ... (every batch once over all ranks; ``LMModule`` sums the losses
    over ranks, so val/loss is the mean of the `n`, as in one process)."""

    def __init__(self, ids, block_size, batch_size, seed, n, rank=0, world_size=1):
        self.ids, self.block_size, self.batch_size = ids, block_size, batch_size
        self.seed = seed
        self.numbers = range(rank, n, world_size)

    def __len__(self):
        return len(self.numbers)

    def __getitem__(self, i):
        number = self.numbers[i]  # IndexError past the end
        return get_batch(self.ids, self.block_size, self.batch_size, self.seed, number, VAL_STREAM)


class LMDataModule(L.LightningDataModule):
    """Corpus -> cached token ids -> batches of (x, y), each int64 (batch_size, block_size).

    `prepare_data` loads the text (`lm.data.corpus.load_text`) and builds the token
    cache under `<data_dir>/tokens/`; `setup` memory-maps it and checks that both
    splits hold a window of block_size + 1 tokens and that neither has a share of
    `<unk>` tokens (characters the tokenizer lacks: a fine-tune's, from its checkpoint,
    or one trained on the train split, for the val split) above `max_unk_fraction`; a
    smaller share, if any, gets one warning line. After `setup`: `tokenizer`,
    `train_ids`, `val_ids`, `val_text_bytes` (UTF-8 bytes of the val text, for
    bits per byte), `meta` (the cache's `meta.json`, plus `unk_fraction`:
    `{"train": f, "val": f}`, the share of `<unk>` tokens of each split).

    Training batch k of a run is `get_batch(train_ids, ..., seed, step=k)`; the
    stream starts at `trainer.global_step`, so a resumed run continues the same
    sequence. Under data parallelism each rank takes its share of step k's global
    batch of world_size * batch_size windows, and of the validation batches.
    Validation uses `eval_iters` fixed batches of `eval_batch_size` windows
    (None: `batch_size`) from a separate stream (see `lm.data.tokens.TRAIN_STREAM`,
    `VAL_STREAM`) of their own seed `eval_seed`, so runs at other seeds and recipes
    with other training batch sizes are scored on the same batches.

    Raises:
        DataError: bad val_fraction / sizes / eval_seed / max_unk_fraction (at
            construction), bad corpus, a split too short for block_size, or a share of
            `<unk>` tokens above max_unk_fraction (in `setup`).
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
        eval_batch_size: int | None = None,
        fixed_tokenizer: Tokenizer | None = None,
        eval_seed: int = 1337,
        max_unk_fraction: float = 0.05,
        verify_shards: bool = True,
    ):
        super().__init__()
        check_val_fraction(val_fraction)
        if eval_seed < 0:
            raise DataError(f"data.eval_seed={eval_seed} must be an integer >= 0")
        if not 0 <= max_unk_fraction <= 1:
            raise DataError(f"data.max_unk_fraction={max_unk_fraction} must be in [0, 1]")
        for key, value in [
            ("model.block_size", block_size),
            ("data.batch_size", batch_size),
            ("data.eval_iters", eval_iters),
            ("data.eval_batch_size", batch_size if eval_batch_size is None else eval_batch_size),
        ]:
            if value < 1:
                raise DataError(f"{key}={value} must be a positive integer")
        self.source, self.path, self.data_dir = source, path, data_dir
        self.tokenizer_spec, self.val_fraction = tokenizer_spec(tokenizer), val_fraction
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.eval_seed, self.eval_iters = seed, eval_seed, eval_iters
        self.max_unk_fraction = max_unk_fraction
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.fixed_tokenizer = fixed_tokenizer
        self.verify_shards = verify_shards
        self.tokenizer: Tokenizer | None = None
        self.train_ids = self.val_ids = self.meta = None
        self.val_text_bytes = None

    def prepare_data(self) -> None:
        if self.source != "prepared":
            self._prepare()

    def _prepare(self) -> tuple[str, Path]:
        """(the corpus text, its token cache directory), building the cache if needed."""
        try:
            text = load_text(self.source, self.path, self.data_dir)
            return text, prepare_tokens(text, self.tokenizer_spec, self.val_fraction,
                                        self.data_dir, fixed=self.fixed_tokenizer)
        except OSError as err:  # a data dir that cannot be written (the cache is built once)
            raise DataError(f"paths.data_dir={self.data_dir} cannot be written "
                            f"({err.strerror or err}: {err.filename}); pick a writable dir "
                            "or build the cache there once as its owner") from None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        if self.source == "prepared":
            self._setup_prepared()
            return
        text, directory = self._prepare()  # cheap when prepare_data already built it
        meta = load_meta(directory)
        for split, n in [("training", meta["n_train"]), ("validation", meta["n_val"])]:
            self._check_split_length(split, n, meta["n_chars"])
        tokenizer, train_ids, val_ids = load_tokens(directory)
        unk_fraction = self._check_unknowns(tokenizer, text, {"train": train_ids, "val": val_ids})
        self.tokenizer, self.train_ids, self.val_ids = tokenizer, train_ids, val_ids
        self.meta = {**meta, "unk_fraction": unk_fraction}
        self.val_text_bytes = meta["val_text_bytes"]

    def _setup_prepared(self) -> None:
        """Memory-map the shards of an ``lm prepare`` directory (``data.path``), after
        checking them against its manifest (``verify_shards``: sizes, and SHA-256s unless
        ``data.verify_shards=false``) and its tokenizer against a fine-tune's."""
        if not self.path:
            raise DataError("data.source=prepared needs data.path=<a directory written by "
                            "lm prepare>")
        manifest = read_manifest(self.path)
        verify_shards(self.path, manifest, full=self.verify_shards)
        tokenizer = load_tokenizer(self.path)
        fixed = self.fixed_tokenizer
        if fixed is not None and fixed.to_dict() != tokenizer.to_dict():
            raise DataError(f"data.path={self.path} was prepared with another tokenizer "
                            f"({manifest['tokenizer']['spec']}) than init_from's "
                            f"({type(fixed).__name__}, vocab_size {fixed.vocab_size}): a "
                            "fine-tune encodes with its checkpoint's tokenizer; prepare with "
                            "that BPE's files (lm prepare tokenizer.path=<dir>), or use "
                            "data=text_file, which encodes with the checkpoint's tokenizer")
        splits = {split: open_split(self.path, manifest, split) for split in ("train", "val")}
        n_chars = sum(manifest["bytes"].values())
        for split, name in [("train", "training"), ("val", "validation")]:
            self._check_split_length(name, len(splits[split]), n_chars)
        unk = {s: manifest["unk_tokens"][s] / len(splits[s]) for s in splits}
        if max(unk.values()) > self.max_unk_fraction:
            raise DataError(f"<unk> is {_percent(max(unk.values()))} of a split of "
                            f"data.path={self.path}, above data.max_unk_fraction="
                            f"{self.max_unk_fraction}; prepare it with tokenizer=byte or bpe")
        self.tokenizer, self.train_ids, self.val_ids = tokenizer, splits["train"], splits["val"]
        self.meta = {"n_train": len(splits["train"]), "n_val": len(splits["val"]),
                     "val_text_bytes": manifest["bytes"]["val"], "n_chars": n_chars,
                     "dtype": manifest["dtype"], "digest": manifest["digest"],
                     "unk_fraction": unk}
        self.val_text_bytes = manifest["bytes"]["val"]

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

    def _check_unknowns(self, tokenizer: Tokenizer, text: str,
                        ids: dict[str, np.ndarray]) -> dict[str, float]:
        """The share of ``<unk>`` tokens of each split of ``text`` (``ids``: its token ids
        by split), ``{"train": f, "val": f}``. If there are any, one line says how many
        and which characters the tokenizer lacks: a warning, or above
        ``max_unk_fraction`` a ``DataError``."""
        texts = dict(zip(("train", "val"), split_text(text, self.val_fraction), strict=True))
        missing = {split: unknown_chars(texts[split], ids[split], tokenizer) for split in ids}
        counts = {split: sum(chars.values()) for split, chars in missing.items()}
        fractions = {split: counts[split] / len(ids[split]) for split in ids}
        if not any(counts.values()):
            return fractions
        shares = " and ".join(f"{_percent(fractions[s])} of the {s} tokens "
                              f"({counts[s]:,} of {len(ids[s]):,})" for s in ids)
        whose = ("init_from's tokenizer" if self.fixed_tokenizer is not None
                 else "the tokenizer (trained on the train split)")
        lacks = f"{whose} lacks {_top(sum(missing.values(), Counter()))}"
        if max(fractions.values()) > self.max_unk_fraction:
            remedy = ("fine-tune a base model whose tokenizer covers this text"
                      if self.fixed_tokenizer is not None
                      else "use a tokenizer that covers any text (data/tokenizer=byte)")
            raise DataError(f"<unk> is {shares}, above data.max_unk_fraction="
                            f"{self.max_unk_fraction}: {lacks}; {remedy}, or raise "
                            "data.max_unk_fraction")
        _warn(f"warning: <unk> is {shares}: {lacks}; they train as <unk> "
              f"(data.max_unk_fraction={self.max_unk_fraction})")
        return fractions

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        batches = _TrainBatches(self.train_ids, self.block_size, self.batch_size, self.seed, start,
                                *self._rank())
        return DataLoader(batches, batch_size=None, num_workers=0, generator=_private_generator())

    def val_dataloader(self) -> DataLoader:
        batches = _ValBatches(
            self.val_ids, self.block_size, self.eval_batch_size, self.eval_seed, self.eval_iters,
            *self._rank(),
        )
        return DataLoader(
            batches, batch_size=None, shuffle=False, num_workers=0, generator=_private_generator()
        )

    def _rank(self) -> tuple[int, int]:
        """(global rank, world size) of this process in its Trainer; (0, 1) without one.
        The Trainer must not add a ``DistributedSampler`` (``use_distributed_sampler=False``):
        the batches are split by rank here."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size


def _percent(fraction: float) -> str:
    """``0.0146`` -> ``"1.46%"``, ``0.82`` -> ``"82%"``: three significant digits."""
    return f"{100 * fraction:.3g}%"


def _top(chars: Counter[str]) -> str:
    """``'~' (3,108), '=' (422) and 3 more``: the ``TOP_MISSING`` commonest of ``chars``,
    written as Python literals (so ``'\\r'`` or ``'\\ufeff'`` can be seen), with counts."""
    top = ", ".join(f"{c!r} ({n:,})" for c, n in chars.most_common(TOP_MISSING))
    rest = len(chars) - TOP_MISSING
    return f"{top} and {rest} more" if rest > 0 else top


@rank_zero_only  # every rank sets up the data; one says so
def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _private_generator() -> torch.Generator:
    """A generator for a DataLoader's own seed draw. Without one, every ``iter(loader)``
    draws from the global torch RNG, so a resumed run (or a validation) would shift the
    dropout masks that follow. Batches themselves never use it (see ``get_batch``)."""
    return torch.Generator().manual_seed(0)


def build_datamodule(cfg: DictConfig, fixed_tokenizer: Tokenizer | None = None) -> LMDataModule:
    """The data module of run config ``cfg`` (``data``, ``model.block_size``, ``seed``,
    ``paths.data_dir``), prepared and set up; ``fixed_tokenizer`` encodes the text
    instead of one trained on it (``init_from=<a .ckpt>``: the checkpoint's).

    A config written before ``data.eval_seed`` draws its validation batches from
    ``seed``, as the code then did; before ``data.max_unk_fraction``, 0.01.

    Raises:
        DataError: bad corpus, unwritable data dir, a split too short, or too many
            ``<unk>`` tokens (one line).
    """
    dm = LMDataModule(
        source=cfg.data.source,
        path=cfg.data.path,
        data_dir=cfg.paths.data_dir,
        tokenizer=OmegaConf.to_container(cfg.data.tokenizer),
        val_fraction=cfg.data.val_fraction,
        block_size=cfg.model.block_size,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        eval_iters=cfg.data.eval_iters,
        eval_batch_size=cfg.data.get("eval_batch_size"),
        fixed_tokenizer=fixed_tokenizer,
        eval_seed=cfg.data.get("eval_seed", cfg.seed),
        max_unk_fraction=cfg.data.get("max_unk_fraction", 0.01),
        verify_shards=cfg.data.get("verify_shards", True),
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm
