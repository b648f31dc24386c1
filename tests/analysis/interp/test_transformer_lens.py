"""lm's caches and analyses against TransformerLens's ``HookedTransformer`` (the reference),
for GPT-2-architecture models: random weights and a trained checkpoint, with and without
MLPs, within 1e-5.

The TransformerLens model is built from the same config and loaded with the same weights
(``tl_model``): GPT-2's fused ``c_attn`` split into per-head ``W_Q``, ``W_K``, ``W_V``,
``c_proj`` into ``W_O``, the MLP's ``Linear`` weights transposed.
"""

import pytest
import torch

from lm.analysis.interp.attribution import direct_logit_attribution
from lm.analysis.interp.heads import KINDS, detection_patterns, head_scores
from lm.analysis.interp.lens import logit_lens
from lm.analysis.interp.patching import activation_patching
from lm.checkpoint import load_checkpoint
from lm.model import GPT
from tests.conftest import tiny

transformer_lens = pytest.importorskip("transformer_lens")
head_detector = pytest.importorskip("transformer_lens.head_detector")
tl_patching = pytest.importorskip("transformer_lens.patching")

ATOL = 1e-5
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}  # lm's name -> TransformerLens's
# lm's hook name -> TransformerLens's; the attention hooks get the block prefix
SAME_NAMES = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre",
              "mlp.hook_post", "hook_mlp_out", "hook_resid_post", "attn.hook_z",
              "attn.hook_pattern")


def tl_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """``model``'s weights under TransformerLens's names and layouts."""
    c = model.config
    H, Dh, C = c.n_head, c.head_dim, c.n_embd
    t = model.transformer
    sd = {"embed.W_E": t.wte.weight, "pos_embed.W_pos": t.wpe.weight,
          "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias,
          "unembed.W_U": model.lm_head.weight.T, "unembed.b_U": torch.zeros(c.vocab_size)}
    for block in t.h:
        p = f"blocks.{block.layer}"
        w = block.attn.c_attn.weight.T.reshape(C, 3, H, Dh)  # (C, qkv, H, Dh)
        b = block.attn.c_attn.bias.reshape(3, H, Dh)
        for k, name in enumerate("QKV"):
            sd[f"{p}.attn.W_{name}"] = w[:, k].permute(1, 0, 2)  # (H, C, Dh)
            sd[f"{p}.attn.b_{name}"] = b[k]  # (H, Dh)
        sd[f"{p}.attn.W_O"] = block.attn.c_proj.weight.T.reshape(H, Dh, C)
        sd[f"{p}.attn.b_O"] = block.attn.c_proj.bias
        sd[f"{p}.ln1.w"], sd[f"{p}.ln1.b"] = block.ln_1.weight, block.ln_1.bias
        if c.mlp:
            sd[f"{p}.ln2.w"], sd[f"{p}.ln2.b"] = block.ln_2.weight, block.ln_2.bias
            sd[f"{p}.mlp.W_in"], sd[f"{p}.mlp.b_in"] = block.mlp.c_fc.weight.T, block.mlp.c_fc.bias
            sd[f"{p}.mlp.W_out"] = block.mlp.c_proj.weight.T
            sd[f"{p}.mlp.b_out"] = block.mlp.c_proj.bias
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def tl_model(model: GPT, fold_ln: bool = False):
    """A ``HookedTransformer`` computing what ``model`` computes (``fold_ln``: ln weights
    folded into the next layer, as TransformerLens's attribution tools expect)."""
    c = model.config
    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, d_head=c.head_dim, n_heads=c.n_head,
        d_mlp=4 * c.n_embd if c.mlp else None, d_vocab=c.vocab_size, n_ctx=c.block_size,
        act_fn=ACTIVATIONS[c.activation], normalization_type="LN", attn_only=not c.mlp,
        eps=c.layer_norm_epsilon, init_weights=False, device="cpu")
    reference = transformer_lens.HookedTransformer(cfg)
    reference.load_and_process_state_dict(tl_state_dict(model), fold_ln=fold_ln,
                                          center_writing_weights=False, center_unembed=False,
                                          fold_value_biases=False, refactor_factored_attn_matrices=False)
    return reference.eval()


