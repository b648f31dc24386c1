"""generate(): greedy vs a hand loop, seeding, top-k, cropping, eos, argument checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lm.model import GPT, GPTConfig
from lm.sampling import generate

V = 29


def tiny(**overrides) -> GPT:
    kwargs = {"vocab_size": V, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16}
    kwargs.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**kwargs)).eval()


def prompt(B: int = 2, T: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))


def greedy_by_hand(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx[:, -model.config.block_size :])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


class Scripted(nn.Module):
    """Fake model: row b's next token is script[b][len(context)] with a clear margin."""

    def __init__(self, script: list[list[int]], vocab: int = 10, block_size: int = 64):
        super().__init__()
        self.script = script
        self.vocab = vocab
        self.config = SimpleNamespace(block_size=block_size)

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            logits[b, -1, self.script[b][T]] = 10.0
        return logits, None


def test_greedy_equals_repeated_argmax():
    model = tiny()
    idx = prompt()
    out = generate(model, idx, 6, temperature=0)
    assert out.shape == (2, 9) and out.dtype == torch.int64
    torch.testing.assert_close(out, greedy_by_hand(model, idx, 6))


def test_top_k_1_equals_greedy():
    model = tiny()
    idx = prompt()
    gen = torch.Generator().manual_seed(0)
    out = generate(model, idx, 6, temperature=1.0, top_k=1, generator=gen)
    torch.testing.assert_close(out, greedy_by_hand(model, idx, 6))


def test_seeded_sampling_is_reproducible():
    model = tiny()
    idx = prompt()

    def sample(seed):
        return generate(model, idx, 12, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


def test_top_k_restricts_to_k_largest():
    logits = torch.arange(10.0)  # token i has logit i: the top 3 are 7, 8, 9

    class Fixed(nn.Module):
        config = SimpleNamespace(block_size=4)

        def forward(self, idx):
            return logits.expand(idx.size(0), idx.size(1), 10), None

    gen = torch.Generator().manual_seed(0)
    out = generate(Fixed(), torch.zeros(64, 1, dtype=torch.long), 5, top_k=3, generator=gen)
    assert set(out[:, 1:].unique().tolist()) == {7, 8, 9}


def test_prompt_longer_than_block_size_is_cropped():
    model = tiny(block_size=8)
    idx = prompt(B=1, T=12)
    out = generate(model, idx, 5, temperature=0)
    assert out.shape == (1, 17)
    torch.testing.assert_close(out[:, :12], idx)
    torch.testing.assert_close(out, greedy_by_hand(model, idx, 5))


def test_stops_when_every_row_has_produced_eos():
    eos = 0
    script = [[5, 5, 3, 0, 4, 4, 4, 4, 4], [5, 5, 3, 3, 3, 0, 4, 4, 4]]
    out = generate(Scripted(script), torch.full((2, 2), 5), 6, temperature=0, eos_id=eos)
    # row 0 ends at step 2 and is padded with eos; row 1 ends at step 4; no step 5
    assert out.tolist() == [[5, 5, 3, 0, 0, 0], [5, 5, 3, 3, 3, 0]]
    no_eos = generate(Scripted(script), torch.full((2, 2), 5), 6, temperature=0)
    assert no_eos.shape == (2, 8)


def test_restores_training_mode_and_runs_in_eval():
    model = tiny(dropout=0.5).train()
    idx = prompt()
    a = generate(model, idx, 5, temperature=0)
    assert model.training
    b = generate(model, idx, 5, temperature=0)
    torch.testing.assert_close(a, b)  # dropout off during generation
    model.eval()
    generate(model, idx, 1)
    assert not model.training


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"temperature": -0.5}, "temperature=-0.5 must be >= 0"),
        ({"top_k": 0}, "top_k=0 must be >= 1"),
        ({"max_new_tokens": -1}, "max_new_tokens=-1 must be >= 0"),
    ],
)
def test_invalid_arguments_raise(kwargs, fragment):
    args = {"max_new_tokens": 3} | kwargs
    with pytest.raises(ValueError) as err:
        generate(tiny(), prompt(), **args)
    assert fragment in str(err.value) and "\n" not in str(err.value)
