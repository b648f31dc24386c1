"""The analyses on lm's options beyond GPT-2 (RoPE, RMSNorm, QK-norm, soft-cap, SwiGLU,
post-norm, attention-only), which TransformerLens does not build: checked against hand
computations. The GPT-2 architecture is checked against TransformerLens itself
(test_transformer_lens.py)."""

import pytest
import torch

from lm.analysis.interp.attribution import direct_logit_attribution, head_outputs
from lm.analysis.interp.heads import detection_patterns, head_scores, pattern_score
from lm.analysis.interp.lens import logit_lens
from lm.analysis.interp.patching import activation_patching
from lm.analysis.interp.tokens import encode_prompt, repeated_random_tokens, single_token
from lm.tokenizers import ByteTokenizer, CharTokenizer, token_labels
from tests.conftest import arch_options, tiny, tokens

CAP = 3.0
OPTIONS = arch_options(logit_softcap=CAP)
PRE_NORM = {name: opts for name, opts in OPTIONS.items() if opts.get("norm_position") != "post"}


def trained_like(**options):
    """``tiny(**options)`` with every norm weight and bias perturbed, so a test sees what
    a trained model's norms do (fresh ones are the identity map)."""
    model = tiny(**options)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model


def by_hand_head(model, resid: torch.Tensor) -> torch.Tensor:
    """ln_f written out ((x - mean) / sqrt(var + eps) * w + b, or x / rms * w), then
    logits = x W_U^T, then the soft-cap: resid (..., C) -> (..., V)."""
    c, ln_f = model.config, model.transformer.ln_f
    if c.norm == "rmsnorm":
        x = resid / torch.sqrt(resid.pow(2).mean(-1, keepdim=True) + c.layer_norm_epsilon)
        x = x * ln_f.weight
    else:
        centred = resid - resid.mean(-1, keepdim=True)
        x = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + c.layer_norm_epsilon)
        x = x * ln_f.weight + (ln_f.bias if ln_f.bias is not None else 0)
    logits = x @ model.lm_head.weight.T
    return logits if c.logit_softcap is None else CAP * torch.tanh(logits / CAP)


@pytest.mark.parametrize("name", PRE_NORM)
def test_logit_lens_is_each_residual_through_ln_f_and_the_head_by_hand(name):
    model, ids = trained_like(**PRE_NORM[name]), tokens(B=1, T=10)[0]
    lens = logit_lens(model, ids)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids[None], "*hook_resid_*")
        for r, row in enumerate(lens.labels):
            name_ = "blocks.0.hook_resid_pre" if row == "embed" else f"{row}.hook_resid_post"
            torch.testing.assert_close(lens.logits[r], by_hand_head(model, cache[name_][0]),
                                       atol=1e-5, rtol=0)
    torch.testing.assert_close(lens.logits[-1], logits[0], atol=1e-5, rtol=0)  # last row: output
    top = lens.logits.argmax(-1)  # (L + 1, T)
    assert (lens.rank(top[-1])[-1] == 0).all()  # the model's top token has rank 0 at the output


def test_logit_lens_of_a_post_norm_model_reads_the_normalised_blocks_directly():
    model, ids = trained_like(norm_position="post"), tokens(B=1, T=8)[0]
    lens = logit_lens(model, ids)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], "blocks.0.hook_resid_post")
    torch.testing.assert_close(lens.logits[1], cache["blocks.0.hook_resid_post"][0]
                               @ model.lm_head.weight.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", PRE_NORM)
def test_dla_components_sum_to_the_raw_logit_and_heads_sum_to_attn_out(name):
    model, ids = trained_like(**PRE_NORM[name]), tokens(B=1, T=10)[0]
    result = direct_logit_attribution(model, ids, target=4, contrast=9, pos=6)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], ["hook_final_norm", "*hook_z", "*hook_attn_out"])
        raw = cache["hook_final_norm"][0, 6] @ model.lm_head.weight.T  # before the soft-cap
    assert result.logit == pytest.approx(float(raw[4] - raw[9]), abs=1e-4)
    assert float(result.values.sum()) == pytest.approx(result.logit, abs=1e-6)
    n_heads = sum(label.startswith("blocks.") and ".head" in label for label in result.labels)
    assert n_heads == model.config.n_layer * model.config.n_head
    assert ("pos_embed" in result.labels) == (model.config.pos_encoding != "rope")
    assert any(".mlp" in label for label in result.labels) == model.config.mlp
    for block in model.transformer.h:  # each head's write, by hand, adds up to attn_out
        p = f"blocks.{block.layer}"
        per_head, bias = head_outputs(block.attn.c_proj, cache[f"{p}.attn.hook_z"][0])
        torch.testing.assert_close(per_head.sum(0) + bias, cache[f"{p}.hook_attn_out"][0],
                                   atol=1e-5, rtol=0)
        z = cache[f"{p}.attn.hook_z"][0]  # (T, H, Dh)
        Dh = model.config.head_dim
        head1 = z[:, 1] @ block.attn.c_proj.weight[:, Dh : 2 * Dh].T  # head 1's columns
        torch.testing.assert_close(per_head[1], head1, atol=1e-5, rtol=0)


