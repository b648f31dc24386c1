"""KV cache: cached decoding against the uncached forward, both position encodings."""

from __future__ import annotations

import pytest
import torch

from lm.model import GPT, GPTConfig
from lm.sampling import _LastLogits, beam_search, generate

V = 29


def tiny(pos_encoding: str = "learned", block_size: int = 8) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=16,
                       pos_encoding=pos_encoding, tie_weights=False)
    model = GPT(config).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so greedy output does not repeat
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def ids(B: int, T: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def cached_logits(model: GPT, idx: torch.Tensor, first: int) -> torch.Tensor:
    """Logits (B, T, V) of idx fed as a prompt of ``first`` tokens, then one token at a time."""
    cache = model.new_kv_cache()
    parts = [model(idx[:, :first], kv_cache=cache)[0]]
    for t in range(first, idx.size(1)):
        parts.append(model(idx[:, t : t + 1], kv_cache=cache)[0])
    assert len(cache) == idx.size(1)
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_cached_logits_equal_uncached(pos_encoding):
    model = tiny(pos_encoding, block_size=12)
    idx = ids(2, 12)
    with torch.no_grad():
        full, _ = model(idx)
        torch.testing.assert_close(cached_logits(model, idx, 5), full, atol=1e-5, rtol=0)
        torch.testing.assert_close(cached_logits(model, idx, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("T", [3, 11])  # 11 > block_size: the prompt itself is cropped
def test_cached_greedy_equals_uncached_through_the_crop(pos_encoding, T):
    model = tiny(pos_encoding, block_size=8)
    idx = ids(2, T)
    cached = generate(model, idx, 14, temperature=0, use_cache=True)  # outgrows block_size
    plain = generate(model, idx, 14, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_last_logits_agree_at_every_step_through_the_crop(pos_encoding):
    model = tiny(pos_encoding, block_size=8)
    seq = ids(2, 20)
    cached, plain = _LastLogits(model, use_cache=True), _LastLogits(model, use_cache=False)
    with torch.no_grad():
        for t in range(3, 21):  # prompt of 3, then one token a step, past block_size at t = 9
            torch.testing.assert_close(cached(seq[:, :t]), plain(seq[:, :t]), atol=1e-5, rtol=0)
    assert len(cached.cache) == 8


def test_cached_sampling_and_beams_equal_uncached():
    model = tiny(block_size=10)
    idx = ids(3, 4)

    def sample(use_cache):
        gen = torch.Generator().manual_seed(5)
        return generate(model, idx, 12, top_k=10, generator=gen, use_cache=use_cache)

    assert torch.equal(sample(True), sample(False))
    beams = [beam_search(model, idx, 9, 3, use_cache=c) for c in (True, False)]
    assert torch.equal(*beams)


def test_hooks_fire_on_the_new_positions_in_the_cached_path():
    model = tiny(block_size=12)
    idx = ids(1, 6)
    seen = []

    def record(x, hook):
        seen.append((hook.name, tuple(x.shape)))

    with torch.no_grad():
        full, _ = model(idx)
        with model.hooks([("blocks.0.attn.hook_pattern", record), ("hook_pos_embed", record),
                          ("blocks.1.hook_resid_post", record)]):
            logits = cached_logits(model, idx, 4)  # explicit attention path in layer 0
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
    assert seen[:3] == [("hook_pos_embed", (1, 4, 16)),
                        ("blocks.0.attn.hook_pattern", (1, 2, 4, 4)),
                        ("blocks.1.hook_resid_post", (1, 4, 16))]
    assert seen[3:6] == [("hook_pos_embed", (1, 1, 16)),
                         ("blocks.0.attn.hook_pattern", (1, 2, 1, 5)),
                         ("blocks.1.hook_resid_post", (1, 1, 16))]


def test_a_hook_edit_matches_the_uncached_edit():
    model = tiny(block_size=12)
    idx = ids(2, 7)

    def zero_head_0(v, hook):
        v = v.clone()
        v[:, 0] = 0
        return v

    with torch.no_grad(), model.hooks([("blocks.*.attn.hook_v", zero_head_0)]):
        full, _ = model(idx)
        cached = cached_logits(model, idx, 3)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_cache_past_block_size_raises_and_reorder_picks_rows():
    model = tiny(block_size=8)
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(ids(2, 6), kv_cache=cache)
        with pytest.raises(ValueError, match="T=9 exceeds model.block_size=8"):
            model(ids(2, 3), kv_cache=cache)
    k1 = cache.layers[1].k
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.layers[1].k.shape == (3, 2, 6, 8)
    assert torch.equal(cache.layers[1].k[2], k1[0]) and len(cache) == 6
