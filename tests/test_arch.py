"""The GPTConfig options beyond GPT-2 (rope, rmsnorm, post-norm, attention-only, qk_norm,
relu2, swiglu, zero_init_proj, logit_softcap, untied head), each against a hand computation
or a reference implementation (Hugging Face Llama's rotary embedding and GPT-1,
``torch.nn.RMSNorm``), through the KV cache and the hook points; and the default config's
network, unchanged."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lm.hook_points import HookPoint
from lm.model import GPT, GPTConfig, ReLU2, RMSNorm, SwiGLU, apply_rope, mlp_hidden, rope_tables
from lm.sampling import beam_search, generate
from tests.conftest import arch_options

V = 37
SIZES = {"vocab_size": V, "block_size": 12, "n_layer": 2, "n_head": 2, "n_embd": 16}
OPTIONS = arch_options(logit_softcap=3.0)  # each option alone, then together
ALL = OPTIONS["all"]


def build(seed: int = 0, randomize: bool = True, **options) -> GPT:
    """A tiny GPT in eval mode; with ``randomize`` every weight ~ N(0, 0.5) (norm gains
    N(1, 0.3)), so greedy text does not repeat and soft-capping is active."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**SIZES, **options})).eval()
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                is_gain = ".ln_" in f".{name}" and name.endswith("weight")
                p.normal_(1.0, 0.3) if is_gain else p.normal_(0.0, 0.5)
    return model


def ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def hand_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim (Zhang & Sennrich 2019, eq. 4, no gain)."""
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)


def hand_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(Dh)) v, (B, H, T, Dh) each, one query row at a time."""
    T, Dh = q.shape[-2:]
    rows = []
    for t in range(T):
        w = torch.softmax(q[:, :, t : t + 1] @ k[:, :, : t + 1].transpose(-2, -1) / math.sqrt(Dh), -1)
        rows.append(w @ v[:, :, : t + 1])  # (B, H, 1, Dh)
    return torch.cat(rows, dim=2)  # (B, H, T, Dh)


# ---------------------------------------------------------------- rotary embedding


def test_rope_by_hand():
    """head_dim 4, position m = 3, base 10000: channel i pairs with i + 2 and turns by
    m * 10000^(-2i/4), i.e. by 3 and by 0.03 radians."""
    x = torch.tensor([0.5, -1.0, 2.0, 0.25])
    m, base = 3, 10000.0
    a0, a1 = m * 1.0, m * base ** (-2 / 4)
    expected = torch.tensor([
        0.5 * math.cos(a0) - 2.0 * math.sin(a0),
        -1.0 * math.cos(a1) - 0.25 * math.sin(a1),
        0.5 * math.sin(a0) + 2.0 * math.cos(a0),
        -1.0 * math.sin(a1) + 0.25 * math.cos(a1),
    ])
    cos, sin = rope_tables(m + 1, 4, base)  # (4, 2) each
    assert cos.shape == sin.shape == (m + 1, 2)
    got = apply_rope(x.view(1, 1, 1, 4), cos[m : m + 1], sin[m : m + 1]).view(4)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    got0 = apply_rope(x.view(1, 1, 1, 4), cos[:1], sin[:1]).view(4)  # position 0: no turn
    torch.testing.assert_close(got0, x)


