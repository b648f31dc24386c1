"""Hook points and experiment hooks: each built-in hook against a reference, the
hooked attention path against the fused one, removal, config rules, a tiny run."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
import warnings
from types import SimpleNamespace

import lightning as L
import matplotlib.text
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from tbparse import SummaryReader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lm.model
from lm.config.compose import compose_config
from lm.config.validate import validate
from lm.errors import ConfigError
from lm.hook_points import HookPoint
from lm.hooks import (
    ActL2,
    AttentionImages,
    AttnEntropy,
    AttnTemperature,
    ForwardHook,
    GradClipCustom,
    GradNoise,
    GradScale,
    HeadAblation,
    ResidNoise,
    ScaleGradFunction,
    SignUpdate,
    StraightThroughClampFunction,
    ZLoss,
    build_hooks,
    clip_groups,
)
from lm.model import GPT, GPTConfig
from lm.training.hashing import config_hash
from lm.training.module import LMModule
from lm.training.run import run
from tests.conftest import ROOT, V, tiny, tokens


def attached(model: GPT, hook) -> list:
    """Attach a hook as LMModule does (check, then attach); return the handles."""
    hook.check(model)
    return hook.attach(model)


def no_hooks_left(model: GPT) -> bool:
    return not any(point.has_hooks for point in model.hook_dict.values())


def grads_of(model: GPT, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(idx, idx)[1].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------- hook points


def test_glob_matching_in_data_order():
    model = tiny()
    assert model.hook_names("blocks.*.hook_resid_post") == [
        "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert model.hook_names("*hook_z") == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert model.hook_names(["hook_logits", "hook_embed"]) == ["hook_embed", "hook_logits"]
    assert model.hook_names("blocks.1.attn.hook_[qk]") == ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"]
    assert len(model.hook_names("*")) == len(model.hook_dict) == 4 + 2 * 13


def test_pattern_matching_nothing_names_the_closest():
    with pytest.raises(ValueError) as err:
        tiny().hook_names("blocks.*.hook_resid_psot")
    message = str(err.value)
    assert "\n" not in message and "'blocks.*.hook_resid_psot'" in message
    assert "closest: blocks.1.hook_resid_post, blocks.0.hook_resid_post" in message


def test_hooks_run_in_order_and_are_removed_on_exit():
    model = tiny()
    idx = tokens()
    base, _ = model(idx)
    seen = []
    with model.hooks([("hook_logits", lambda x, hook: x + 1), ("hook_logits", lambda x, hook: x * 2),
                      ("blocks.*.hook_resid_post", lambda x, hook: seen.append(hook.name))]):
        out, _ = model(idx)
    torch.testing.assert_close(out, (base + 1) * 2)
    assert seen == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert no_hooks_left(model)
    torch.testing.assert_close(model(idx)[0], base)


def test_hooks_are_removed_on_an_exception():
    model = tiny()

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), model.hooks([("blocks.*.attn.hook_pattern", boom)]):
        model(tokens())
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="nosuch"), model.hooks([("hook_embed", print), ("nosuch", print)]):
        pass
    assert no_hooks_left(model)  # a bad pattern attaches nothing


def test_run_with_cache_shapes():
    model = tiny()
    logits, cache = model.run_with_cache(tokens(B=2, T=12))
    B, T, C, H, Dh = 2, 12, 32, 4, 8
    assert list(cache) == list(model.hook_dict)
    assert logits.shape == cache["hook_logits"].shape == (B, T, V)
    for name in ("hook_embed", "hook_pos_embed", "blocks.1.hook_resid_pre", "blocks.0.hook_attn_out",
                 "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_post",
                 "hook_final_norm"):
        assert cache[name].shape == (B, T, C), name
    for name in ("hook_q", "hook_k", "hook_v"):
        assert cache[f"blocks.0.attn.{name}"].shape == (B, H, T, Dh)
    assert cache["blocks.1.attn.hook_scores"].shape == cache["blocks.1.attn.hook_pattern"].shape == (B, H, T, T)
    assert cache["blocks.0.attn.hook_z"].shape == (B, T, H, Dh)
    assert cache["blocks.0.mlp.hook_pre"].shape == cache["blocks.0.mlp.hook_post"].shape == (B, T, 4 * C)
    _, only = model.run_with_cache(tokens(), "blocks.0.attn.hook_*")
    assert list(only) == [f"blocks.0.attn.hook_{n}" for n in ("q", "k", "v", "scores", "pattern", "z")]
    assert no_hooks_left(model)


def test_attention_path_fused_unless_scores_or_pattern_hooked(monkeypatch):
    model = tiny()
    idx = tokens()
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(lm.model.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with model.hooks([("*hook_[qkvz]", lambda x, hook: None), ("*resid*", lambda x, hook: None)]):
        fused, _ = model(idx)
    assert len(calls) == 2  # both layers fused, hooks elsewhere notwithstanding
    calls.clear()
    with model.hooks([("blocks.0.attn.hook_scores", lambda x, hook: None)]):
        explicit, _ = model(idx)
    assert len(calls) == 1  # layer 0 explicit, layer 1 still fused
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-5)
    calls.clear()
    with model.hooks([("blocks.*.attn.hook_pattern", lambda x, hook: None)]):
        explicit, _ = model(idx)
    assert calls == []
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- update hooks


def set_random_grads(model: GPT, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(5)
    for i, p in enumerate(model.parameters()):
        p.grad = torch.randn(p.shape, generator=gen) * scale * (i + 1) / 10


def test_clip_groups_are_blocks_embeddings_and_final_norm():
    assert list(clip_groups(tiny())) == ["wte", "wpe", "blocks.0", "blocks.1", "ln_f"]
    assert list(clip_groups(tiny(tie_weights=False))) == [
        "wte", "wpe", "blocks.0", "blocks.1", "ln_f", "lm_head"]
    assert list(clip_groups(tiny(pos_encoding="sinusoidal"))) == ["wte", "blocks.0", "blocks.1", "ln_f"]
    groups = clip_groups(tiny())
    model = tiny()
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    assert [p.shape for p in groups["blocks.1"]] == [p.shape for p in model.transformer.h[1].parameters()]


@pytest.mark.parametrize("tie_weights", [True, False])
def test_clip_groups_keep_the_parameters_and_order_of_module_paths(tie_weights):
    """The same groups, parameter for parameter, as grouping ``named_parameters`` by
    module path (``transformer.h.{i}`` -> ``blocks.{i}``): the rename changes no number."""
    model = tiny(tie_weights=tie_weights)
    by_path: dict[str, list] = {}
    for name, p in model.named_parameters():
        parts = name.removeprefix("transformer.").split(".")
        key = f"blocks.{parts[1]}" if parts[0] == "h" else parts[0]
        by_path.setdefault(key, []).append(p)
    groups = clip_groups(model)
    assert list(groups) == list(by_path)
    for name in groups:
        assert [id(p) for p in groups[name]] == [id(p) for p in by_path[name]], name


def test_grad_clip_custom_equals_clip_grad_norm_per_group():
    model, reference = tiny(), tiny()
    set_random_grads(model)
    set_random_grads(reference)
    norms = {name: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps]))
             for name, ps in clip_groups(reference).items()}
    ordered = sorted(float(n) for n in norms.values())
    max_norm = (ordered[1] + ordered[2]) / 2  # two groups below, three clipped
    for params in clip_groups(reference).values():
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    hook = GradClipCustom(max_norm=max_norm)
    hook.logging = True
    hook.update(model, step=0)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert {k for k in hook.metrics if k.startswith("norm/")} == {
        "norm/wte", "norm/wpe", "norm/blocks.0", "norm/blocks.1", "norm/ln_f"}
    for name, norm in norms.items():
        torch.testing.assert_close(hook.metrics[f"norm/{name}"], norm)
    clipped = sum(float(n) > max_norm for n in norms.values()) / len(norms)
    assert clipped == 0.6 and float(hook.metrics["clipped_fraction"]) == pytest.approx(clipped)


def test_grad_noise_variance_seed_and_step():
    hook = GradNoise(eta=0.3, gamma=0.55, seed=7)
    assert hook.std(9) == pytest.approx(math.sqrt(0.3 / 10**0.55))  # hand computation
    model = tiny(vocab_size=4096)  # wte alone: 4096 x 32 = 131072 noise samples

    def noise(hook: GradNoise, step: int) -> torch.Tensor:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        hook.update(model, step)
        return model.transformer.wte.weight.grad.clone()

    first = noise(hook, 9)
    assert first.std().item() == pytest.approx(hook.std(9), rel=0.02)
    assert first.mean().abs().item() < 3 * hook.std(9) / math.sqrt(first.numel())
    assert noise(hook, 99).std().item() == pytest.approx(hook.std(99), rel=0.02)
    torch.testing.assert_close(noise(GradNoise(eta=0.3, gamma=0.55, seed=7), 9), first, rtol=0, atol=0)
    assert not torch.allclose(noise(GradNoise(eta=0.3, gamma=0.55, seed=8), 9), first)
    assert not torch.allclose(noise(hook, 10) / hook.std(10), first / hook.std(9))


def test_sign_update_is_sign_sgd():
    model = tiny()
    set_random_grads(model)
    model.transformer.ln_f.bias.grad.zero_()
    expected = [torch.sign(p.grad) for p in model.parameters()]
    hook = SignUpdate()
    hook.logging = True
    mean_abs = torch.cat([p.grad.abs().flatten() for p in model.parameters()]).mean()
    hook.update(model, 0)
    for p, e in zip(model.parameters(), expected):
        assert torch.equal(p.grad, e)
    assert torch.equal(model.transformer.ln_f.bias.grad, torch.zeros(32))
    torch.testing.assert_close(hook.metrics["mean_abs_grad"], mean_abs)


def test_update_hooks_apply_in_the_order_given():
    def updated(order: str) -> list[torch.Tensor]:
        cfg = compose_config(["model=tiny", f"hooks={order}", "hooks.grad_clip_custom.max_norm=0.5",
                              "paths.output_dir=x"])
        model = tiny()
        set_random_grads(model)
        for hook in build_hooks(cfg):
            hook.update(model, 0)
        return [p.grad for p in model.parameters()]

    sign_then_clip = updated("[sign_update,grad_clip_custom]")
    clip_then_sign = updated("[grad_clip_custom,sign_update]")
    # clip then sign: every entry +-1; sign then clip: each group's +-1 scaled to norm 0.5
    names = [name for name, _ in tiny().named_parameters()]
    i = names.index("transformer.h.0.ln_1.weight")
    n = sum(p.numel() for p in clip_groups(tiny())["blocks.0"])
    assert clip_then_sign[i].abs().unique().tolist() == [1.0]
    torch.testing.assert_close(sign_then_clip[i].abs().unique(), torch.tensor([0.5 / math.sqrt(n)]))


# ---------------------------------------------------------------- forward hooks


def test_head_ablation_equals_zeroing_c_proj_columns():
    model, reference = tiny(), tiny()
    Dh = 8
    heads = [[0, 1], [1, 0], [1, 3]]
    with torch.no_grad():
        for layer, head in heads:
            reference.transformer.h[layer].attn.c_proj.weight[:, head * Dh:(head + 1) * Dh] = 0
    idx = tokens()
    handles = attached(model, HeadAblation(heads))
    try:
        ablated, _ = model(idx)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ablated, reference(idx)[0], rtol=0, atol=1e-6)
    assert not torch.allclose(ablated, model(idx)[0], atol=1e-4)
    with pytest.raises(ValueError, match="head 4 of layer 1 is out of range"):
        HeadAblation([[1, 4]]).check(model)
    with pytest.raises(ValueError, match="blocks.2.attn.hook_z"):
        HeadAblation([[2, 0]]).check(model)


def test_head_ablation_takes_the_layer_from_the_hook_point_not_its_name():
    point = HookPoint()
    point.name, point.layer = "renamed", 1  # the index is data, never parsed from the name
    z = torch.ones(1, 2, 4, 3)  # (B, T, H, Dh)
    out = HeadAblation([[0, 0], [1, 2]]).forward(z, point)
    assert out[0, 0, :, 0].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_resid_noise_in_training_only():
    model = tiny()
    hook = ResidNoise(std=0.3)
    point = model.hook_dict["blocks.0.hook_resid_post"]
    x = torch.randn(2, 5, 32)
    assert hook.forward(x, point) is None  # eval
    point.train()
    torch.manual_seed(3)
    noisy = hook.forward(x, point)
    torch.manual_seed(3)
    torch.testing.assert_close(noisy, x + 0.3 * torch.randn_like(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="std=-1"):
        ResidNoise(std=-1)


def test_attn_temperature_equals_sdpa_with_scaled_softmax():
    model = tiny()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    B, T, C, H, Dh, temp = 2, 7, 32, 4, 8, 2.5
    q, k, v = (t.view(B, T, H, Dh).transpose(1, 2) for t in attn.c_attn(x).split(C, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / (math.sqrt(Dh) * temp))
    expected = attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
    handles = attached(model, AttnTemperature(temperature=temp, pattern="blocks.0.attn.hook_scores"))
    try:
        out = attn(x)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- attention images


def attention_figure(hook: AttentionImages, labels: list[str] | None):
    """(figure, its rendered (H, W, 3) image, the cache it shows) for ``tiny()`` on 12 tokens."""
    _, cache = tiny().run_with_cache(tokens(B=1, T=12), hook.patterns)
    figure = hook.figure(cache, labels, title="attention weights at step 7")
    return figure, AttentionImages.image(figure), cache


LABELS = ["a", "␣", "\\n", "b", "c", "d", "e", "f", "g", "h", "i", "j"]  # token_labels' form


@pytest.mark.parametrize("heads, labels, ticks", [
    (None, LABELS, LABELS),  # shown as given
    ([2, 0], None, ["0", "2", "4", "6", "8", "10"]),  # no tokenizer: positions
    ([1], [str(i) * 3 for i in range(12)], None),
], ids=["all-heads-tokens", "two-heads-positions", "one-head"])
def test_attention_figure_shows_the_patterns_with_named_axes_and_a_colour_bar(heads, labels, ticks):
    hook = AttentionImages(layers=[1, 0], heads=heads, max_tokens=12)
    figure, image, cache = attention_figure(hook, labels)
    panels = [ax for ax in figure.axes if ax.images]
    shown = [(layer, h) for layer in (0, 1) for h in heads or range(4)]  # layers in data order
    assert [ax.get_title() for ax in panels] == [f"blocks.{layer}.attn head {h}" for layer, h in shown]
    for ax, (layer, h) in zip(panels, shown, strict=True):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, h]  # (T, T): row = query
        assert torch.equal(torch.as_tensor(ax.images[0].get_array().data), pattern)
        assert ax.images[0].get_clim() == (0.0, 1.0)
        spec = ax.get_subplotspec()
        assert ax.get_ylabel() == ("query position (row)" if spec.is_first_col() else "")
        assert ax.get_xlabel() == ("key position (column)" if spec.is_last_row() else "")
    bar = panels[-1].images[0].colorbar
    assert bar is not None and bar.ax in figure.axes and len(figure.axes) == len(panels) + 1
    assert bar.ax.get_ylabel() == "attention weight" and (bar.vmin, bar.vmax) == (0.0, 1.0)
    assert figure.get_suptitle() == "attention weights at step 7"
    if ticks is not None:
        bottom_left = next(ax for ax in panels if ax.get_subplotspec().is_first_col()
                           and ax.get_subplotspec().is_last_row())
        assert [t.get_text() for t in bottom_left.get_xticklabels()] == ticks
        assert [t.get_text() for t in bottom_left.get_yticklabels()] == ticks
    # as drawn: every title, label and tick label lies inside the image (none cut off)
    width, height = figure.canvas.get_width_height()
    assert image.dtype == np.uint8 and image.shape == (height, width, 3)
    renderer = figure.canvas.get_renderer()
    texts = [t for t in figure.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    assert len(texts) > 2 * len(panels)
    for text in texts:
        box = text.get_window_extent(renderer)
        assert (box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5
                and box.y1 <= height + 0.5), (text.get_text(), box)


def test_attention_images_logs_the_rendered_figure_at_the_step():
    logged = []
    writer = SimpleNamespace(add_image=lambda *args, **kwargs: logged.append((args, kwargs)))
    tokenizer = SimpleNamespace(decode=lambda ids: "abcdefghijklmnopqrstuvwxyz0123456789."[ids[0]],
                                special_tokens={})
    module = SimpleNamespace(logger=SimpleNamespace(experiment=writer), model=tiny(),
                             tokenizer=tokenizer, global_step=7)
    hook = AttentionImages(layers=[0], heads=[3], max_tokens=5)
    batch = (tokens(B=2, T=12), None)
    hook.on_validation_end(module, batch)
    (tag, image, step), kwargs = logged[0]
    assert (tag, step, kwargs) == ("hooks/attention_images/pattern", 7, {"dataformats": "HWC"})
    labels = [tokenizer.decode([i]) for i in batch[0][0, :5].tolist()]
    _, cache = module.model.run_with_cache(batch[0][:1, :5], hook.patterns)
    expected = hook.image(hook.figure(cache, labels, "attention weights at step 7, "
                                      "first validation sequence"))
    assert np.array_equal(image, expected)
    AttentionImages(log_attention=False).on_validation_end(module, batch)
    assert len(logged) == 1


# ---------------------------------------------------------------- backward hooks


@pytest.mark.parametrize("alpha", [-1.0, 0.5, 2.0])
def test_scale_grad_function_gradcheck(alpha):
    # The surrogate's value is alpha * x and its gradient flows only through the
    # Function, so gradcheck compares our backward with the analytic alpha * grad.
    def surrogate(x):
        return ScaleGradFunction.apply(torch.tanh(x), alpha) + (alpha - 1) * torch.tanh(x).detach()

    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(surrogate, (x,))
    y = ScaleGradFunction.apply(x, alpha)
    assert torch.equal(y, x)  # identity forward


def test_grad_scale_hook_scales_every_gradient_behind_the_point():
    model = tiny()
    idx = tokens()
    base = grads_of(model, idx)
    handles = attached(model, GradScale(alpha=-1.0, pattern="hook_logits"))  # gradient reversal
    try:
        reversed_ = grads_of(model, idx)
    finally:
        for h in handles:
            h.remove()
    for name in base:
        torch.testing.assert_close(reversed_[name], -base[name], msg=name)


def test_straight_through_clamp_backward_is_identity():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.5], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    y = StraightThroughClampFunction.apply(x, -1.0, 1.0)
    assert torch.equal(y, x.clamp(-1, 1))
    (grad,) = torch.autograd.grad((w * y).sum(), x)
    assert torch.equal(grad, w)  # also where the clamp is flat: not the true gradient, by design
    inside = torch.tensor([-0.5, 0.2, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: StraightThroughClampFunction.apply(t, -1.0, 1.0), (inside,))


# ---------------------------------------------------------------- auxiliary losses


def aux_loss(model: GPT, hook, idx: torch.Tensor) -> torch.Tensor:
    handles = attached(model, hook)
    try:
        model.train()
        model(idx)
        return hook.loss()
    finally:
        model.eval()
        for h in handles:
            h.remove()


def test_z_loss_by_hand():
    model = tiny()
    idx = tokens()
    logits, _ = model(idx)
    lse = torch.log(torch.exp(logits.double()).sum(-1))  # (B, T)
    loss = aux_loss(model, ZLoss(weight=1e-2), idx)
    assert loss.item() == pytest.approx(1e-2 * (lse**2).mean().item(), rel=1e-5)
    assert loss.requires_grad


def test_act_l2_is_the_mean_square_at_matching_points():
    model = tiny()
    idx = tokens()
    _, cache = model.run_with_cache(idx, "blocks.*.hook_resid_post")
    expected = torch.cat([a.flatten() for a in cache.values()]).pow(2).mean()
    loss = aux_loss(model, ActL2(weight=0.5), idx)
    assert loss.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)


def test_attn_entropy_by_hand_with_sign_and_finite_gradient():
    model = tiny()
    idx = tokens()
    _, cache = model.run_with_cache(idx, "blocks.*.attn.hook_pattern")
    entropies = []
    for p in cache.values():  # (B, H, T, T)
        h = torch.zeros(p.shape[:-1])
        for b, head, t in torch.cartesian_prod(*(torch.arange(n) for n in p.shape[:-1])).tolist():
            row = p[b, head, t, : t + 1].double()
            h[b, head, t] = -(row * row.log()).sum()
        entropies.append(h.mean())
    expected = torch.stack(entropies).mean().item()
    loss = aux_loss(model, AttnEntropy(weight=0.1), idx)
    assert loss.item() == pytest.approx(0.1 * expected, rel=1e-4)
    assert aux_loss(model, AttnEntropy(weight=0.1, sign=-1), idx).item() == pytest.approx(-0.1 * expected, rel=1e-4)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="sign=2"):
        AttnEntropy(sign=2)


def test_aux_loss_is_added_to_the_training_loss():
    module = LMModule(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32),
                      optimizer=torch.optim.SGD, hooks=[ZLoss(weight=0.1)])
    module.attach_hooks()
    module.model.train()
    batch = (tokens(), tokens(seed=2))
    with warnings.catch_warnings():  # self.log warns: no Trainer here
        warnings.simplefilter("ignore")
        total = module.training_step(batch, 0)
    module.detach_hooks()
    logits, ce = module.model(*batch)
    z = 0.1 * torch.logsumexp(logits, -1).pow(2).mean()
    torch.testing.assert_close(total, ce + z)
    assert no_hooks_left(module.model)


# ---------------------------------------------------------------- in a fit


class Boom(ForwardHook):
    def __init__(self):
        super().__init__("blocks.*.hook_resid_post")
        self.calls = 0

    def forward(self, x, hook):
        self.calls += 1
        if self.calls > 4:
            raise RuntimeError("boom in a hook")


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`", "ignore:.*LeafSpec")
def test_hooks_detached_after_an_exception_in_fit():
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(tokens(B=8), tokens(B=8, seed=2)), batch_size=2)
    hook = Boom()
    module = LMModule(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32),
                      optimizer=torch.optim.SGD, hooks=[hook, ResidNoise(std=0.1)])
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(RuntimeError, match="boom in a hook"):
        trainer.fit(module, data)
    assert hook.calls == 5  # attached for the fit: 2 points per step, raised in step 3
    assert no_hooks_left(module.model)


def test_no_hooks_no_callbacks():
    module = LMModule(GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16),
                      optimizer=torch.optim.SGD)
    assert module.hooks == [] and module.configure_callbacks() == []


# ---------------------------------------------------------------- config


def _cfg(*overrides):
    return compose_config(["model=tiny", "paths.output_dir=x", *overrides])


def test_hooks_default_to_none():
    cfg = _cfg()
    assert OmegaConf.to_container(cfg.hooks, resolve=True) == {"order": []}
    assert build_hooks(cfg) == []


def test_hooks_in_the_config_hash_order_included():
    none, clip = config_hash(_cfg("hooks=none")), config_hash(_cfg("hooks=grad_clip_custom"))
    ab = _cfg("hooks=[grad_clip_custom,z_loss]")
    ba = _cfg("hooks=[z_loss,grad_clip_custom]")
    assert none == config_hash(_cfg()) and none != clip
    assert config_hash(ab) != config_hash(ba) != clip
    assert config_hash(ab) == config_hash(_cfg("hooks=[grad_clip_custom,z_loss]"))
    assert config_hash(_cfg("hooks=z_loss", "hooks.z_loss.weight=1e-3")) != config_hash(_cfg("hooks=z_loss"))
    assert list(ab.hooks.order) == ["grad_clip_custom", "z_loss"]
    assert [h.name for h in build_hooks(ab)] == ["grad_clip_custom", "z_loss"]
    assert [type(h).__name__ for h in build_hooks(ba)] == ["ZLoss", "GradClipCustom"]


def test_every_hook_option_builds():
    options = sorted(p.stem for p in (ROOT / "conf" / "hooks").glob("*.yaml") if p.stem != "none")
    cfg = _cfg(f"hooks=[{','.join(options)}]")
    assert [h.name for h in build_hooks(cfg)] == options


def test_unknown_hook_name_is_named_with_the_available_ones():
    with pytest.raises(MissingConfigException) as err:  # Hydra's own message
        _cfg("hooks=nosuch")
    assert "Could not find 'hooks/nosuch'" in str(err.value)
    assert all(name in str(err.value) for name in ("grad_clip_custom", "z_loss", "head_ablation"))
    with pytest.raises(MissingConfigException, match="Could not load 'hooks/nosuch'"):
        _cfg("hooks=[z_loss,nosuch]")  # in a list, Hydra names it without the options


@pytest.mark.parametrize("overrides,message", [
    (["hooks=z_loss", "hooks.z_loss._target_=torch.nn.Linear"],
     "hooks.z_loss._target_=torch.nn.Linear is invalid: must be an lm.hooks.Hook subclass"),
    (["hooks=z_loss", "hooks.z_loss._target_=lm.hooks.NoSuch"],
     "hooks.z_loss._target_=lm.hooks.NoSuch is invalid: cannot be imported"),
    (["hooks=z_loss", "hooks.z_loss.weight=-1"], "hooks.z_loss: weight=-1 is invalid: must be >= 0"),
    (["hooks=z_loss", "+hooks.z_loss.nosuch=1"], "unexpected keyword argument 'nosuch'"),
    (["hooks=head_ablation", "hooks.head_ablation.heads=[[1,4]]"], "head 4 of layer 1 is out of range"),
    (["hooks=[z_loss,act_l2]", "hooks.order=[z_loss]"], "hooks.order=['z_loss'] is invalid"),
    (["hooks=resid_noise", "hooks.resid_noise.pattern=blocks.*.hook_resid_psot"],
     ("hooks.resid_noise: pattern 'blocks.*.hook_resid_psot' matches no hook point (closest: "
      "blocks.1.hook_resid_post, blocks.0.hook_resid_post")),
])
def test_bad_hooks_end_with_one_line(overrides, message):
    cfg = _cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)  # the checks that run before any training
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # a process; the one-line message itself is checked in-process above
def test_bad_pattern_exits_2_from_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "lm" / "train.py"), "model=tiny", "hooks=act_l2",
         "hooks.act_l2.pattern=blocks.*.hook_resid_psot", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.data_dir={tmp_path / 'data'}"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: hooks.act_l2: pattern ")


def test_inspect_prints_every_hook_point_with_its_shape():
    result = subprocess.run([sys.executable, "-m", "lm", "inspect", "model=tiny"],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    rows = dict(re.findall(r"^(\S*hook_\S+)\s+(\(.*?\))", result.stdout, flags=re.MULTILINE))
    assert len(rows) == 4 + 2 * 13
    assert rows["blocks.1.attn.hook_pattern"] == "(1, 4, 64, 64)"
    assert rows["blocks.0.attn.hook_z"] == "(1, 64, 4, 16)"
    assert rows["blocks.0.mlp.hook_post"] == "(1, 64, 256)"
    assert rows["hook_logits"] == "(1, 64, 256)" and "placeholder" in result.stdout


# ---------------------------------------------------------------- end to end


def test_tiny_run_logs_hook_metrics(make_cfg, tmp_path):
    run(make_cfg("hooks=[grad_clip_custom,z_loss]"))
    scalars = SummaryReader(str(tmp_path / "run")).scalars
    tags = set(scalars.tag)
    for tag in ("hooks/grad_clip_custom/clipped_fraction", "hooks/grad_clip_custom/norm/blocks.0",
                "hooks/grad_clip_custom/norm/wte", "hooks/z_loss/loss"):
        assert tag in tags, tag
    z = scalars[scalars.tag == "hooks/z_loss/loss"]
    grad_norm = scalars[scalars.tag == "train/grad_norm"]
    assert len(z) == 6 and list(z.step) == list(grad_norm.step) and (z.value > 0).all()
    assert (scalars[scalars.tag == "hooks/grad_clip_custom/clipped_fraction"].value <= 1).all()


def readme_example() -> tuple[str, str, str]:
    """The python, yaml and bash blocks of README's "Writing a hook" example."""
    section = (ROOT / "README.md").read_text().split("## Writing a hook", 1)[1].split("\n## ", 1)[0]
    blocks = dict(re.findall(r"```(python|yaml|bash)\n(.*?)```", section[section.index("An example"):],
                             flags=re.DOTALL))
    return blocks["python"], blocks["yaml"], blocks["bash"]


def test_readme_example_trains(make_cfg, tmp_path, monkeypatch):
    python, yaml, bash = readme_example()
    assert len((python + yaml + bash).strip().splitlines()) < 25
    (tmp_path / "my_hooks.py").write_text(python)
    (tmp_path / "conf" / "hooks").mkdir(parents=True)
    (tmp_path / "conf" / "hooks" / "resid_scale.yaml").write_text(yaml)
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = next(arg for arg in shlex.split(bash) if arg.startswith("hooks="))
    cfg = make_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", hooks, "trainer.max_steps=3",
                   "+hooks.attention_images={_target_: lm.hooks.AttentionImages, max_tokens: 16}")
    assert list(cfg.hooks.order) == ["resid_scale", "z_loss", "attention_images"]
    run(cfg)
    tb = tmp_path / "run"
    tags = set(SummaryReader(str(tb)).scalars.tag)
    assert {"hooks/resid_scale/rms/blocks.0.hook_resid_post", "hooks/z_loss/loss"} <= tags
    events = EventAccumulator(str(tb), size_guidance={"images": 0})
    events.Reload()
    assert [i.step for i in events.Images("hooks/attention_images/pattern")] == [3]
