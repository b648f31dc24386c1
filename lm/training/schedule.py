"""Learning-rate schedules as multipliers of the peak learning rate.

Each public function takes the optimizer first (the config gives the rest through
``_partial_: true``) and returns a ``torch.optim.lr_scheduler.LambdaLR`` stepped once
per optimizer step.
"""

import math

import torch


def cosine_multiplier(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup, cosine decay, then a floor.

    Warmup goes from 1/(warmup_steps + 1) at step 0 up to 1 at ``warmup_steps``; the
    cosine then falls to ``min_lr_ratio`` at ``decay_steps`` and stays there. Warmup
    wins when ``decay_steps <= warmup_steps`` (a run shorter than its warmup).
    Source: nanoGPT ``train.py`` ``get_lr`` (Loshchilov & Hutter, 2017, for the cosine).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_lr_ratio)


def check_warmup_and_floor(warmup_steps: int, min_lr_ratio: float) -> None:
    """Raise ``ValueError`` (one line) for a negative warmup or a floor outside [0, 1]."""
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be >= 0")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"scheduler.min_lr_ratio={min_lr_ratio} must be in [0, 1]")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, decay_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay (see ``cosine_multiplier``).

    Raises:
        ValueError: a negative warmup, ``decay_steps < 1`` or a ratio outside [0, 1].
    """
    check_warmup_and_floor(warmup_steps, min_lr_ratio)
    if decay_steps < 1:
        raise ValueError(f"scheduler.decay_steps={decay_steps} must be >= 1")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_multiplier(step, warmup_steps, decay_steps, min_lr_ratio)
    )


def warmup_constant(
    optimizer: torch.optim.Optimizer, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then the peak learning rate for ever.

    Raises:
        ValueError: a negative ``warmup_steps``.
    """
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be >= 0")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1))
    )


DECAY_SHAPES = ("linear", "cosine")


def wsd_multiplier(step: int, warmup_steps: int, total_steps: int, decay_fraction: float,
                   min_lr_ratio: float, decay_shape: str = "linear") -> float:
    """Multiplier of the peak lr at ``step``: warmup, stable, decay (WSD), then a floor.

    Warmup as in ``cosine_multiplier``: (step + 1)/(warmup_steps + 1) for
    step < warmup_steps. The peak then holds until the decay starts at
    ``total_steps * (1 - decay_fraction)`` (or at ``warmup_steps``, if later); from there
    the multiplier falls to ``min_lr_ratio`` at ``total_steps`` (linearly, or along a
    half cosine) and stays there. ``decay_fraction=0`` keeps the peak to the end.
    Sources: Hu et al. 2024, "MiniCPM" (warmup-stable-decay); Hägele et al. 2024,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations";
    modded-nanogpt ``get_lr`` (linear cooldown over the last ``cooldown_frac``).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr_ratio
    decay_start = max(warmup_steps, total_steps * (1.0 - decay_fraction))
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / (total_steps - decay_start)  # in [0, 1)
    if decay_shape == "cosine":
        return min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_lr_ratio)
    return 1.0 - progress * (1.0 - min_lr_ratio)


def warmup_stable_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, decay_fraction: float,
    min_lr_ratio: float, decay_shape: str,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, constant peak, decay over the last ``decay_fraction`` of
    ``total_steps`` (see ``wsd_multiplier``).

    Raises:
        ValueError: a negative warmup, ``total_steps < 1``, a fraction or ratio outside
            [0, 1], or a ``decay_shape`` other than linear or cosine.
    """
    check_warmup_and_floor(warmup_steps, min_lr_ratio)
    if total_steps < 1:
        raise ValueError(f"scheduler.total_steps={total_steps} must be >= 1")
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"scheduler.decay_fraction={decay_fraction} must be in [0, 1]")
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"scheduler.decay_shape={decay_shape} must be linear or cosine")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: wsd_multiplier(
            step, warmup_steps, total_steps, decay_fraction, min_lr_ratio, decay_shape)
    )
