"""Validation loss of a checkpoint: ``lm evaluate ckpt=<path> [key=value ...]``.

Prints ``val/loss`` (mean cross-entropy, nats per token), ``val/ppl`` (exp of it) and
``val/bpb`` (bits per UTF-8 byte, comparable across tokenizers), after a ``#`` line saying
which validation tokens they cover: by default the same fixed sampled validation batches
a training run evaluates (``LMDataModule.val_dataloader``); with ``full=true`` the whole
validation split, cut into consecutive windows so that every token after the first is
predicted exactly once (``whole_split_loss``), which a small ``eval_iters`` cannot flatter.

Examples:
    lm evaluate ckpt=outputs/runs/<date>/<run>/checkpoints/best.ckpt
    lm evaluate ckpt=outputs/runs/<date>/<run>/checkpoints/last.ckpt full=true
    lm evaluate ckpt=gpt2.ckpt data=text_file data.path=corpus.txt eval_iters=50

The keys and their defaults are in ``conf/evaluate.yaml`` (``lm evaluate --help``).
Without ``data=<option>`` the checkpoint is evaluated on the data config it was trained
on (its run config). Text the data config did not tokenise with the checkpoint's own
tokenizer (another corpus, a char vocabulary of other text) is re-encoded with the
checkpoint's tokenizer.
"""

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from lm.checkpoint import load_checkpoint
from lm.config.compose import compose_config
from lm.config.schema import DataConfig
from lm.data.corpus import DataError, load_text
from lm.data.datamodule import build_datamodule
from lm.data.tokens import split_text, windows_at
from lm.errors import first_line
from lm.metrics import bits_per_byte, mean_loss, perplexity
from lm.tokenizers import Tokenizer


@dataclass
class EvaluateConfig:
    """The settings of ``lm evaluate``: their types. Defaults, meaning and ranges:
    ``conf/evaluate.yaml``."""

    ckpt: str
    eval_iters: int | None
    batch_size: int | None
    full: bool
    device: str
    data: DataConfig | None = None  # the conf/data option chosen with data=..., if any


