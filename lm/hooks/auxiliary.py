"""Auxiliary-loss hooks: a weighted scalar from activations, added to the training loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lm.hooks.base import AuxLossHook


class ZLoss(AuxLossHook):
    """``weight * mean(logsumexp(logits)^2)`` over positions: keeps the softmax
    normaliser near 1 (PaLM, Chowdhery et al. 2022, section 5: weight 1e-4).

    Args:
        weight: >= 0. pattern: default ``hook_logits`` (B, T, V).
    """

    name = "z_loss"

    def __init__(self, weight: float = 1e-4, pattern: str | Sequence[str] = "hook_logits"):
        super().__init__(weight, pattern)

    def value(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        z = [torch.logsumexp(logits.float(), dim=-1).pow(2).mean() for logits in acts.values()]
        return torch.stack(z).mean()


class ActL2(AuxLossHook):
    """``weight * mean(x^2)`` over every element of the activations at the matching
    hook points (default the residual stream after each block).

    Args:
        weight: >= 0. pattern: default ``blocks.*.hook_resid_post``.
    """

    name = "act_l2"

    def __init__(
        self, weight: float = 1e-4, pattern: str | Sequence[str] = "blocks.*.hook_resid_post"
    ):
        super().__init__(weight, pattern)

    def value(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.stack([x.float().pow(2).sum() for x in acts.values()]).sum()
        return total / sum(x.numel() for x in acts.values())


class AttnEntropy(AuxLossHook):
    """``sign * weight * H``, H the attention entropy ``-sum_k p log p`` (nats) averaged
    over batch, heads, query positions and matching layers. sign = +1 penalises entropy
    (sharper attention), -1 rewards it (flatter attention). Hooking ``hook_pattern``
    runs those layers' explicit attention path.

    Args:
        weight: >= 0. sign: +1 or -1. pattern: default every layer's ``attn.hook_pattern``.
    """

    name = "attn_entropy"

    def __init__(
        self, weight: float = 1e-3, sign: float = 1.0,
        pattern: str | Sequence[str] = "blocks.*.attn.hook_pattern",
    ):
        super().__init__(weight, pattern)
        if sign not in (1, -1):
            raise ValueError(f"sign={sign} is invalid: must be 1 or -1")
        self.sign = float(sign)

    def value(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.sign * torch.stack([entropy(p).mean() for p in acts.values()]).mean()


def entropy(pattern: torch.Tensor) -> torch.Tensor:
    """Entropy in nats along the last dim: (..., T) probabilities -> (...).

    Masked positions (p = 0) contribute 0, with a finite gradient (p log p is
    computed with log clamped at the smallest normal float).
    """
    p = pattern.float()
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)