MODELS = {
    "random": lambda: tiny(),
    "random_gelu_tanh_untied": lambda: tiny(activation="gelu_tanh", tie_weights=False),
    "random_attn_only": lambda: tiny(mlp=False),
}


@pytest.fixture(params=[*MODELS, "trained"])
def model(request) -> GPT:
    """Each random model of ``MODELS``, and the checkpoint of the session's tiny run."""
    if request.param == "trained":
        return load_checkpoint(request.getfixturevalue("tiny_trained").ckpt)[0].eval()
    return MODELS[request.param]()


def ids_for(model: GPT, T: int = 12, seed: int = 1) -> torch.Tensor:
    """(T,) token ids below the model's vocabulary size."""
    return torch.randint(0, model.config.vocab_size, (T,), generator=torch.Generator().manual_seed(seed))


def test_every_cached_activation_matches_transformer_lens(model):
    ids = ids_for(model)[None]  # (1, T)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
        tl_logits, tl_cache = tl_model(model).run_with_cache(ids)
    pairs = {"hook_embed": "hook_embed", "hook_pos_embed": "hook_pos_embed",
             "hook_final_norm": "unembed.hook_in"}
    for i in range(model.config.n_layer):
        p = f"blocks.{i}"
        pairs.update({f"{p}.{name}": f"{p}.{name}" for name in SAME_NAMES})
        pairs.update({f"{p}.attn.hook_{n}": f"{p}.attn.hook_{n}" for n in "qkv"})
        pairs[f"{p}.attn.hook_scores"] = f"{p}.attn.hook_attn_scores"
    checked = 0
    for ours, theirs in pairs.items():
        if ours not in model.hook_dict:
            assert theirs not in tl_cache, theirs  # attention-only: neither has the MLP hooks
            continue
        with torch.no_grad():
            _, one = model.run_with_cache(ids, ours)  # scores and pattern: the explicit path
        act = one[ours]
        if ours.endswith(("hook_q", "hook_k", "hook_v")):
            act = act.transpose(1, 2)  # lm (B, H, T, Dh); TransformerLens (B, T, H, Dh)
        torch.testing.assert_close(act, tl_cache[theirs], atol=ATOL, rtol=0, msg=ours)
        checked += 1
    assert checked >= 3 + 10 * model.config.n_layer - (0 if model.config.mlp else 4)
    torch.testing.assert_close(logits, tl_logits, atol=ATOL, rtol=0)
    assert set(cache) == set(model.hook_dict)


def test_logit_lens_matches_transformer_lens_accumulated_resid(model):
    ids = ids_for(model)
    reference = tl_model(model, fold_ln=True)
    with torch.no_grad():
        _, tl_cache = reference.run_with_cache(ids[None])
        stack = tl_cache.accumulated_resid(apply_ln=True)  # (L + 1, 1, T, C), ln recomputed
        expected = reference.unembed(stack[:, 0])  # (L + 1, T, V)
    lens = logit_lens(model, ids)
    assert lens.labels == ["embed"] + [f"blocks.{i}" for i in range(model.config.n_layer)]
    torch.testing.assert_close(lens.logits, expected, atol=ATOL, rtol=0)


def test_patching_matches_transformer_lens(model):
    clean, corrupt = ids_for(model, seed=1), ids_for(model, seed=2)
    target, contrast = 3, 5
    reference = tl_model(model)

    def metric(logits):
        return logits[0, -1, target] - logits[0, -1, contrast]

    with torch.no_grad():
        _, clean_cache = reference.run_with_cache(clean[None])
        resid = tl_patching.get_act_patch_resid_pre(reference, corrupt[None], clean_cache, metric)
        heads = tl_patching.get_act_patch_attn_head_out_all_pos(reference, corrupt[None],
                                                                 clean_cache, metric)
    result = activation_patching(model, clean, corrupt, target, contrast)
    torch.testing.assert_close(result.resid_pre, resid.float(), atol=ATOL, rtol=0)
    torch.testing.assert_close(result.heads, heads.float(), atol=ATOL, rtol=0)
    # patching every position of resid_pre 0 gives the clean run: position 0's patch
    # alone changes only what attends to it, so the columns differ
    assert result.resid_pre.shape == (model.config.n_layer, clean.numel())