def test_dla_refuses_a_post_norm_model():
    with pytest.raises(ValueError, match="kind=dla needs a pre-norm model"):
        direct_logit_attribution(tiny(norm_position="post"), tokens(B=1, T=6)[0], target=1)


@pytest.mark.parametrize("name", ["all", "all_post_norm", "all_attn_only", "rope"])
def test_patching_the_one_differing_position_at_the_first_block_restores_the_clean_score(name):
    """resid_pre of block 0 is the embedding alone: prompts that differ only at position p
    give the clean run back when p is patched there, and nothing when another is."""
    model = trained_like(**{**OPTIONS[name], "zero_init_proj": False})  # blocks that do something
    clean = tokens(B=1, T=9)[0]
    corrupt = clean.clone()
    corrupt[3] = (clean[3] + 1) % model.config.vocab_size
    result = activation_patching(model, clean, corrupt, target=2, contrast=7)
    assert abs(result.clean - result.corrupt) > 1e-4
    assert result.resid_pre[0, 3].item() == pytest.approx(result.clean, abs=1e-5)
    others = torch.cat([result.resid_pre[0, :3], result.resid_pre[0, 4:]])
    torch.testing.assert_close(others, torch.full_like(others, result.corrupt), atol=1e-5, rtol=0)
    assert result.recovered(result.resid_pre)[0, 3].item() == pytest.approx(1.0, abs=1e-2)
    assert result.heads.shape == (model.config.n_layer, model.config.n_head)


def test_patching_refuses_prompts_of_different_lengths():
    with pytest.raises(ValueError, match="same number of tokens.*5 and 6"):
        activation_patching(tiny(), tokens(B=1, T=5)[0], tokens(B=1, T=6)[0], 1, 2)


def test_detection_patterns_by_hand():
    ids = torch.tensor([7, 8, 9, 7, 8])
    patterns = detection_patterns(ids)
    assert torch.nonzero(patterns["previous_token"]).tolist() == [[1, 0], [2, 1], [3, 2], [4, 3]]
    assert torch.nonzero(patterns["duplicate_token"]).tolist() == [[3, 0], [4, 1]]
    # query 3 (a 7): the token after the earlier 7 is position 1; query 4 (an 8): position 2
    assert torch.nonzero(patterns["induction"]).tolist() == [[3, 1], [4, 2]]


def test_a_perfect_previous_token_head_scores_its_share_of_queries():
    T = 6
    pattern = torch.zeros(T, T)
    pattern[0, 0] = 1.0
    pattern[torch.arange(1, T), torch.arange(T - 1)] = 1.0  # every query on its previous token
    ids = torch.arange(T)
    assert pattern_score(pattern, detection_patterns(ids)["previous_token"]) == pytest.approx((T - 1) / T)
    assert pattern_score(pattern, detection_patterns(ids)["induction"]) == 0.0


@pytest.mark.parametrize("name", ["rope", "qk_norm", "all", "all_attn_only", "all_post_norm"])
def test_head_scores_are_the_cached_patterns_share_on_each_detection_pattern(name):
    model, ids = trained_like(**OPTIONS[name]), torch.tensor(repeated_random_tokens(list(range(30)), 6, 0))
    scores = head_scores(model, ids)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], "*hook_pattern")
    induction = detection_patterns(ids)["induction"]
    for i in range(model.config.n_layer):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"][0]  # (H, T, T)
        by_hand = [float((pattern[h] * induction).sum() / ids.numel()) for h in range(4)]
        assert scores["induction"][i].tolist() == pytest.approx(by_hand, abs=1e-6)


