"""The LightningDataModule: cached token ids (``lm/data/tokens.py``) served as batches.

``build_datamodule(cfg)`` makes one from a run config, prepared and set up, so data
errors (a missing corpus, a split too short for ``block_size``) come before any model
is built; ``lm train`` and ``lm evaluate`` both use it.
"""

from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lm.data.corpus import DataError, load_text
from lm.data.tokens import (
    VAL_STREAM,
    check_val_fraction,
    get_batch,
    load_meta,
    load_tokens,
    prepare_tokens,
    tokenizer_spec,
)
from lm.tokenizers import Tokenizer


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
    splits hold a window of block_size + 1 tokens. After `setup`: `tokenizer`,
    `train_ids`, `val_ids`, `val_text_bytes` (UTF-8 bytes of the val text, for
    bits per byte), `meta`.

    Training batch k of a run is `get_batch(train_ids, ..., seed, step=k)`; the
    stream starts at `trainer.global_step`, so a resumed run continues the same
    sequence. Under data parallelism each rank takes its share of step k's global
    batch of world_size * batch_size windows, and of the validation batches.
    Validation uses `eval_iters` fixed batches of `eval_batch_size` windows
    (None: `batch_size`) from a separate stream (see `lm.data.tokens.TRAIN_STREAM`,
    `VAL_STREAM`), so recipes with other training batch sizes can share them.

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
        eval_batch_size: int | None = None,
        fixed_tokenizer: Tokenizer | None = None,
    ):
        super().__init__()
        check_val_fraction(val_fraction)
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
        self.seed, self.eval_iters = seed, eval_iters
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.fixed_tokenizer = fixed_tokenizer
        self.tokenizer: Tokenizer | None = None
        self.train_ids = self.val_ids = self.meta = None
        self.val_text_bytes = None

    def prepare_data(self) -> None:
        self._prepare()

    def _prepare(self) -> Path:
        try:
            text = load_text(self.source, self.path, self.data_dir)
            return prepare_tokens(text, self.tokenizer_spec, self.val_fraction, self.data_dir,
                                  fixed=self.fixed_tokenizer)
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
        batches = _TrainBatches(self.train_ids, self.block_size, self.batch_size, self.seed, start,
                                *self._rank())
        return DataLoader(batches, batch_size=None, num_workers=0, generator=_private_generator())

    def val_dataloader(self) -> DataLoader:
        batches = _ValBatches(
            self.val_ids, self.block_size, self.eval_batch_size, self.seed, self.eval_iters,
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


def _private_generator() -> torch.Generator:
    """A generator for a DataLoader's own seed draw. Without one, every ``iter(loader)``
    draws from the global torch RNG, so a resumed run (or a validation) would shift the
    dropout masks that follow. Batches themselves never use it (see ``get_batch``)."""
    return torch.Generator().manual_seed(0)


def build_datamodule(cfg: DictConfig, fixed_tokenizer: Tokenizer | None = None) -> LMDataModule:
    """The data module of run config ``cfg`` (``data``, ``model.block_size``, ``seed``,
    ``paths.data_dir``), prepared and set up; ``fixed_tokenizer`` encodes the text
    instead of one trained on it (``init_from=<a .ckpt>``: the checkpoint's).

    Raises:
        DataError: bad corpus, unwritable data dir, or a split too short (one line).
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
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm
