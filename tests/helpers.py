"""Small models and inputs shared by the model and hook tests."""

import torch

from lm.model import GPT, GPTConfig

V = 37  # vocabulary size of the tiny test models


def tiny(**overrides) -> GPT:
    """A 2-layer, 32-wide, 4-head model in eval mode, seeded for reproducibility."""
    kwargs = {"vocab_size": V, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32}
    kwargs.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**kwargs)).eval()


def tokens(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    """(B, T) random token ids below V, from their own seeded generator."""
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
