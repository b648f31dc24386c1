"""Autoregressive sampling from a GPT (nanoGPT ``GPT.generate``, as a function)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None for no limit)")


def _next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick one token per row from last-position logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature  # (B, V)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Extend each prompt by up to ``max_new_tokens`` sampled tokens.

    The model sees at most its last ``model.config.block_size`` tokens (the
    context is cropped from the left). It runs in eval mode, and its previous
    mode is restored afterwards.

    Args:
        model: a ``GPT`` (any module with ``config.block_size`` whose forward
            returns ``(logits (B, T, V), loss)``).
        idx: (B, T) int64 prompt ids; T may exceed block_size.
        max_new_tokens: number of tokens to add (>= 0).
        temperature: logits are divided by it; 0 means greedy (argmax).
        top_k: sample only among the k largest logits (None: all).
        generator: ``torch.Generator`` for ``torch.multinomial``; a seeded one
            gives reproducible samples.
        eos_id: once a row has produced this id it is padded with it; generation
            stops early when every row has produced it.

    Returns:
        (B, T + n) int64, the prompt followed by n <= max_new_tokens new tokens.

    Raises:
        ValueError: max_new_tokens < 0, temperature < 0 or top_k < 1.
    """
    _check_args(max_new_tokens, temperature, top_k)
    block_size = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        done = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)  # (B, 1)
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -block_size:])  # (B, T', V)
            nxt = _next_token(logits[:, -1, :], temperature, top_k, generator)  # (B, 1)
            if eos_id is not None:
                nxt = nxt.masked_fill(done, eos_id)  # (B, 1)
                done = done | (nxt == eos_id)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
            if eos_id is not None and bool(done.all()):
                break
    finally:
        model.train(was_training)
    return idx