def test_repeated_random_tokens_repeat_distinct_tokens_and_are_seeded():
    ids = repeated_random_tokens(list(range(3, 40)), 10, seed=4)
    assert ids[:10] == ids[10:] and len(set(ids[:10])) == 10 and min(ids) >= 3
    assert ids == repeated_random_tokens(list(range(3, 40)), 10, seed=4)
    assert ids != repeated_random_tokens(list(range(3, 40)), 10, seed=5)
    with pytest.raises(ValueError, match=r"random_tokens=50 must be in \[1, 37\]"):
        repeated_random_tokens(list(range(3, 40)), 50, seed=0)


def test_token_labels_show_whitespace_specials_and_partial_utf8():
    byte = ByteTokenizer()
    assert token_labels(byte, byte.encode("a b\n\t€") + [byte.eos_id]) == [
        "a", "␣", "b", "\\n", "\\t", "\\xe2", "\\x82", "\\xac", "<eos>"]
    char = CharTokenizer.from_text("ab \n")
    assert token_labels(char, char.encode("a \nb")) == ["a", "␣", "\\n", "b"]


def test_prompt_and_target_checks_name_the_key():
    char = CharTokenizer.from_text("abc ")
    assert encode_prompt(char, "ab c", block_size=4) == char.encode("ab c")
    with pytest.raises(ValueError, match="prompt is 5 tokens, longer than the model's block_size=4"):
        encode_prompt(char, "abcab", block_size=4)
    with pytest.raises(ValueError, match=r"prompt_corrupt holds characters .*'z'"):
        encode_prompt(char, "abz", block_size=8, key="prompt_corrupt")
    assert single_token(char, "b", "target") == char.encode("b")[0]
    with pytest.raises(ValueError, match=r"target='ab' is 2 tokens \['a', 'b'\].*exactly one token"):
        single_token(char, "ab", "target")
    with pytest.raises(ValueError, match=r"contrast='z' is 1 tokens .*\(unknown\)"):
        single_token(char, "z", "contrast")


@pytest.mark.parametrize("adapter", [
    {"name": "lora", "r": 2, "alpha": 4.0, "dropout": 0.0,
     "targets": ["blocks.*.attn.c_attn", "blocks.*.attn.c_proj"]},
    {"name": "qlora", "r": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["blocks.*.attn.c_proj"],
     "quantize": ["blocks.*"], "quant_block_size": 32, "double_quant": False},
], ids=["lora", "qlora"])
def test_the_analyses_read_adapted_models_through_their_own_layers(adapter):
    """LoRA and NF4 layers stay linear in their input: a head's output through them is
    still its share of c_proj, and the components still sum to the logit."""
    from lm.adapters.build import apply_adapter

    model = trained_like()
    apply_adapter(model, adapter)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a trained adapter: B != 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    model.eval()
    ids = tokens(B=1, T=10)[0]
    result = direct_logit_attribution(model, ids, target=4, contrast=9)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids[None], "*hook_attn_out")
    assert result.logit == pytest.approx(float(logits[0, -1, 4] - logits[0, -1, 9]), abs=1e-4)
    torch.testing.assert_close(logit_lens(model, ids).logits[-1], logits[0], atol=1e-5, rtol=0)
    assert set(cache) == {f"blocks.{i}.hook_attn_out" for i in range(2)}


def test_mean_head_scores_in_batches_equal_one_window_at_a_time():
    from lm.analysis.interp.heads import mean_head_scores

    model = trained_like()
    windows = [tokens(B=1, T=12, seed=s)[0] for s in range(5)] + [tokens(B=1, T=7, seed=9)[0]]
    one_by_one = [head_scores(model, w) for w in windows]
    for max_floats in (1, 2 * 2 * 4 * 12 * 12, 2**24):  # batches of 1, 2 and all
        batched = mean_head_scores(model, windows, max_floats=max_floats)
        for kind, scores in batched.items():
            expected = torch.stack([s[kind] for s in one_by_one]).mean(0)
            torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)


def test_random_sequences_leave_out_specials_and_whitespace_tokens():
    from lm.analysis.interp.tokens import plain_vocab

    char = CharTokenizer.from_text("ab \nc")
    assert [char.decode([i]) for i in plain_vocab(char)] == ["a", "b", "c"]
    byte = ByteTokenizer()
    vocab = plain_vocab(byte)
    # 10: \t \n \v \f \r, the separators \x1c-\x1f and space (what str.strip removes)
    assert set(range(256)) - set(vocab) == {9, 10, 11, 12, 13, 28, 29, 30, 31, 32}
    assert byte.eos_id not in vocab
    assert byte.encode("\n")[0] not in vocab and byte.encode("a")[0] in vocab
