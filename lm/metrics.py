"""Metrics of a language model's loss: the mean validation loss, perplexity and bits per byte.

Used by training (``lm/training/module.py``), ``lm evaluate`` and the benchmarks alike, so
each number means one thing wherever it is printed.
"""

import math

import torch


def bits_per_byte(loss: float, tokens_per_byte: float) -> float:
    """Cross-entropy in nats per token -> bits per UTF-8 byte of text.

    bpb = loss / ln 2 * (tokens / bytes): the same text costs the same bits whatever
    the tokenizer, so character and BPE models compare on one scale.
    """
    return loss / math.log(2) * tokens_per_byte


@torch.no_grad()
def mean_loss(model: torch.nn.Module, loader, device: str | torch.device) -> float:
    """Mean over batches of the per-batch mean cross-entropy (as ``LMModule`` validates)."""
    losses = [model(x.to(device), y.to(device))[1] for x, y in loader]  # each ()
    return torch.stack(losses).mean().item()


def perplexity(loss: float) -> float:
    """exp(loss) for a loss in nats per token; inf (not OverflowError) past float range."""
    return math.inf if loss > 709.0 else math.exp(loss)  # NaN stays NaN
