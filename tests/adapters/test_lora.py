"""LoRA (lm/adapters/lora.py) against peft's lora.Linear, torch autograd and hand
computations: the same logits and gradients as peft, merge == unmerged, only the
adapters train, hook points see the adapted layers, one-line errors, adapter dropout."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lm.adapters.lora import (
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    count_params,
    linear_layers,
    lora_layers,
    match_layers,
    merge_lora,
    replace_layer,
)
from lm.model import GPT
from tests.conftest import arch_options, tiny, tokens

BLOCK_LINEARS = ["blocks.*.attn.c_attn", "blocks.*.attn.c_proj",
                 "blocks.*.mlp.c_fc", "blocks.*.mlp.c_proj"]
ARCHS = {"default": {}, "all": arch_options(logit_softcap=30.0)["all"]}


def randomize_B(model: nn.Module, std: float = 0.1, seed: int = 5) -> None:
    """Give every lora_B random values (they start at zero, which would hide the update)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


def adapted(targets=BLOCK_LINEARS, r=4, alpha=8.0, **arch) -> GPT:
    """tiny(**arch) with LoRA on ``targets`` and random non-zero B."""
    model = tiny(**arch)
    apply_lora(model, targets, r=r, alpha=alpha)
    randomize_B(model)
    return model


class FakeNF4(nn.Module):
    """A frozen Linear-like layer with its weight in buffers and ``dequantize()``, as
    ``NF4Linear`` (here float16 storage: no parameters, no children)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("codes", linear.weight.detach().half())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def dequantize(self) -> torch.Tensor:
        return self.codes.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(), self.bias)


# 1. peft parity ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def peft():
    return pytest.importorskip("peft")


def with_peft(peft, model: GPT, r=4, alpha=8.0) -> GPT:
    """A deep copy of the unadapted ``model`` with peft's LoRA on the four block Linears."""
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                             target_modules=["c_attn", "c_proj", "c_fc"])
    return peft.inject_adapter_in_model(config, copy.deepcopy(model))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_and_gradients_match_peft(peft, arch):
    ours = tiny(**ARCHS[arch])
    ref = with_peft(peft, ours)
    apply_lora(ours, BLOCK_LINEARS, r=4, alpha=8.0)
    randomize_B(ours)
    paths = {p: m for p, m in ours.named_modules() if isinstance(m, LoRALinear)}
    assert len(paths) == 4 * 2
    with torch.no_grad():
        for path, layer in paths.items():
            ref.get_submodule(path).lora_A["default"].weight.copy_(layer.lora_A)
            ref.get_submodule(path).lora_B["default"].weight.copy_(layer.lora_B)
    idx, targets = tokens(seed=1), tokens(seed=2)
    logits, loss = ours(idx, targets)
    ref_logits, ref_loss = ref(idx, targets)
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=0)
    loss.backward()
    ref_loss.backward()
    for path, layer in paths.items():
        peft_layer = ref.get_submodule(path)
        torch.testing.assert_close(layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad,
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad,
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.delta_weight(), peft_layer.get_delta_weight("default"))


def test_init_matches_peft_and_starts_at_the_base_model(peft):
    base = tiny()
    idx = tokens()
    ref = with_peft(peft, base)
    model = copy.deepcopy(base)
    apply_lora(model, BLOCK_LINEARS, r=4, alpha=8.0)
    torch.testing.assert_close(model(idx)[0], base(idx)[0], atol=0, rtol=0)  # B = 0
    for path, layer in ((p, m) for p, m in model.named_modules() if isinstance(m, LoRALinear)):
        # Kaiming uniform with a = sqrt(5): gain sqrt(2 / (1 + 5)), bound sqrt(3) gain / sqrt(fan_in)
        bound = math.sqrt(3) * math.sqrt(2 / 6) / math.sqrt(layer.in_features)
        peft_A = ref.get_submodule(path).lora_A["default"].weight
        for A in (layer.lora_A, peft_A):
            assert A.abs().max() <= bound and A.abs().max() > 0.9 * bound
        assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))
        assert layer.scaling == 8.0 / 4
    # the same distribution as peft's on a larger layer: compare the sorted draws
    linear = nn.Linear(256, 64)
    ours_A = LoRALinear(linear, r=64, alpha=1.0).lora_A.detach()
    peft_A = with_peft_linear(peft, linear).lora_A["default"].weight.detach()
    torch.testing.assert_close(ours_A.flatten().sort().values, peft_A.flatten().sort().values,
                               atol=0.1 / math.sqrt(256), rtol=0)


def with_peft_linear(peft, linear: nn.Linear) -> nn.Module:
    """peft's lora.Linear (r=64) around a copy of ``linear``."""
    holder = nn.Module()
    holder.c_fc = copy.deepcopy(linear)
    config = peft.LoraConfig(r=64, lora_alpha=1.0, target_modules=["c_fc"])
    return peft.inject_adapter_in_model(config, holder).c_fc