@pytest.mark.parametrize("contrast", [None, 5])
def test_dla_matches_transformer_lens_logit_attrs(model, contrast):
    ids, target = ids_for(model), 3
    reference = tl_model(model, fold_ln=True)
    with torch.no_grad():
        _, tl_cache = reference.run_with_cache(ids[None])
        heads = tl_cache.stack_head_results(layer=-1, pos_slice=-1)  # (L * H, 1, C)
        parts, part_labels = tl_cache.decompose_resid(pos_slice=-1, return_labels=True)
        tl_heads = tl_cache.logit_attrs(heads, tokens=target, incorrect_tokens=contrast,
                                        pos_slice=-1)[:, 0]
        tl_parts = tl_cache.logit_attrs(parts, tokens=target, incorrect_tokens=contrast,
                                        pos_slice=-1)[:, 0]
    result = direct_logit_attribution(model, ids, target, contrast)
    ours = dict(zip(result.labels, result.values))
    L, H = model.config.n_layer, model.config.n_head
    head_values = torch.stack([ours[f"blocks.{i}.attn.head{h}"] for i in range(L) for h in range(H)])
    torch.testing.assert_close(head_values, tl_heads, atol=ATOL, rtol=0)
    tl = dict(zip(part_labels, tl_parts))
    torch.testing.assert_close(ours["embed"], tl["embed"], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours["pos_embed"], tl["pos_embed"], atol=ATOL, rtol=0)
    for i in range(L):  # TransformerLens's attn_out is the heads plus c_proj's bias
        attn = sum(ours[f"blocks.{i}.attn.head{h}"] for h in range(H)) + ours[f"blocks.{i}.attn.bias"]
        torch.testing.assert_close(attn, tl[f"{i}_attn_out"], atol=ATOL, rtol=0)
        if model.config.mlp:
            torch.testing.assert_close(ours[f"blocks.{i}.mlp"], tl[f"{i}_mlp_out"], atol=ATOL, rtol=0)
    # folded, ln_f's bias is TransformerLens's unembedding bias
    b_U = reference.unembed.b_U
    bias = b_U[target] - (0 if contrast is None else b_U[contrast])
    torch.testing.assert_close(ours["ln_f.bias"], bias, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind, tl_name", [("previous_token", "previous_token_head"),
                                           ("duplicate_token", "duplicate_token_head"),
                                           ("induction", "induction_head")])
def test_head_scores_match_transformer_lens_head_detector(model, kind, tl_name):
    block = ids_for(model, T=6, seed=3)
    ids = torch.cat([block, block, block[:3]])  # repeats: duplicate and induction keys exist
    reference = tl_model(model)
    with torch.no_grad():
        _, tl_cache = reference.run_with_cache(ids[None], remove_batch_dim=True)
    detection = getattr(head_detector, f"get_{tl_name}_detection_pattern")(ids[None])
    torch.testing.assert_close(detection_patterns(ids)[kind], detection.float(), atol=0, rtol=0)
    expected = torch.tensor([[head_detector.compute_head_attention_similarity_score(
        tl_cache["pattern", i][h], detection_pattern=detection, exclude_bos=False,
        exclude_current_token=False, error_measure="mul")
        for h in range(model.config.n_head)] for i in range(model.config.n_layer)])
    scores = head_scores(model, ids)
    assert set(scores) == set(KINDS)
    torch.testing.assert_close(scores[kind], expected, atol=ATOL, rtol=0)
