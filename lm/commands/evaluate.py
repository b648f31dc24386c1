"""Validation loss of a checkpoint: ``lm evaluate ckpt=<path> [key=value ...]``.

Prints ``val/loss`` (mean cross-entropy, nats per token), ``val/ppl`` (exp of it) and
``val/bpb`` (bits per UTF-8 byte, comparable across tokenizers) over the same fixed
validation batches a training run evaluates (``LMDataModule.val_dataloader``).

Examples:
    lm evaluate ckpt=outputs/runs/<date>/<run>/checkpoints/best.ckpt
    lm evaluate ckpt=gpt2.ckpt data=text_file data.path=corpus.txt eval_iters=50

The keys and their defaults are in ``conf/evaluate.yaml`` (``lm evaluate --help``).
Without ``data=<option>`` the checkpoint is evaluated on the data config it was trained
on (its run config). Text the data config did not tokenise with the checkpoint's own
tokenizer (another corpus, a char vocabulary of other text) is re-encoded with the
checkpoint's tokenizer.
"""

import tempfile
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lm.data.corpus import DataError, load_text
from lm.data.datamodule import build_datamodule
from lm.data.tokens import split_text
from lm.errors import first_line
from lm.tokenizers import Tokenizer
from lm.training.checkpoint import load_checkpoint
from lm.training.config import DataConfig, compose_config
from lm.training.module import bits_per_byte, perplexity


@dataclass
class EvaluateConfig:
    """The settings of ``lm evaluate``: their types. Defaults, meaning and ranges:
    ``conf/evaluate.yaml``."""

    ckpt: str
    eval_iters: int | None
    batch_size: int | None
    device: str
    data: DataConfig | None = None  # the conf/data option chosen with data=..., if any


def check_config(cfg: EvaluateConfig) -> None:
    """Raise ``ValueError`` (one line) for a batch count or size below 1."""
    for key in ("eval_iters", "batch_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ValueError(f"{key}={value} is invalid: must be an integer >= 1, or null")


def data_config(cfg: EvaluateConfig, run_config: dict, block_size: int) -> DictConfig:
    """The run config ``build_datamodule`` needs: ``conf/train.yaml``'s, with the
    checkpoint's seed (which picks the validation windows) and data dir where it records
    them, the chosen data config (``cfg.data``, else the checkpoint's), ``eval_iters``,
    ``batch_size`` and the model's block_size.

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
    for key in ("eval_iters", "batch_size"):
        if getattr(cfg, key) is not None:
            run.data[key] = getattr(cfg, key)
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


@torch.no_grad()
def mean_loss(model: torch.nn.Module, loader, device: str) -> float:
    """Mean over batches of the per-batch mean cross-entropy (as ``LMModule`` validates)."""
    losses = [model(x.to(device), y.to(device))[1] for x, y in loader]  # each ()
    return torch.stack(losses).mean().item()


def evaluate(cfg: EvaluateConfig) -> dict[str, float]:
    """``{"val/loss", "val/ppl", "val/bpb"}`` of ``cfg.ckpt`` on its validation batches.

    Raises:
        CheckpointError, DataError, ValueError: one line.
    """
    check_config(cfg)
    model, tokenizer, run_config = load_checkpoint(cfg.ckpt, cfg.device, nonfinite="error")
    run = data_config(cfg, run_config, model.config.block_size)
    dm = build_datamodule(run)
    reencode_validation(dm, run, tokenizer)
    loss = mean_loss(model, dm.val_dataloader(), cfg.device)
    tokens_per_byte = dm.meta["n_val"] / dm.meta["val_text_bytes"]
    return {"val/loss": loss, "val/ppl": perplexity(loss), "val/bpb": bits_per_byte(loss, tokens_per_byte)}


def evaluate_command(cfg: EvaluateConfig) -> int:
    """``lm evaluate``: print ``<metric> <value>`` lines."""
    for key, value in evaluate(cfg).items():
        print(f"{key} {value:.6f}")
    return 0
