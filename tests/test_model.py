"""GPT model: shapes, causality, attention paths against references, init, hooks, config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lm.hook_points import HookPoint
from lm.model import GPT, GPTConfig, sinusoidal_positions
from tests.conftest import V, tiny, tokens


def reference_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """Causal multi-head attention written out by hand from the module's weights."""
    B, T, C = x.shape
    H = attn.n_head
    Dh = C // H
    qkv = x @ attn.c_attn.weight.T + attn.c_attn.bias
    out = torch.zeros(B, T, C)
    for h in range(H):
        q = qkv[:, :, h * Dh : (h + 1) * Dh]
        k = qkv[:, :, C + h * Dh : C + (h + 1) * Dh]
        v = qkv[:, :, 2 * C + h * Dh : 2 * C + (h + 1) * Dh]
        for t in range(T):
            w = torch.softmax(q[:, t : t + 1] @ k[:, : t + 1].transpose(1, 2) / math.sqrt(Dh), -1)
            out[:, t, h * Dh : (h + 1) * Dh] = (w @ v[:, : t + 1])[:, 0]
    return out @ attn.c_proj.weight.T + attn.c_proj.bias


# ---------------------------------------------------------------- shapes, causality, loss


def test_forward_shapes_and_loss():
    model = tiny()
    idx = tokens()
    logits, loss = model(idx)
    assert logits.shape == (2, 12, V) and loss is None
    logits, loss = model(idx, targets=idx)
    assert loss.shape == ()
    expected = F.cross_entropy(logits.reshape(-1, V), idx.reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_loss_ignores_minus_100():
    model = tiny()
    idx = tokens()
    targets = idx.clone()
    targets[:, :6] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 6:].reshape(-1, V), idx[:, 6:].reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_causality(pos_encoding):
    model = tiny(pos_encoding=pos_encoding)
    idx = tokens(B=1, T=10)
    base, _ = model(idx)
    for t in (0, 4, 9):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % V
        out, _ = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-4)


def test_loss_at_init_is_near_uniform():
    # independent targets: with tied weights, predicting the input token itself is easier
    model = tiny()
    _, loss = model(tokens(B=8, T=16, seed=1), tokens(B=8, T=16, seed=2))
    assert abs(loss.item() - math.log(V)) < 0.2


def test_sequence_longer_than_block_size_raises():
    model = tiny(block_size=8)
    with pytest.raises(ValueError, match=r"T=9 .*block_size=8"):
        model(tokens(T=9))


# ---------------------------------------------------------------- attention paths


def test_fused_attention_equals_hand_reference():
    model = tiny()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(attn(x), reference_attention(attn, x), rtol=0, atol=1e-5)


def test_explicit_attention_equals_fused_and_reference():
    model = tiny()
    idx = tokens()
    fused, _ = model(idx)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    fused_attn = attn(x)
    seen = []
    handle = model.hook_dict["blocks.0.attn.hook_pattern"].register_forward_hook(
        lambda m, i, o: seen.append(o.shape)
    )
    try:
        explicit, _ = model(idx)
        explicit_attn = attn(x)
    finally:
        handle.remove()
    assert seen == [(2, 4, 12, 12), (2, 4, 7, 7)]  # the explicit path really ran
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-5)
    torch.testing.assert_close(explicit_attn, fused_attn, rtol=0, atol=1e-5)
    torch.testing.assert_close(explicit_attn, reference_attention(attn, x), rtol=0, atol=1e-5)


def test_pattern_hook_can_edit_attention():
    model = tiny()
    idx = tokens()
    base, _ = model(idx)

    def uniform(module, inputs, pattern):
        causal = torch.ones_like(pattern).tril()
        return causal / causal.sum(-1, keepdim=True)

    handle = model.hook_dict["blocks.1.attn.hook_pattern"].register_forward_hook(uniform)
    try:
        edited, _ = model(idx)
    finally:
        handle.remove()
    assert not torch.allclose(edited, base, atol=1e-4)
    torch.testing.assert_close(model(idx)[0], base)  # removed hook, back to fused