def test_rope_dot_products_depend_on_the_offset_only():
    """RoFormer's property: <R_m q, R_n k> = <R_(m-n) q, k> (Su et al. 2021, eq. 16)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g,
                                                                        dtype=torch.float64)
    cos, sin = (t.double() for t in rope_tables(12, 8, 10000.0))

    def turn(x, m):
        return apply_rope(x.view(1, 1, 1, 8), cos[m : m + 1], sin[m : m + 1]).view(8)

    for m, n in [(5, 2), (11, 8), (3, 0)]:
        torch.testing.assert_close(turn(q, m) @ turn(k, n), turn(q, m - n) @ k, atol=1e-5, rtol=0)
    torch.testing.assert_close(turn(q, 7).norm(), q.norm())  # a rotation keeps lengths


@pytest.mark.parametrize("head_dim, base", [(8, 10000.0), (16, 500.0)])
def test_rope_equals_hugging_face_llama(head_dim, base):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    H, T = 3, 10
    hf_config = LlamaConfig(hidden_size=H * head_dim, num_attention_heads=H,
                            max_position_embeddings=T,
                            rope_parameters={"rope_type": "default", "rope_theta": base})
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, H, T, head_dim, generator=g), torch.randn(2, H, T, head_dim, generator=g)
    hf_cos, hf_sin = llama.LlamaRotaryEmbedding(hf_config)(q, torch.arange(T)[None])  # (1, T, Dh)
    hf_q, hf_k = llama.apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    cos, sin = rope_tables(T, head_dim, base)  # (T, Dh/2)
    torch.testing.assert_close(cos, hf_cos[0, :, : head_dim // 2])  # HF repeats the half
    torch.testing.assert_close(apply_rope(q, cos, sin), hf_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), hf_k, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- norms


@pytest.mark.parametrize("eps", [1e-5, 0.1])  # 0.1: eps matters for small x
@pytest.mark.parametrize("gain", [True, False])
def test_rmsnorm_equals_torch(eps, gain):
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(3, 5, 8, generator=g)
    ours = RMSNorm(8, eps, elementwise_affine=gain)
    reference = torch.nn.RMSNorm(8, eps=eps, elementwise_affine=gain)
    if gain:
        with torch.no_grad():
            ours.weight.normal_(1.0, 0.5, generator=g)
            reference.weight.copy_(ours.weight)
    else:
        assert ours.weight is None and not list(ours.parameters())
    torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=0)
    expected = hand_rms_norm(x, eps) * (ours.weight if gain else 1.0)
    torch.testing.assert_close(ours(x), expected, atol=1e-6, rtol=0)


def test_rmsnorm_model_uses_it_everywhere_without_biases():
    model = build(randomize=False, norm="rmsnorm")
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 2 * SIZES["n_layer"] + 1  # ln_1, ln_2 per block, ln_f
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert not [k for k in model.state_dict() if ".ln_" in f".{k}" and k.endswith("bias")]


@pytest.mark.parametrize("rope", [False, True])
def test_qk_norm_gives_unit_rms_heads_and_hand_attention(rope):
    """q and k leave QK-norm with RMS 1 over each head's Dh channels; the attention output
    (hook_z) is hand attention on hand-normalised (and, with rope, HF-rotated) q and k."""
    model = build(qk_norm=True, pos_encoding="rope" if rope else "learned")
    attn = model.transformer.h[0].attn
    eps = model.config.layer_norm_epsilon
    normed = []
    handle = attn.qk_norm.register_forward_hook(lambda m, args, out: normed.append(out))
    try:
        _, cache = model.run_with_cache(ids(2, 12), ["blocks.0.attn.hook_[qkvz]"])
    finally:
        handle.remove()
    q, k, v = (cache[f"blocks.0.attn.hook_{n}"] for n in "qkv")  # (B, H, T, Dh), before norm
    assert len(normed) == 2  # q, then k
    for out, raw in zip(normed, (q, k)):
        rms = out.pow(2).mean(dim=-1).sqrt()  # (B, H, T)
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)
        torch.testing.assert_close(out, hand_rms_norm(raw, eps), atol=1e-6, rtol=0)
    q, k = hand_rms_norm(q, eps), hand_rms_norm(k, eps)
    if rope:
        q, k = hf_rotate(q, k, model.config.rope_base)
    expected = hand_attention(q, k, v).transpose(1, 2)  # (B, T, H, Dh)
    torch.testing.assert_close(cache["blocks.0.attn.hook_z"], expected, atol=1e-5, rtol=0)


def hf_rotate(q: torch.Tensor, k: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, H, T, Dh) rotated by Hugging Face Llama's rotary code (positions 0..T-1)."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    H, T, Dh = q.shape[1:]
    config = LlamaConfig(hidden_size=H * Dh, num_attention_heads=H, max_position_embeddings=T,
                         rope_parameters={"rope_type": "default", "rope_theta": base})
    cos, sin = llama.LlamaRotaryEmbedding(config)(q, torch.arange(T)[None])  # (1, T, Dh)
    return llama.apply_rotary_pos_emb(q, k, cos, sin)


def test_rope_attention_equals_hand_attention_on_hf_rotated_q_k():
    model = build(pos_encoding="rope", rope_base=100.0)
    _, cache = model.run_with_cache(ids(2, 12), ["blocks.*.attn.hook_[qkvz]"])
    for i in range(SIZES["n_layer"]):
        q, k, v = (cache[f"blocks.{i}.attn.hook_{n}"] for n in "qkv")
        q, k = hf_rotate(q, k, 100.0)
        expected = hand_attention(q, k, v).transpose(1, 2)  # (B, T, H, Dh)
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_z"], expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- MLP activations


def test_relu2_and_swiglu_by_hand():
    x = torch.linspace(-4, 4, 41)
    torch.testing.assert_close(ReLU2()(x), torch.where(x > 0, x * x, torch.zeros_like(x)))
    a, b = torch.linspace(-4, 4, 12).view(3, 4), torch.linspace(3, -2, 12).view(3, 4)
    expected = a / (1 + torch.exp(-a)) * b  # x * sigmoid(x) * b
    torch.testing.assert_close(SwiGLU()(torch.cat([a, b], dim=-1)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("activation", ["relu2", "swiglu"])
def test_mlp_equals_hand_formula(activation):
    model = build(activation=activation, n_embd=48, n_head=2)
    mlp = model.transformer.h[0].mlp
    x = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(0))
    W, b = mlp.c_fc.weight, mlp.c_fc.bias  # (F or 2F, C)
    F_ = mlp.c_proj.weight.shape[1]
    if activation == "relu2":
        h = (x @ W.T + b).clamp(min=0) ** 2  # (B, T, F)
    else:
        gate = x @ W[:F_].T + b[:F_]  # (B, T, F)
        up = x @ W[F_:].T + b[F_:]  # (B, T, F)
        h = gate * torch.sigmoid(gate) * up
    expected = h @ mlp.c_proj.weight.T + mlp.c_proj.bias  # (B, T, C)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("n_embd, hidden", [(48, 128), (16, 42), (64, 170)])  # floor(8C / 3)
def test_swiglu_hidden_width_keeps_the_parameter_count(n_embd, hidden):
    config = GPTConfig(**{**SIZES, "n_embd": n_embd, "n_head": 2, "activation": "swiglu"})
    assert mlp_hidden(config) == hidden
    assert mlp_hidden(GPTConfig(**{**SIZES, "n_embd": n_embd, "n_head": 2})) == 4 * n_embd
    mlp = GPT(config).transformer.h[0].mlp
    assert mlp.c_fc.weight.shape == (2 * hidden, n_embd) and mlp.c_proj.weight.shape == (n_embd, hidden)
    weights = mlp.c_fc.weight.numel() + mlp.c_proj.weight.numel()  # 3 C F
    assert weights == 3 * n_embd * hidden
    assert abs(weights - 8 * n_embd**2) <= 8 * n_embd**2 * 0.02  # GELU's 2 C (4C), within 2%


# ---------------------------------------------------------------- logit soft-capping, init


def test_logit_softcap_is_cap_tanh_of_the_uncapped_logits():
    cap = 3.0
    capped = build(logit_softcap=cap)
    plain = build(randomize=False)
    plain.load_state_dict(capped.state_dict())  # the same weights, no cap
    idx, targets = ids(2, 12), ids(2, 12, seed=2)
    with torch.no_grad():
        z, _ = plain(idx)
        logits, loss = capped(idx, targets)
    assert z.abs().max() > 2 * cap  # the cap is active, not a near-identity
    torch.testing.assert_close(logits, cap * torch.tanh(z / cap), atol=1e-6, rtol=0)
    assert logits.abs().max() < cap
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)  # the loss is on capped logits
    expected = -log_probs.gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_zero_init_proj_zeroes_c_proj_and_leaves_every_other_weight():
    default = build(seed=5, randomize=False).state_dict()
    zero = build(seed=5, randomize=False, zero_init_proj=True).state_dict()
    assert default.keys() == zero.keys()
    projections = [k for k in zero if k.endswith("c_proj.weight")]
    assert len(projections) == 2 * SIZES["n_layer"]
    for key in zero:
        if key in projections:
            assert torch.count_nonzero(zero[key]) == 0 and torch.count_nonzero(default[key]) > 0
        else:
            assert torch.equal(zero[key], default[key]), key


def test_zero_init_proj_blocks_start_as_the_identity():
    model = build(randomize=False, zero_init_proj=True)
    _, cache = model.run_with_cache(ids(2, 12), ["blocks.*.hook_resid_*"])
    for i in range(SIZES["n_layer"]):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"],
                                   cache[f"blocks.{i}.hook_resid_pre"], atol=0, rtol=0)


# ---------------------------------------------------------------- post-norm blocks (GPT-1)


def hand_norm(x: torch.Tensor, norm: torch.nn.Module, kind: str, eps: float) -> torch.Tensor:
    """``norm``'s LayerNorm or RMSNorm of x (..., C), with ``F.layer_norm`` / ``F.rms_norm``."""
    if kind == "rmsnorm":
        return F.rms_norm(x, x.shape[-1:], norm.weight, eps)
    return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, eps)