def check_config(cfg: EvaluateConfig) -> None:
    """Raise ``ValueError`` (one line) for a batch count or size below 1, or a batch
    count with ``full=true`` (which evaluates every window, not ``eval_iters`` batches)."""
    for key in ("eval_iters", "batch_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ValueError(f"{key}={value} is invalid: must be an integer >= 1, or null")
    if cfg.full and cfg.eval_iters is not None:
        raise ValueError(f"eval_iters={cfg.eval_iters} does not apply with full=true (every "
                         "window of the validation split is evaluated); leave it null")


def data_config(cfg: EvaluateConfig, run_config: dict, block_size: int) -> DictConfig:
    """The run config ``build_datamodule`` needs: ``conf/train.yaml``'s, with the
    checkpoint's validation seed (``data.eval_seed``, or ``seed`` for a run from before it)
    and data dir where it records
    them, the chosen data config (``cfg.data``, else the checkpoint's), ``eval_iters``,
    ``batch_size`` (as ``data.eval_batch_size``, the validation batch size, which a run
    config may set apart from its training ``batch_size``) and the model's block_size.

    Raises:
        ValueError: no data config anywhere, or one that does not fit the schema.
    """
    data = run_config.get("data") if cfg.data is None else cfg.data
    if data is None:
        raise ValueError(f"ckpt={cfg.ckpt} records no data config; pass data=<option> "
                         "(e.g. data=text_file data.path=corpus.txt)")
    try:
        run = OmegaConf.merge(compose_config(_carried(run_config)), {"data": data})
    except OmegaConfBaseException as err:  # a checkpoint's data config of another schema
        raise ValueError(f"ckpt={cfg.ckpt}: its data config does not fit: {first_line(err)}; "
                         "pass data=<option>") from None
    if "eval_seed" not in (run_config.get("data") or {}) and "seed" in run_config:
        run.data.eval_seed = run_config["seed"]  # an older run validated on seed's batches
    if cfg.eval_iters is not None:
        run.data.eval_iters = cfg.eval_iters
    if cfg.batch_size is not None:
        run.data.eval_batch_size = cfg.batch_size
    run.model.block_size = block_size
    return run


def _carried(run_config: dict) -> list[str]:
    """Overrides that keep the checkpoint's seed and data dir in a freshly composed config."""
    carried = [f"paths.output_dir={tempfile.gettempdir()}"]
    if "seed" in run_config:
        carried.append(f"seed={run_config['seed']}")
    if "data_dir" in run_config.get("paths", {}):
        carried.append(f"paths.data_dir={run_config['paths']['data_dir']}")
    return carried


def reencode_validation(dm, cfg: DictConfig, tokenizer: Tokenizer) -> None:
    """Replace ``dm.val_ids`` by the validation text encoded with ``tokenizer``, when the
    data config's tokenizer is another one (ids would otherwise mean other tokens)."""
    if dm.tokenizer.to_dict() == tokenizer.to_dict():
        return
    text = load_text(cfg.data.source, cfg.data.get("path"), cfg.paths.data_dir)
    _, val_text = split_text(text, cfg.data.val_fraction)
    dm.val_ids = tokenizer.encode_array(val_text)
    dm.val_text_bytes = len(val_text.encode("utf-8"))
    dm.meta = {**dm.meta, "n_val": len(dm.val_ids), "val_text_bytes": dm.val_text_bytes}
    if len(dm.val_ids) < cfg.model.block_size + 1:
        raise DataError(f"the validation text has {len(dm.val_ids)} tokens with the checkpoint's "
                        f"tokenizer; model.block_size={cfg.model.block_size} needs at least "
                        f"{cfg.model.block_size + 1}")
    dm.tokenizer = tokenizer


def split_windows(n_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """``(start, length)`` of the consecutive, non-overlapping windows that cover a split
    of ``n_tokens`` ids: window ``(s, t)`` feeds ids ``s .. s+t-1`` and predicts ids
    ``s+1 .. s+t``, so every id after the first is a target exactly once (``n_tokens - 1``
    targets in all). Every window has ``block_size`` positions but the last, which
    holds the remainder."""
    return [(s, min(block_size, n_tokens - 1 - s)) for s in range(0, n_tokens - 1, block_size)]


def window_batches(windows: list[tuple[int, int]], batch_size: int) -> list[tuple[list[int], int]]:
    """``windows`` in order, grouped into batches ``(starts, length)`` of at most
    ``batch_size`` windows of one length (the shorter last window comes alone)."""
    batches = []
    for length in dict.fromkeys(t for _, t in windows):  # block_size, then the remainder
        starts = [s for s, t in windows if t == length]
        batches += [(starts[i : i + batch_size], length) for i in range(0, len(starts), batch_size)]
    return batches


@torch.no_grad()
def whole_split_loss(model: torch.nn.Module, ids: np.ndarray, batch_size: int,
                     device: str) -> float:
    """Mean cross-entropy (nats per token) of ``model`` over every target of ``ids``
    (1-D token ids, length >= 2): the summed cross-entropy of all ``len(ids) - 1``
    predictions of ``split_windows`` divided by their count, so each token weighs the
    same (the usual non-overlapping-window evaluation; each window starts without
    context, as a training window does). A progress bar shows on a terminal if it takes
    over 2 s.
    """
    batches = window_batches(split_windows(len(ids), model.config.block_size), batch_size)
    total = 0.0  # a Python float: double precision over ~10^6 terms
    for starts, length in tqdm(batches, desc="whole validation split", unit="batch",
                               delay=2, leave=False, file=sys.stderr,
                               disable=None):  # None: no bar when stderr is not a terminal
        x, y = windows_at(ids, starts, length)  # (B, t) each
        logits, _ = model(x.to(device))  # (B, t, V)
        total += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(),
                                 reduction="sum").item()
    return total / (len(ids) - 1)


def evaluate(cfg: EvaluateConfig, say: Callable[[str], None] = print) -> dict[str, float]:
    """``{"val/loss", "val/ppl", "val/bpb"}`` of ``cfg.ckpt`` on its sampled validation
    batches, or with ``cfg.full`` on the whole validation split (``whole_split_loss``).
    ``say`` gets one ``#`` line naming which.

    Raises:
        CheckpointError, DataError, ValueError: one line.
    """
    check_config(cfg)
    model, tokenizer, run_config = load_checkpoint(cfg.ckpt, cfg.device, nonfinite="error")
    run = data_config(cfg, run_config, model.config.block_size)
    dm = build_datamodule(run)
    reencode_validation(dm, run, tokenizer)
    if cfg.full:
        n, windows = len(dm.val_ids), len(split_windows(len(dm.val_ids), dm.block_size))
        say(f"# whole validation split: {n - 1:,} tokens in {windows:,} windows of up to "
            f"{dm.block_size}, batches of {dm.eval_batch_size}")
        loss = whole_split_loss(model, dm.val_ids, dm.eval_batch_size, cfg.device)
    else:
        say(f"# sampled validation batches: {dm.eval_iters} batches of {dm.eval_batch_size} "
            f"windows of {dm.block_size} tokens (data.eval_seed {dm.eval_seed}; full=true: the whole split)")
        loss = mean_loss(model, dm.val_dataloader(), cfg.device)
    tokens_per_byte = dm.meta["n_val"] / dm.meta["val_text_bytes"]
    return {"val/loss": loss, "val/ppl": perplexity(loss), "val/bpb": bits_per_byte(loss, tokens_per_byte)}


def evaluate_command(cfg: EvaluateConfig) -> int:
    """``lm evaluate``: print a ``#`` line saying what is evaluated, then
    ``<metric> <value>`` lines."""
    for key, value in evaluate(cfg).items():
        print(f"{key} {value:.6f}")
    return 0