# ---------------------------------------------------------------- parameters and init


def test_weight_tying():
    tied = tiny(tie_weights=True)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = tiny(tie_weights=False)
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()
    extra = V * 32
    assert untied.num_params(non_embedding=False) == tied.num_params(non_embedding=False) + extra


def test_num_params_against_hand_count():
    C, L, T = 32, 2, 16
    per_block = (
        2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    )
    total = V * C + T * C + L * per_block + 2 * C
    model = tiny()
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - T * C
    sinusoidal = tiny(pos_encoding="sinusoidal")
    assert sinusoidal.num_params() == sinusoidal.num_params(non_embedding=False) == total - T * C


def test_attn_only_num_params_is_the_gpt_less_its_mlps_and_ln_2():
    C, L, T = 32, 2, 16
    ln_1, attn = 2 * C, (3 * C * C + 3 * C) + (C * C + C)
    ln_2, mlp = 2 * C, (4 * C * C + 4 * C) + (4 * C * C + C)  # c_fc (C -> 4C), c_proj (4C -> C)
    total = V * C + T * C + L * (ln_1 + attn) + 2 * C  # wte, wpe, blocks, ln_f
    model = tiny(mlp=False)
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - T * C
    assert total == tiny().num_params(non_embedding=False) - L * (ln_2 + mlp)


def test_gpt2_init():
    model = tiny(n_layer=4, n_embd=256, n_head=4, vocab_size=50)
    residual_std = 0.02 / math.sqrt(2 * 4)
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.03)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.03)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.03)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name


def test_bias_false_has_no_bias_parameters():
    names = [n for n, _ in tiny(bias=False).named_parameters()]
    assert names and not [n for n in names if n.endswith("bias")]
    assert [n for n, _ in tiny(bias=True).named_parameters() if n.endswith("bias")]


def test_gpt2_module_names():
    state = tiny().state_dict()
    for key in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.1.ln_2.bias",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_proj.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ]:
        assert key in state, key
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (3 * 32, 32)
    assert state["transformer.h.0.mlp.c_fc.weight"].shape == (4 * 32, 32)


def test_sinusoidal_table_matches_hand_computation():
    d = 10
    pe = sinusoidal_positions(8, d)
    for pos, i in [(0, 0), (1, 0), (3, 2), (7, 4)]:
        angle = pos / 10000 ** (2 * i / d)
        assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    model = tiny(pos_encoding="sinusoidal")
    assert "transformer.wpe.weight" not in model.state_dict()
    torch.testing.assert_close(model.sinusoidal_pe, sinusoidal_positions(16, 32))


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_position_embedding_is_added(pos_encoding):
    model = tiny(pos_encoding=pos_encoding)
    idx = tokens(B=2, T=5)
    table = model.transformer.wpe.weight if pos_encoding == "learned" else model.sinusoidal_pe
    seen = []
    hook = model.hook_dict["hook_pos_embed"]
    handle = hook.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    base, _ = model(idx)
    handle.remove()
    torch.testing.assert_close(seen[0], table[:5].expand(2, 5, 32))
    handle = hook.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    without, _ = model(idx)
    handle.remove()
    assert not torch.allclose(without, base, atol=1e-4)


def test_gelu_tanh_activation():
    x = torch.linspace(-3, 3, 11)
    model = tiny(activation="gelu_tanh")
    torch.testing.assert_close(model.transformer.h[0].mlp.act(x), F.gelu(x, approximate="tanh"))
    exact = tiny(activation="gelu").transformer.h[0].mlp.act(x)
    torch.testing.assert_close(exact, 0.5 * x * (1 + torch.erf(x / math.sqrt(2))))


# ---------------------------------------------------------------- dropout


def test_dropout_train_changes_outputs_eval_is_deterministic():
    model = tiny(dropout=0.2)
    idx = tokens()
    model.train()
    a, _ = model(idx)
    b, _ = model(idx)
    assert not torch.allclose(a, b)
    model.eval()
    c, _ = model(idx)
    d, _ = model(idx)
    torch.testing.assert_close(c, d, rtol=0, atol=0)


