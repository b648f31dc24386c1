"""Fold an adapter run's LoRA weights into its base: ``lm merge <ckpt> <out.ckpt>``.

The adapter checkpoint (an adapter run's ``.ckpt`` or ``adapter.safetensors``) is
loaded with its base (``load_checkpoint``); every ``LoRALinear`` becomes a plain
``nn.Linear`` whose weight is the base weight (dequantised, for a QLoRA base) plus
``alpha / r * B @ A`` (``lm.adapters.lora.merge_lora``); the result is written as a
plain checkpoint, which every tool reads with no adapter code and no base file.

Examples:
    lm merge outputs/runs/<date>/<run>/checkpoints/best.ckpt merged.ckpt
    lm generate ckpt=merged.ckpt prompt="ROMEO:" strategy=greedy
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from lm.adapters.lora import LoRALinear, merge_lora
from lm.atomic import atomic_file
from lm.checkpoint import checkpoint_dict, load_checkpoint


@dataclass
class MergeConfig:
    """The settings of ``lm merge``: their types. Meaning: ``conf/merge.yaml``."""

    ckpt: str
    out: str


def merge(ckpt: str, out: str) -> int:
    """Write ``out``: the model of adapter checkpoint ``ckpt`` with its adapters merged;
    return the number of layers merged.

    Raises:
        CheckpointError: ``ckpt`` cannot be loaded (one line).
        ValueError: ``ckpt`` has no adapters, or ``out`` exists (never overwritten).
    """
    if Path(out).exists():
        raise ValueError(f"out={out} exists; lm merge writes a new file: pick another path")
    model, tokenizer, run_config = load_checkpoint(ckpt, nonfinite="error")
    n = sum(isinstance(m, LoRALinear) for m in model.modules())
    if n == 0:
        raise ValueError(f"ckpt={ckpt} has no adapters to merge (a plain checkpoint: use it as it is)")
    merge_lora(model)
    with atomic_file(out) as tmp:
        torch.save(checkpoint_dict(model, tokenizer, {**run_config, "merged_from": str(ckpt)}), tmp)
    return n


def merge_command(cfg: MergeConfig) -> int:
    """``lm merge``: merge, then one line saying what was written."""
    n = merge(cfg.ckpt, cfg.out)
    size = Path(cfg.out).stat().st_size / 2**20
    print(f"merged the adapters of {n} layers of {cfg.ckpt} into {cfg.out} ({size:.1f} MiB); "
          f"lm generate ckpt={cfg.out}")
    return 0
