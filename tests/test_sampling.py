"""generate() and beam_search(): greedy vs a hand loop, seeding, top-k, top-p, beams by hand,
cropping, eos, stop strings, argument checks, and the lm generate strategies."""

from __future__ import annotations

import re
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lm.checkpoint import load_checkpoint
from lm.model import GPT, GPTConfig
from lm.sampling import beam_search, cut_at_stop, generate, top_k_filter, top_p_filter
from lm.tokenizers.char import CharTokenizer

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
        ({"temperature": -0.5}, "temperature=-0.5 is invalid: must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature=nan is invalid: must be a finite number"),
        ({"temperature": float("inf")}, "temperature=inf is invalid: must be a finite number"),
        ({"top_k": 0}, "top_k=0 is invalid: must be an integer >= 1"),
        ({"max_new_tokens": -1}, "max_new_tokens=-1 is invalid: must be an integer >= 0"),
    ],
)
def test_invalid_arguments_raise(kwargs, fragment):
    args = {"max_new_tokens": 3} | kwargs
    with pytest.raises(ValueError) as err:
        generate(tiny(), prompt(), **args)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --- top-p, beam search, stop strings, strategies ----------------------------------


class Fixed(nn.Module):
    """Fake model: the same next-token logits at every position."""

    def __init__(self, logits: torch.Tensor, block_size: int = 4):
        super().__init__()
        self.logits = logits
        self.config = SimpleNamespace(block_size=block_size)

    def forward(self, idx):
        return self.logits.expand(idx.size(0), idx.size(1), -1), None


def test_top_p_samples_only_inside_the_nucleus():
    probs = torch.tensor([0.04, 0.5, 0.1, 0.3, 0.06])  # by mass: 1 (.5), 3 (.8), 2 (.9), ...
    gen = torch.Generator().manual_seed(0)
    model = Fixed(probs.log())
    for p, nucleus in [(0.4, {1}), (0.75, {1, 3}), (0.85, {1, 3, 2}), (1.0, {0, 1, 2, 3, 4})]:
        out = generate(model, torch.zeros(200, 1, dtype=torch.long), 5, top_p=p, generator=gen)
        assert set(out[:, 1:].unique().tolist()) == nucleus, p


def test_top_k_then_top_p_and_filters_by_hand():
    logits = torch.tensor([[0.04, 0.5, 0.1, 0.3, 0.06]]).log()
    kept = top_p_filter(logits, 0.85)
    assert torch.isinf(kept).tolist() == [[True, False, False, False, True]]
    assert top_k_filter(logits, 2).isinf().tolist() == [[True, False, True, False, True]]
    gen = torch.Generator().manual_seed(0)
    out = generate(Fixed(logits[0]), torch.zeros(200, 1, dtype=torch.long), 3, top_k=3,
                   top_p=0.6, generator=gen)  # top 3 renormalised: .5/.9 = .56 < .6, so {1, 3}
    assert set(out[:, 1:].unique().tolist()) == {1, 3}


def test_seeded_top_p_is_reproducible():
    model = tiny()
    idx = prompt()

    def sample(seed):
        return generate(model, idx, 12, top_p=0.9, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(3), sample(3)) and not torch.equal(sample(3), sample(4))


class Table(nn.Module):
    """Fake model whose next-token probabilities depend on the last token only."""

    def __init__(self, table: dict[int, list[float]], block_size: int = 16):
        super().__init__()
        self.table = {k: torch.tensor(v).clamp_min(1e-9).log() for k, v in table.items()}
        self.config = SimpleNamespace(block_size=block_size)

    def forward(self, idx):
        last = torch.stack([self.table[t] for t in idx[:, -1].tolist()])  # (B, V)
        return last[:, None, :].expand(-1, idx.size(1), -1), None


def test_beam_finds_the_sequence_greedy_misses():
    # start 0 -> A=1 (.6) or B=2 (.4); after A all three .33; after B, B again .9.
    # greedy: A then token 0, p = .6 * 1/3 = .2; the best pair is B B, p = .4 * .9 = .36
    model = Table({0: [0, 0.6, 0.4], 1: [1 / 3, 1 / 3, 1 / 3], 2: [0.05, 0.05, 0.9]})
    start = torch.zeros(1, 1, dtype=torch.long)
    assert generate(model, start, 2, temperature=0).tolist() == [[0, 1, 0]]
    assert beam_search(model, start, 2, beam_width=1).tolist() == [[0, 1, 0]]
    assert beam_search(model, start, 2, beam_width=2).tolist() == [[0, 2, 2]]


def test_beam_width_1_is_greedy_on_a_gpt():
    model = tiny(block_size=8)
    idx = prompt(B=2, T=5)
    torch.testing.assert_close(beam_search(model, idx, 9, 1), generate(model, idx, 9, temperature=0))