# 2. merging -------------------------------------------------------------------------

def test_merge_unmerge_round_trip():
    model = adapted()
    idx = tokens()
    expected = model(idx)[0]
    layers = list(lora_layers(model).values())
    before = [layer.base.weight.detach().clone() for layer in layers]
    for layer in layers:
        layer.merge()
        layer.merge()  # a no-op when merged
    assert all(layer.merged for layer in layers)
    torch.testing.assert_close(model(idx)[0], expected, atol=1e-6, rtol=0)
    for layer, w in zip(layers, before):
        torch.testing.assert_close(layer.base.weight, w + layer.delta_weight(), atol=1e-7, rtol=0)
        layer.unmerge()
        layer.unmerge()  # a no-op when not merged
        torch.testing.assert_close(layer.base.weight, w, atol=1e-7, rtol=0)
    torch.testing.assert_close(model(idx)[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("pre_merged", [False, True])
def test_merge_lora_gives_a_plain_gpt(arch, pre_merged):
    model = adapted(**ARCHS[arch])
    idx = tokens()
    expected = model(idx)[0]
    if pre_merged:  # merged_linear must not add the update twice
        for layer in lora_layers(model).values():
            layer.merge()
    sd = merge_lora(model).state_dict()
    fresh = GPT(model.config).eval()
    assert sorted(sd) == sorted(fresh.state_dict())
    fresh.load_state_dict(sd)
    assert not lora_layers(model)
    torch.testing.assert_close(fresh(idx)[0], expected, atol=1e-6, rtol=0)


def test_nf4_like_base_merges_only_through_merged_linear():
    model = tiny()
    for name in match_layers(model, ["blocks.*"]):
        replace_layer(model, name, FakeNF4(linear_layers(model)[name]))
    assert isinstance(linear_layers(model)["blocks.0.mlp.c_fc"], FakeNF4)
    assert apply_lora(model, ["blocks.*.mlp.c_fc"], r=2, alpha=4.0) == [
        "blocks.0.mlp.c_fc", "blocks.1.mlp.c_fc"]
    randomize_B(model)
    layer = linear_layers(model)["blocks.0.mlp.c_fc"]
    with pytest.raises(TypeError, match="merged_linear") as err:
        layer.merge()
    assert "\n" not in str(err.value)
    x = torch.randn(3, 32)
    hand = x @ layer.base.dequantize().T + layer.base.bias \
        + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T  # alpha / r = 4 / 2
    torch.testing.assert_close(layer(x), hand, atol=1e-6, rtol=0)
    merged = layer.merged_linear()
    assert isinstance(merged, nn.Linear) and merged.weight.dtype == torch.float32
    torch.testing.assert_close(merged(x), hand, atol=1e-6, rtol=0)
    idx = tokens()
    expected = model(idx)[0]
    merge_lora(model)
    torch.testing.assert_close(model(idx)[0], expected, atol=1e-6, rtol=0)


# 3. what trains ---------------------------------------------------------------------

def test_only_adapters_train_and_count_params():
    base_total = sum(p.numel() for p in tiny().parameters())
    model = tiny()
    names = apply_lora(model, ["blocks.*.attn.*"], r=4, alpha=8.0)
    assert names == ["blocks.0.attn.c_attn", "blocks.0.attn.c_proj",
                     "blocks.1.attn.c_attn", "blocks.1.attn.c_proj"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"transformer.h.{i}.attn.{m}.{t}" for i in range(2)
                         for m in ("c_attn", "c_proj") for t in ("lora_A", "lora_B")}
    assert set(adapter_state_dict(model)) == trainable
    per_block = 4 * (32 + 96) + 4 * (32 + 32)  # r (in + out): c_attn 32 -> 96, c_proj 32 -> 32
    assert count_params(model) == (2 * per_block, base_total + 2 * per_block)
    sd = adapter_state_dict(model)
    a = sd["transformer.h.0.attn.c_attn.lora_A"]
    assert a.shape == (4, 32) and not a.requires_grad
    assert a.data_ptr() != model.transformer.h[0].attn.c_attn.lora_A.data_ptr()


def test_count_params_counts_a_4bit_base_by_its_logical_size():
    float_total = sum(p.numel() for p in tiny().parameters())
    model = tiny()
    for name in match_layers(model, ["blocks.*"]):
        replace_layer(model, name, FakeNF4(linear_layers(model)[name]))
    apply_lora(model, ["blocks.0.mlp.c_fc"], r=2, alpha=4.0)
    adapter = 2 * (32 + 128)
    assert count_params(model) == (adapter, float_total + adapter)


# 4. hook points see the adapted layers ---------------------------------------------

def test_hooks_see_the_adapted_c_attn():
    model = adapted(targets=["blocks.0.attn.c_attn"])
    assert isinstance(model.named_layers()["blocks.0.attn.c_attn"], LoRALinear)
    assert "blocks.0.attn.c_attn.base" not in linear_layers(model)
    idx = tokens()
    _, cache = model.run_with_cache(idx, ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_q"])
    _, base_cache = tiny().run_with_cache(idx, "blocks.0.attn.hook_q")
    q = cache["blocks.0.attn.hook_q"]  # (B, H, T, Dh)
    assert not torch.allclose(q, base_cache["blocks.0.attn.hook_q"], atol=1e-4)
    layer = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        h = model.transformer.h[0].ln_1(cache["blocks.0.hook_resid_pre"])  # (B, T, C)
        out = h @ layer.base.weight.T + layer.base.bias \
            + (8.0 / 4) * (h @ layer.lora_A.T) @ layer.lora_B.T  # (B, T, 3C)
    B, T, C = h.shape
    hand_q = out[..., :C].view(B, T, 4, C // 4).transpose(1, 2)  # (B, H, T, Dh)
    torch.testing.assert_close(q, hand_q, atol=1e-6, rtol=0)


# 5. one-line errors -----------------------------------------------------------------

def one_line_error(exc, fn, *args, **kwargs) -> str:
    with pytest.raises(exc) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_match_layers_errors():
    model = tiny()
    msg = one_line_error(ValueError, match_layers, model, ["blocks.0.attn.c_attn",
                                                           "blocks.*.attn.q"])
    assert msg.startswith("adapter.targets: 'blocks.*.attn.q' matches no Linear layer")
    assert "blocks.0.attn.c_attn, blocks.0.attn.c_proj, blocks.0.mlp.c_fc, ..." in msg
    assert "adapter.quantize=[]" in one_line_error(ValueError, match_layers, model, [],
                                                   key="adapter.quantize")
    assert match_layers(model, ["lm_head", "blocks.1.mlp.*"]) == [
        "blocks.1.mlp.c_fc", "blocks.1.mlp.c_proj", "lm_head"]


def test_attention_only_model_adapts_what_it_has_and_names_a_missing_mlp():
    """No block has an MLP: a glob that finds attention layers works (``blocks.*.c_proj``
    finds attn.c_proj alone), one that finds no layer at all is one line."""
    model = tiny(mlp=False)
    msg = one_line_error(ValueError, match_layers, model, BLOCK_LINEARS)
    assert msg.startswith("adapter.targets: 'blocks.*.mlp.c_fc' matches no Linear layer")
    assert "blocks.0.attn.c_attn, blocks.0.attn.c_proj, blocks.1.attn.c_attn, ..." in msg
    assert apply_lora(model, ["blocks.*.c_proj", "blocks.0.attn.c_attn"], r=4, alpha=8.0) == [
        "blocks.0.attn.c_attn", "blocks.0.attn.c_proj", "blocks.1.attn.c_proj"]
    randomize_B(model)
    idx = tokens()
    expected = model(idx)[0]
    fresh = GPT(model.config).eval()
    fresh.load_state_dict(merge_lora(model).state_dict())
    torch.testing.assert_close(fresh(idx)[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("key, kwargs", [
    ("adapter.r=0", {"r": 0}), ("adapter.r=2.0", {"r": 2.0}),
    ("adapter.alpha=0", {"alpha": 0}), ("adapter.alpha=-1", {"alpha": -1.0}),
    ("adapter.dropout=1", {"dropout": 1}), ("adapter.dropout=-0.1", {"dropout": -0.1}),
])
def test_bad_settings(key, kwargs):
    settings = {"r": 4, "alpha": 8.0, "dropout": 0.0, **kwargs}
    assert key in one_line_error(ValueError, LoRALinear, nn.Linear(4, 4), **settings)
    model = tiny()
    assert key in one_line_error(ValueError, apply_lora, model, ["blocks.*"], **settings)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_apply_lora_refuses_tied_and_adapted_targets():
    assert "tie_weights" in one_line_error(ValueError, apply_lora, tiny(), ["lm_head"], 4, 8.0)
    untied = tiny(tie_weights=False)
    assert apply_lora(untied, ["lm_head"], 4, 8.0) == ["lm_head"]
    msg = one_line_error(ValueError, apply_lora, untied, ["lm_head"], 4, 8.0)
    assert "lm_head already have a LoRA adapter" in msg


# 6. adapter dropout -----------------------------------------------------------------

def test_dropout_acts_on_the_adapter_input_in_training_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=4.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 8)
    A, B = layer.lora_A.detach(), layer.lora_B.detach()

    def hand(x_in):
        return layer.base(x) + 2.0 * x_in @ A.T @ B.T  # alpha / r = 2

    layer.train()
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(layer(x))
        torch.manual_seed(seed)  # the same mask, drawn by the reference
        torch.testing.assert_close(outs[-1], hand(F.dropout(x, 0.5, training=True)))
    assert not torch.allclose(outs[0], outs[1])
    layer.eval()
    torch.testing.assert_close(layer(x), hand(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), layer(x), atol=0, rtol=0)