# ---------------------------------------------------------------- hook points


def expected_hook_names(n_layer: int, mlp: bool = True) -> list[str]:
    per_block = [
        "hook_resid_pre",
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_scores",
        "attn.hook_pattern",
        "attn.hook_z",
        "hook_attn_out",
        "hook_resid_mid",
        "mlp.hook_pre",
        "mlp.hook_post",
        "hook_mlp_out",
        "hook_resid_post",
    ]
    if not mlp:  # attention-only: TransformerLens's attn_only block
        per_block = [n for n in per_block if "mlp" not in n and n != "hook_resid_mid"]
    blocks = [f"blocks.{i}.{name}" for i in range(n_layer) for name in per_block]
    return ["hook_embed", "hook_pos_embed", *blocks, "hook_final_norm", "hook_logits"]


@pytest.mark.parametrize("mlp", [True, False])
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_hook_dict_names_and_modules(pos_encoding, mlp):
    model = tiny(pos_encoding=pos_encoding, mlp=mlp)
    assert list(model.hook_dict) == expected_hook_names(2, mlp)
    assert len(model.hook_dict) == 4 + 2 * (13 if mlp else 9)
    for name, hook in model.hook_dict.items():
        assert isinstance(hook, HookPoint) and hook.name == name
        path = name.replace("blocks.", "transformer.h.", 1)
        assert model.get_submodule(path) is hook


TOP_LEVEL = ("wte", "wpe", "drop", "ln_f")  # under transformer. as module paths (GPT-2's names)


def module_path(name: str) -> str:
    """A ``named_layers()`` name -> the module path (``blocks.0.attn`` -> ``transformer.h.0.attn``)."""
    if name.startswith("blocks."):
        return "transformer.h." + name.removeprefix("blocks.")
    return f"transformer.{name}" if name.split(".")[0] in TOP_LEVEL else name


@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_named_layers_is_one_table_of_every_module(pos_encoding, tie_weights):
    model = tiny(pos_encoding=pos_encoding, tie_weights=tie_weights)
    table = model.named_layers()
    containers = {id(model), id(model.transformer), id(model.transformer.h)}
    assert sorted(map(id, table.values())) == sorted(
        id(m) for m in model.modules() if id(m) not in containers)
    for name, module in table.items():
        assert model.get_submodule(module_path(name)) is module, name
    linears = [name for name, m in table.items() if isinstance(m, torch.nn.Linear)]
    per_block = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert linears == [f"blocks.{i}.{n}" for i in range(2) for n in per_block] + ["lm_head"]
    top = list(model.named_layers(recurse=False))
    wpe = ["wpe"] if pos_encoding == "learned" else []
    assert top == ["wte", "hook_embed", *wpe, "hook_pos_embed", "drop", "blocks.0", "blocks.1",
                   "ln_f", "hook_final_norm", "lm_head", "hook_logits"]
    assert not any(name.startswith(("h.", "transformer")) for name in table)


def test_named_layers_own_every_hook_point_and_carry_the_layer_index():
    model = tiny()
    table = model.named_layers()
    assert model.hook_dict == {n: m for n, m in table.items() if isinstance(m, HookPoint)}
    for name, point in model.hook_dict.items():
        owner, _, leaf = name.rpartition(".")
        assert getattr(table[owner] if owner else model, leaf) is point
    for i in range(2):
        block = table[f"blocks.{i}"]
        assert block is model.transformer.h[i] and block.layer == i
        points = [m for m in block.modules() if isinstance(m, HookPoint)]
        assert len(points) == 13 and all(p.layer == i for p in points)
    assert [model.hook_dict[n].layer for n in ("hook_embed", "hook_pos_embed",
            "hook_final_norm", "hook_logits")] == [None] * 4


