"""Shared by the interop tests: tiny random GPT-2s of ``transformers`` (the reference),
logits on both sides, and a GPT-2 directory as ``lm convert direction=export`` writes it."""

from typing import TYPE_CHECKING

import pytest
import torch

from lm.interop.hf import export_hf_gpt2
from lm.model import GPT, GPTConfig
from lm.tokenizers import BPETokenizer

if TYPE_CHECKING:
    import transformers

SIZES = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32, "vocab_size": 100}
TEXT = "the cat sat on the mat.\nLe chat était là. " * 20
# the end of the line export_hf_gpt2 refuses a model with
HOLDS = ("(GPT-2 holds learned or sinusoidal positions, layernorm, pre-norm blocks with an "
         "mlp, gelu/gelu_tanh, no qk_norm, no logit_softcap)")


def hf_model(seed: int = 0, **overrides) -> "transformers.GPT2LMHeadModel":
    """A random tiny GPT-2 in eval mode; a wide init (0.2) so logits are far from uniform.
    (The test modules that call it skip without ``transformers``.)"""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**SIZES, "initializer_range": 0.2, **overrides})
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2 inits LayerNorm to (1, 0); random values test the mapping
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits  # (B, T, V)


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]  # (B, T, V)


def tiny_gpt(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32,
                         **options)).eval()


@pytest.fixture
def idx():
    return torch.randint(0, SIZES["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def exported(tmp_path):
    """A GPT-2 directory as lm convert direction=export writes it, BPE tokenizer: config.json,
    model.safetensors, lm_tokenizer.json, vocab.json, merges.txt."""
    tokenizer = BPETokenizer.train(TEXT, vocab_size=270)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2,
                          n_embd=32))
    export_hf_gpt2(model, tmp_path / "hf", tokenizer)
    return tmp_path / "hf"