def hand_attn_out(attn: torch.nn.Module, x: torch.Tensor, H: int) -> torch.Tensor:
    """A GPT-2 attention sublayer written out on x (B, T, C): qkv, H causal heads, c_proj."""
    B, T, C = x.shape
    qkv = x @ attn.c_attn.weight.T + attn.c_attn.bias  # (B, T, 3C)
    q, k, v = (a.view(B, T, H, C // H).transpose(1, 2) for a in qkv.split(C, -1))  # (B, H, T, Dh)
    z = hand_attention(q, k, v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
    return z @ attn.c_proj.weight.T + attn.c_proj.bias  # (B, T, C)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_post_norm_block_equals_hand_computation(norm):
    """GPT-1's block (Radford et al. 2018) written out on a 1-layer model's fixed weights:
    x = ln_1(x + attn(x)); x = ln_2(x + mlp(x)); no final norm, so logits = x wte^T."""
    model = build(n_layer=1, norm=norm, norm_position="post")
    blk, wte, eps = model.transformer.h[0], model.transformer.wte.weight, 1e-5
    idx = ids(2, 12)
    logits, cache = model.run_with_cache(idx, "blocks.0.hook_resid_*")
    with torch.no_grad():
        x = wte[idx] + model.transformer.wpe.weight[:12]  # (B, T, C)
        attn_out = hand_attn_out(blk.attn, x, H=2)  # (B, T, C), no norm first
        mid = hand_norm(x + attn_out, blk.ln_1, norm, eps)  # (B, T, C)
        hidden = F.gelu(mid @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias)  # (B, T, 4C)
        mlp_out = hidden @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias  # (B, T, C)
        out = hand_norm(mid + mlp_out, blk.ln_2, norm, eps)  # (B, T, C)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], x, atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["blocks.0.hook_resid_mid"], mid, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], out, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, out @ wte.T, atol=1e-4, rtol=0)


def test_post_norm_equals_hugging_face_gpt1():
    """Post-norm with learned positions, LayerNorm, tanh GELU, biases and a tied head is
    GPT-1: Hugging Face's ``OpenAIGPTLMHeadModel`` (afn="gelu" is the tanh form) with our
    weights, renamed and with Conv1D's (in, out) layout, gives our logits."""
    openai = pytest.importorskip("transformers.models.openai.modeling_openai")
    from transformers import OpenAIGPTConfig

    model = build(norm_position="post", activation="gelu_tanh")
    hf_config = OpenAIGPTConfig(vocab_size=V, n_positions=12, n_embd=16, n_layer=2, n_head=2,
                                afn="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                layer_norm_epsilon=1e-5)
    hf = openai.OpenAIGPTLMHeadModel(hf_config).eval()
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace(".wte.", ".tokens_embed.").replace(".wpe.", ".positions_embed.")
        conv1d = key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        state[key] = value.t() if conv1d else value
    hf.load_state_dict(state)  # strict: every GPT-1 weight and nothing else (no ln_f)
    idx = ids(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-5)


def test_post_norm_has_no_final_norm_and_its_hook_points_are_after_the_norms():
    """No ``ln_f``/``hook_final_norm``; in every block ``hook_resid_mid`` is ln_1 of
    resid_pre + attn_out and ``hook_resid_post`` ln_2 of resid_mid + mlp_out (the stream
    the next sublayer reads), and each block's ``hook_resid_post`` is the next block's
    ``hook_resid_pre`` and, for the last, what the head reads."""
    model = build(norm_position="post")
    assert "ln_f" not in model.named_layers() and "hook_final_norm" not in model.hook_dict
    assert list(model.state_dict()) == [k for k in GPT2_KEYS if ".ln_f." not in k]
    logits, cache = model.run_with_cache(ids(2, 12))
    eps = model.config.layer_norm_epsilon
    for i, blk in enumerate(model.transformer.h):
        hook = {name: cache[f"blocks.{i}.hook_{name}"]
                for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")}
        with torch.no_grad():
            mid = hand_norm(hook["resid_pre"] + hook["attn_out"], blk.ln_1, "layernorm", eps)
            post = hand_norm(hook["resid_mid"] + hook["mlp_out"], blk.ln_2, "layernorm", eps)
            torch.testing.assert_close(hook["resid_mid"], mid, atol=1e-5, rtol=0)
            torch.testing.assert_close(hook["resid_post"], post, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
    last = cache["blocks.1.hook_resid_post"]  # (B, T, C), straight into the head
    torch.testing.assert_close(logits, last @ model.lm_head.weight.T, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- attention-only blocks

ATTN_ONLY_HOOKS = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                   "attn.hook_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
                   "hook_resid_post"]  # TransformerLens's attn_only block


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_attn_only_blocks_have_no_mlp_ln_2_or_their_hook_points(norm_position):
    model = build(randomize=False, mlp=False, norm_position=norm_position)
    final = ["hook_final_norm"] if norm_position == "pre" else []
    assert list(model.hook_dict) == [
        "hook_embed", "hook_pos_embed",
        *[f"blocks.{i}.{name}" for i in range(SIZES["n_layer"]) for name in ATTN_ONLY_HOOKS],
        *final, "hook_logits"]
    names = list(model.named_layers())
    assert not [n for n in names if ".mlp" in n or ".ln_2" in n or "resid_mid" in n]
    for block in model.transformer.h:
        assert not block.has_mlp
        assert not any(hasattr(block, a) for a in ("mlp", "ln_2", "hook_resid_mid", "hook_mlp_out"))
    gpt2_keys = [k for k in GPT2_KEYS if ".ln_2." not in k and ".mlp." not in k]
    assert list(model.state_dict()) == [k for k in gpt2_keys
                                        if norm_position == "pre" or ".ln_f." not in k]


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_attn_only_block_equals_hand_computation(norm_position, norm):
    """An attention-only 1-layer model written out (Elhage et al. 2021): pre-norm
    x + attn(ln_1(x)) then ln_f; post-norm ln_1(x + attn(x)) and no final norm."""
    model = build(n_layer=1, mlp=False, norm=norm, norm_position=norm_position)
    blk, wte, eps = model.transformer.h[0], model.transformer.wte.weight, 1e-5
    idx = ids(2, 12)
    logits, cache = model.run_with_cache(idx, "blocks.0.hook_*")
    with torch.no_grad():
        x = wte[idx] + model.transformer.wpe.weight[:12]  # (B, T, C)
        attn_in = hand_norm(x, blk.ln_1, norm, eps) if norm_position == "pre" else x  # (B, T, C)
        attn_out = hand_attn_out(blk.attn, attn_in, H=2)  # (B, T, C)
        if norm_position == "pre":
            out = x + attn_out  # (B, T, C)
            final = hand_norm(out, model.transformer.ln_f, norm, eps)  # (B, T, C)
        else:
            out = final = hand_norm(x + attn_out, blk.ln_1, norm, eps)  # (B, T, C)
    assert list(cache) == [f"blocks.0.{name}" for name in
                           ("hook_resid_pre", "hook_attn_out", "hook_resid_post")]
    torch.testing.assert_close(cache["blocks.0.hook_attn_out"], attn_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], out, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, final @ wte.T, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- KV cache, every option


def cached_logits(model: GPT, idx: torch.Tensor, first: int) -> torch.Tensor:
    """Logits (B, T, V) of idx fed as a prompt of ``first`` tokens, then one token at a time."""
    cache = model.new_kv_cache()
    parts = [model(idx[:, :first], kv_cache=cache)[0]]
    for t in range(first, idx.size(1)):
        parts.append(model(idx[:, t : t + 1], kv_cache=cache)[0])
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_cached_decoding_equals_uncached(options):
    model = build(**options)
    idx = ids(2, 12)
    with torch.no_grad():
        full, _ = model(idx)
        torch.testing.assert_close(cached_logits(model, idx, 5), full, atol=1e-5, rtol=0)
        torch.testing.assert_close(cached_logits(model, idx, 1), full, atol=1e-5, rtol=0)
        with model.hooks([("blocks.*.attn.hook_pattern", lambda x, hook: None)]):  # explicit path
            torch.testing.assert_close(cached_logits(model, idx, 4), full, atol=1e-5, rtol=0)
    prompt = ids(2, 3)  # 3 + 14 > block_size 12: the window is cropped and the cache rebuilt
    cached = generate(model, prompt, 14, temperature=0, use_cache=True)
    plain = generate(model, prompt, 14, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)
    sampled = [generate(model, prompt, 14, generator=torch.Generator().manual_seed(5),
                        use_cache=c) for c in (True, False)]  # many different tokens
    assert torch.equal(sampled[0], sampled[1])
    beams = [beam_search(model, prompt, 6, beam_width=3, use_cache=c) for c in (True, False)]
    assert torch.equal(beams[0], beams[1])


# ---------------------------------------------------------------- hook points, every option


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_hook_points_on_every_option(options):
    model = build(**options)
    rope = model.config.pos_encoding == "rope"
    assert ("hook_pos_embed" in model.hook_dict) is not rope
    idx = ids(2, 12)
    with torch.no_grad():
        fused, _ = model(idx)
        logits, cache = model.run_with_cache(idx)  # every hook: the explicit attention path
    assert list(cache) == list(model.hook_dict)
    torch.testing.assert_close(logits, fused, atol=1e-5, rtol=0)
    block = model.transformer.h[0]
    C = model.config.n_embd
    attn_in = cache["blocks.0.hook_resid_pre"]  # (B, T, C); post-norm attends to it unnormalised
    if model.config.norm_position == "pre":
        attn_in = block.ln_1(attn_in)  # (B, T, C)
    with torch.no_grad():  # hook_q, hook_k: the projections, before QK-norm and rope
        qkv = block.attn.c_attn(attn_in)  # (B, T, 3C)
    q = qkv[..., :C].view(2, 12, 2, C // 2).transpose(1, 2)  # (B, H, T, Dh)
    k = qkv[..., C : 2 * C].view(2, 12, 2, C // 2).transpose(1, 2)
    torch.testing.assert_close(cache["blocks.0.attn.hook_q"], q, atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["blocks.0.attn.hook_k"], k, atol=1e-6, rtol=0)
    pattern = cache["blocks.1.attn.hook_pattern"]  # (B, H, T, T)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 12), atol=1e-5, rtol=0)
    if not model.config.mlp:  # attention-only: no MLP, so no hook point of one
        assert not [n for n in cache if "mlp" in n or "resid_mid" in n]
        return
    hidden = mlp_hidden(model.config)
    pre_width = 2 * hidden if model.config.activation == "swiglu" else hidden
    assert cache["blocks.0.mlp.hook_pre"].shape == (2, 12, pre_width)
    assert cache["blocks.0.mlp.hook_post"].shape == (2, 12, hidden)


@pytest.mark.parametrize("options", [{"pos_encoding": "rope"}, {"qk_norm": True}, ALL],
                         ids=["rope", "qk_norm", "all"])
def test_zeroing_hook_k_makes_attention_uniform(options):
    """hook_k is edited before QK-norm and rope, which both keep a zero key zero: every
    query then weighs its t + 1 visible positions equally."""
    model = build(**options)
    with model.hooks([("blocks.0.attn.hook_k", lambda k, hook: torch.zeros_like(k))]):
        _, cache = model.run_with_cache(ids(2, 12), "blocks.0.attn.hook_pattern")
    uniform = torch.tril(torch.ones(12, 12)) / torch.arange(1, 13)[:, None]  # (T, T)
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"],
                               uniform.expand(2, 2, 12, 12), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- defaults and validation

GPT2_KEYS = ["transformer.wte.weight", "transformer.wpe.weight",
             *[f"transformer.h.{i}.{name}" for i in range(2) for name in (
                 "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                 "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")],
             "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]
# sum of |parameter| of the default tiny model below for seed 3, computed with lm/model.py as
# it was before these options (commit 5fdc9f0): the default network and init are unchanged
PRE_OPTIONS_ABS_SUM = 188.25377672132345


def test_default_config_builds_the_gpt2_network_it_did_before():
    explicit = {"pos_encoding": "learned", "rope_base": 10000.0, "norm": "layernorm",
                "norm_position": "pre", "mlp": True, "qk_norm": False, "activation": "gelu",
                "zero_init_proj": False, "logit_softcap": None, "tie_weights": True, "bias": True}
    sizes = {"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
    assert GPTConfig(**sizes) == GPTConfig(**sizes, **explicit)
    torch.manual_seed(3)
    default = GPT(GPTConfig(**sizes))
    torch.manual_seed(3)
    spelled_out = GPT(GPTConfig(**sizes, **explicit))
    state, other = default.state_dict(), spelled_out.state_dict()
    assert list(state) == list(other) == GPT2_KEYS
    assert all(torch.equal(state[k], other[k]) for k in state)
    total = sum(v.double().abs().sum().item() for v in state.values())
    assert total == pytest.approx(PRE_OPTIONS_ABS_SUM, rel=1e-12)
    assert not [m for m in default.modules() if isinstance(m, (RMSNorm, ReLU2, SwiGLU))]
    assert all(block.attn.qk_norm is None for block in default.transformer.h)
    assert not hasattr(default, "rope_cos") and default.lm_head.weight is default.transformer.wte.weight


@pytest.mark.parametrize("overrides, fragment", [
    ({"pos_encoding": "rope", "n_embd": 18, "n_head": 2}, "needs an even head dim"),
    ({"norm": "batchnorm"}, "model.norm='batchnorm' must be one of ['layernorm', 'rmsnorm']"),
    ({"norm_position": "sandwich"}, "model.norm_position='sandwich' must be one of ['pre', 'post']"),
    ({"rope_base": 0.0}, "model.rope_base=0.0 must be > 0"),
    ({"logit_softcap": 0.0}, "model.logit_softcap=0.0 must be > 0 or null"),
    ({"logit_softcap": -1.0}, "model.logit_softcap=-1.0 must be > 0 or null"),
])
def test_bad_option_values_are_one_line(overrides, fragment):
    with pytest.raises(ValueError) as err:
        GPTConfig(**overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_named_layers_is_one_table_of_every_module_on_every_option(options):
    model = build(randomize=False, **options)
    table = model.named_layers()
    containers = {id(model), id(model.transformer), id(model.transformer.h)}
    assert sorted(map(id, table.values())) == sorted(
        id(m) for m in model.modules() if id(m) not in containers)
    assert all(point.name is not None for point in model.modules() if isinstance(point, HookPoint))