def test_named_layers_lists_a_module_swapped_in_later():
    model = tiny()
    model.transformer.h[1].attn.c_attn = torch.nn.Identity()
    assert isinstance(model.named_layers()["blocks.1.attn.c_attn"], torch.nn.Identity)


def record_shapes(model: GPT, names: list[str]) -> tuple[dict, list]:
    shapes: dict[str, tuple] = {}

    def hook(module, inputs, output):
        shapes[module.name] = tuple(output.shape)

    return shapes, [model.hook_dict[n].register_forward_hook(hook) for n in names]


def test_hooks_fire_with_shapes():
    model = tiny()
    B, T, C, H, Dh = 2, 12, 32, 4, 8
    names = [n for n in model.hook_dict if not n.endswith(("hook_scores", "hook_pattern"))]
    scores_calls = []
    pre = model.hook_dict["blocks.0.attn.hook_scores"].register_forward_pre_hook(
        lambda m, i: scores_calls.append(1)
    )
    shapes, handles = record_shapes(model, names)
    model(tokens(B, T))
    assert set(shapes) == set(names)
    assert scores_calls == []  # fused path: the (T, T) scores are never formed
    for name, shape in shapes.items():
        if name.endswith(("hook_q", "hook_k", "hook_v")):
            assert shape == (B, H, T, Dh), name
        elif name.endswith("hook_z"):
            assert shape == (B, T, H, Dh), name
        elif name.endswith(("mlp.hook_pre", "mlp.hook_post")):
            assert shape == (B, T, 4 * C), name
        elif name == "hook_logits":
            assert shape == (B, T, V), name
        else:
            assert shape == (B, T, C), name
    for h in handles:
        h.remove()
    shapes, handles = record_shapes(
        model, ["blocks.0.attn.hook_scores", "blocks.1.attn.hook_pattern"]
    )
    model(tokens(B, T))
    assert shapes == {
        "blocks.0.attn.hook_scores": (B, H, T, T),
        "blocks.1.attn.hook_pattern": (B, H, T, T),
    }
    assert scores_calls == [1]
    for h in [*handles, pre]:
        h.remove()


def test_hook_point_is_identity_and_reports_hooks():
    hp = HookPoint()
    x = torch.randn(3, 4)
    assert hp(x) is x and not hp.has_hooks
    handle = hp.register_forward_hook(lambda m, i, o: o * 2)
    assert hp.has_hooks
    torch.testing.assert_close(hp(x), x * 2)
    handle.remove()
    assert not hp.has_hooks


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"n_embd": 100, "n_head": 3}, "model.n_embd=100 is not divisible by model.n_head=3"),
        ({"dropout": 1.5}, "model.dropout=1.5 must be in [0, 1]"),
        ({"dropout": -0.1}, "model.dropout=-0.1 must be in [0, 1]"),
        ({"n_layer": 0}, "model.n_layer=0 must be >= 1"),
        ({"n_head": 0}, "model.n_head=0 must be >= 1"),
        ({"n_embd": -4}, "model.n_embd=-4 must be >= 1"),
        ({"block_size": 0}, "model.block_size=0 must be >= 1"),
        ({"vocab_size": 0}, "model.vocab_size=0 must be >= 1"),
        (
            {"pos_encoding": "alibi"},
            "model.pos_encoding='alibi' must be one of ['learned', 'sinusoidal', 'rope']",
        ),
        ({"activation": "relu"}, "model.activation='relu' must be one of ['gelu', 'gelu_tanh', 'relu2', 'swiglu']"),
        ({"layer_norm_epsilon": 0.0}, "model.layer_norm_epsilon=0.0 must be > 0"),
    ],
)
def test_config_validation(overrides, fragment):
    with pytest.raises(ValueError) as err:
        GPTConfig(**overrides)
    message = str(err.value)
    assert fragment in message and "\n" not in message


def test_config_defaults_and_head_dim():
    cfg = GPTConfig()
    assert cfg.vocab_size is None and cfg.head_dim == 128 // 4
    with pytest.raises(ValueError, match="model.vocab_size=None"):
        GPT(cfg)
