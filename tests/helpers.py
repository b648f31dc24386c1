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


def arch_options(logit_softcap: float) -> dict[str, dict]:
    """GPTConfig options beyond GPT-2, each alone, then all together two ways (rope and
    swiglu; learned positions and relu2) in pre-norm blocks and once in post-norm (GPT-1)
    blocks, by a short name; ``logit_softcap``: the cap used."""
    every = {"pos_encoding": "rope", "rope_base": 100.0, "norm": "rmsnorm", "qk_norm": True,
             "activation": "swiglu", "zero_init_proj": True, "logit_softcap": logit_softcap,
             "tie_weights": False, "bias": False}
    return {
        "rope": {"pos_encoding": "rope"},
        "rope_base_100": {"pos_encoding": "rope", "rope_base": 100.0},
        "rmsnorm": {"norm": "rmsnorm"},
        "post_norm": {"norm_position": "post"},
        "post_norm_rmsnorm": {"norm_position": "post", "norm": "rmsnorm"},
        "qk_norm": {"qk_norm": True},
        "relu2": {"activation": "relu2"},
        "swiglu": {"activation": "swiglu"},
        "zero_init_proj": {"zero_init_proj": True},
        "logit_softcap": {"logit_softcap": logit_softcap},
        "untied": {"tie_weights": False},
        "all": every,
        "all_relu2_learned": {**every, "pos_encoding": "learned", "activation": "relu2", "bias": True},
        "all_post_norm": {**every, "norm_position": "post"},
    }