def test_beam_length_penalty_by_hand():
    # eos=0; start 2 -> eos .55 or A=1 .45; after A: A .9, eos .1.
    # [eos]: log .55 = -0.598, lp(1) = 1.  [A A]: log .405 = -0.904, lp(2) = (7/6)^alpha.
    # alpha = 0: eos wins; alpha = 3: -0.904 / 1.588 = -0.569 > -0.598, A A wins.
    model = Table({2: [0.55, 0.45, 0], 1: [0.1, 0.9, 0], 0: [1, 0, 0]})
    start = torch.full((1, 1), 2)
    assert beam_search(model, start, 2, 2, length_penalty=0.0, eos_id=0).tolist() == [[2, 0, 0]]
    assert beam_search(model, start, 2, 2, length_penalty=3.0, eos_id=0).tolist() == [[2, 1, 1]]
    # eos certain: step 1 keeps [eos] and [A] (p ~ 1e-9), step 2 ends [A] too; no step 3 of 5
    certain = Table({2: [1, 0, 0], 0: [1, 0, 0], 1: [1, 0, 0]})
    assert beam_search(certain, start, 5, 2, eos_id=0).tolist() == [[2, 0, 0]]


def test_stop_strings_end_rows_and_cut_the_text():
    def decode(ids):
        return "".join("abcdefghi\n"[i] for i in ids)

    script = [[5, 5, 1, 2, 9, 3, 3, 3, 3], [5, 5, 1, 1, 1, 1, 9, 4, 4]]
    out = generate(Scripted(script), torch.full((2, 2), 5), 7, temperature=0,
                   stop_strings=["\n"], decode=decode)
    # row 0 hits "\n" at step 3 and is padded with 0; row 1 at step 5; no step 6
    assert out.tolist() == [[5, 5, 1, 2, 9, 0, 0], [5, 5, 1, 1, 1, 1, 9]]
    assert [cut_at_stop(decode(r[2:]), ["\n"]) for r in out.tolist()] == [("bc", True),
                                                                          ("bbbb", True)]
    assert cut_at_stop("hello world.", ["w", "o", ""]) == ("hell", True)
    assert cut_at_stop("hello", ["x"]) == ("hello", False)
    with pytest.raises(ValueError, match="stop_strings needs decode"):
        generate(Scripted(script), torch.full((2, 2), 5), 3, stop_strings=["\n"])


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: generate(tiny(), prompt(), 3, top_p=0.0),
         "top_p=0.0 is invalid: must be in (0, 1]"),
        (lambda: generate(tiny(), prompt(), 3, top_p=float("nan")), "top_p=nan is invalid"),
        (lambda: beam_search(tiny(), prompt(), 3, 0),
         "beam_width=0 is invalid: must be an integer >= 1"),
        (lambda: beam_search(tiny(), prompt(), 3, 2, length_penalty=-1), "length_penalty=-1"),
        (lambda: beam_search(tiny(), prompt(), 3, 2, length_penalty=float("inf")),
         "length_penalty=inf is invalid: must be a finite number >= 0"),
    ],
)
def test_invalid_new_arguments_raise(call, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        call()


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint as lm/train.py writes one (random weights, char tokenizer), by hand."""
    tokenizer = CharTokenizer.from_text("ROMEO: but soft, what light\nJULIET: ay me\n")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                       n_embd=16)
    torch.manual_seed(0)
    model = GPT(config)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "model_config": asdict(config), "tokenizer": tokenizer.to_dict()}, path)
    return path


def test_cli_strategies(ckpt, capsys):
    from lm.cli import main as lm

    def main(argv):
        return lm(["generate", *argv])

    base = [f"ckpt={ckpt}", "prompt=ROMEO:", "max_new_tokens=6"]
    assert main(base + ["strategy=top_p", "top_p=0.9", "num_samples=3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 3 and out.count("ROMEO:") == 3
    assert main(base + ["strategy=beam", "beam_width=4"]) == 0
    out = capsys.readouterr().out
    assert "--- sample" not in out and out.startswith("ROMEO:")
    for strategy in ("greedy", "sample", "top_k"):
        assert main(base + [f"strategy={strategy}"]) == 0
        assert capsys.readouterr().out.startswith("ROMEO:")
    assert main(base + ["strategy=nucleus"]) == 2
    assert "strategy='nucleus' must be one of" in capsys.readouterr().err
    long_prompt = "ROMEO: but soft, what light ROMEO: but soft"
    assert main([f"ckpt={ckpt}", f"prompt={long_prompt}", "max_new_tokens=2"]) == 0
    assert "the model sees its last 16" in capsys.readouterr().err


def test_cli_greedy_and_stop_match_the_library(ckpt):
    from lm.cli import settings
    from lm.commands.generate import sample_texts

    cfg = settings("generate", f"ckpt={ckpt}", "prompt=ROMEO:", "max_new_tokens=12",
                   "strategy=greedy")
    (full,) = sample_texts(cfg)
    model, tokenizer, _ = load_checkpoint(ckpt)
    idx = torch.tensor([tokenizer.encode("ROMEO:")])
    assert full == tokenizer.decode(generate(model, idx, 12, temperature=0)[0].tolist())
    new = full[len("ROMEO:") :]
    stop = new[3:5]  # a string the greedy text is known to contain
    cfg.stop = stop
    (cut,) = sample_texts(cfg)
    assert cut == "ROMEO:" + new[: new.find(stop)] and len(cut) < len(full)
