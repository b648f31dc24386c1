"""optimizer=muon (lm/training/optim.py) and scheduler=wsd (lm/training/schedule.py)."""

import copy
import io
import json
import re

import pytest
import torch

from lm.errors import ConfigError
from lm.training.optim import MuonWithAdamW, muon_param_groups
from lm.training.run import run
from lm.training.schedule import warmup_stable_decay, wsd_multiplier
from tests.conftest import Crash, tiny, tokens

# The hidden matrices by their module paths (not GPT.named_layers, which the code uses).
HIDDEN = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
SETTINGS = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "ns_steps": 5, "weight_decay": 0.1,
            "adjust_lr_fn": None, "adamw_lr": 3e-3, "adamw_betas": [0.8, 0.95],
            "adamw_eps": 1e-8, "adamw_weight_decay": 0.05}


@pytest.mark.parametrize("options", [
    {}, {"tie_weights": False}, {"pos_encoding": "rope"},
    {"pos_encoding": "rope", "tie_weights": False, "qk_norm": True, "activation": "swiglu"},
    {"bias": False, "norm": "rmsnorm"}, {"mlp": False},
])
def test_every_parameter_is_in_exactly_one_group(options):
    model = tiny(**options)
    hidden, embeddings, vectors = muon_param_groups(model)
    grouped = [id(p) for g in (hidden, embeddings, vectors) for p in g["params"]]
    named = dict(model.named_parameters())  # a tied head is listed once, as wte's
    assert sorted(grouped) == sorted(id(p) for p in named.values())
    assert {id(p) for p in hidden["params"]} == {id(p) for n, p in named.items() if HIDDEN.fullmatch(n)}
    expected = {n for n, p in named.items() if p.dim() >= 2 and not HIDDEN.fullmatch(n)}
    assert {n for n, p in named.items() if id(p) in {id(q) for q in embeddings["params"]}} == expected
    assert all(p.dim() == 1 for p in vectors["params"])
    assert (hidden["use_muon"], embeddings["use_muon"], vectors["use_muon"]) == (True, False, False)
    optimizer = MuonWithAdamW(muon_param_groups(model), **SETTINGS)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.05, 0.0]
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 3e-3, 3e-3]


def train_steps(model, optimizer, scheduler, steps, seed=0):
    """``steps`` updates of ``optimizer`` (a list: stepped in turn) on random batches."""
    optimizers = optimizer if isinstance(optimizer, list) else [optimizer]
    schedulers = scheduler if isinstance(scheduler, list) else [scheduler]
    for i in range(steps):
        x = tokens(seed=seed + i)
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
        for sched in schedulers:
            sched.step()


def warmup(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 4)


def test_steps_equal_muon_and_adamw_built_by_hand():
    model = tiny(tie_weights=False).train()
    reference = copy.deepcopy(model)
    combined = MuonWithAdamW(muon_param_groups(model), **SETTINGS)
    hidden, *others = muon_param_groups(reference)
    muon = torch.optim.Muon([hidden], lr=0.05, momentum=0.9, nesterov=True, ns_steps=5,
                            weight_decay=0.1, adjust_lr_fn=None)
    adamw = torch.optim.AdamW(others, lr=3e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.05)
    # a schedule on each: the combined one must scale every group's own lr
    train_steps(model, combined, warmup(combined), 2)
    train_steps(reference, [muon, adamw], [warmup(muon), warmup(adamw)], 2)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(model.transformer.wte.weight, tiny(tie_weights=False).transformer.wte.weight)


def test_state_dict_round_trip_gives_the_same_next_steps():
    model = tiny().train()
    optimizer = MuonWithAdamW(muon_param_groups(model), **SETTINGS)
    scheduler = warmup(optimizer)
    train_steps(model, optimizer, scheduler, 2)
    buffer = io.BytesIO()  # as a checkpoint holds them
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = tiny().train()
    resumed.load_state_dict(saved["model"])
    optimizer_2 = MuonWithAdamW(muon_param_groups(resumed), **SETTINGS)
    scheduler_2 = warmup(optimizer_2)  # then the states, in Lightning's order
    optimizer_2.load_state_dict(saved["optimizer"])
    scheduler_2.load_state_dict(saved["scheduler"])
    train_steps(model, optimizer, scheduler, 2, seed=10)
    train_steps(resumed, optimizer_2, scheduler_2, 2, seed=10)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert len(optimizer_2.state) == len(list(model.parameters()))  # both halves' state


def test_bad_settings_are_one_line():
    with pytest.raises(ValueError, match=r"^optimizer.adjust_lr_fn=rms must be null"):
        MuonWithAdamW(muon_param_groups(tiny()), **{**SETTINGS, "adjust_lr_fn": "rms"})
    with pytest.raises(ValueError, match=r"^optimizer.adamw_betas=\[0.9, 1.0\] must be"):
        MuonWithAdamW(muon_param_groups(tiny()), **{**SETTINGS, "adamw_betas": [0.9, 1.0]})


@pytest.mark.parametrize("overrides,key", [
    (["optimizer=muon", "optimizer.adamw_eps=0"], "optimizer.adamw_eps=0"),
    (["optimizer=muon", "optimizer.ns_steps=0"], "optimizer.ns_steps=0"),
    (["scheduler=wsd", "scheduler.decay_fraction=1.5"], "scheduler.decay_fraction=1.5"),
    (["scheduler=wsd", "scheduler.decay_shape=exp"], "scheduler.decay_shape=exp"),
])
def test_bad_values_end_before_training_with_one_line(make_cfg, tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(*overrides))
    assert key in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "run.json").exists()


def test_interrupted_muon_wsd_run_resumes_to_the_same_numbers(make_cfg, tmp_path):
    overrides = ("optimizer=muon", "scheduler=wsd", "scheduler.warmup_steps=2",
                 "trainer.max_steps=8", "trainer.val_check_interval=4",
                 "tracking.checkpoint_every_n_steps=4", "sample.max_new_tokens=0")
    straight = run(make_cfg(*overrides, out="straight"))


    cfg = make_cfg(*overrides, "tracking.skip_completed=false", out="crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, extra_callbacks=[Crash("train_batch_end", 6)])
    assert json.loads((tmp_path / "crashed" / "run.json").read_text())["status"] == "failed"
    resumed = run(make_cfg(*overrides, "tracking.skip_completed=false", out="new"))
    assert resumed["resumed_from"][0].endswith("last.ckpt") and resumed["steps"] == 8
    assert resumed["metrics"]["final"]["val/loss"] == straight["metrics"]["final"]["val/loss"]


# --- warmup-stable-decay -------------------------------------------------------------

def test_wsd_against_hand_values():
    # warmup 10, total 100, decay over the last 0.2 (from step 80), floor 0.1
    def m(step, shape="linear"):
        return wsd_multiplier(step, 10, 100, 0.2, 0.1, shape)

    assert m(0) == pytest.approx(1 / 11)  # warmup as cosine_multiplier: (step + 1) / 11
    assert m(5) == pytest.approx(6 / 11)
    assert m(10) == m(79) == m(80) == 1.0  # the stable phase; the decay starts at 80
    assert m(90) == pytest.approx(1 - 0.5 * 0.9)  # halfway: 0.55
    assert m(99) == pytest.approx(1 - 0.95 * 0.9)  # the last update: 0.145
    assert m(100) == m(500) == pytest.approx(0.1)
    assert m(90, "cosine") == pytest.approx(0.1 + 0.5 * (1 + 0.0) * 0.9)  # cos(pi/2) = 0
    assert m(85, "cosine") == pytest.approx(0.1 + 0.5 * (1 + 2 ** -0.5) * 0.9)  # cos(pi/4)
    assert wsd_multiplier(50, 0, 100, 0.0, 0.1) == 1.0  # no decay: the peak to the end
    # a warmup past the decay start: the decay runs from the warmup's end instead
    assert wsd_multiplier(60, 60, 100, 0.5, 0.0) == 1.0
    assert wsd_multiplier(80, 60, 100, 0.5, 0.0) == pytest.approx(0.5)


def test_wsd_scheduler_scales_every_group():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1.0, 0.01)]
    optimizer = torch.optim.SGD(groups, lr=1.0)
    scheduler = warmup_stable_decay(optimizer, 1, 10, 0.5, 0.2, "linear")
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    # step 0: 1/2; 1-4: 1; 5-9: 1 - (s - 5)/5 * 0.8
    expected = [0.5, 1, 1, 1, 1, 1, 0.84, 0.68, 0.52, 0.36]
    assert [a for a, _ in lrs] == pytest.approx(expected)
    assert [b for _, b in lrs] == pytest.approx([0.01 * e for e in expected])


@pytest.mark.parametrize("args,says", [
    ((-1, 10, 0.2, 0.1, "linear"), "scheduler.warmup_steps=-1"),
    ((0, 0, 0.2, 0.1, "linear"), "scheduler.total_steps=0"),
    ((0, 10, -0.1, 0.1, "linear"), "scheduler.decay_fraction=-0.1"),
    ((0, 10, 0.2, 1.5, "linear"), "scheduler.min_lr_ratio=1.5"),
    ((0, 10, 0.2, 0.1, "exp"), "scheduler.decay_shape=exp"),
])
def test_wsd_bad_values(args, says):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=re.escape(says)):
        warmup_stable_decay(optimizer, *args)


def hand_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's quintic iteration written as the polynomial X <- aX + b(XX^T)X + c(XX^T)^2 X,
    in float64, on the wide orientation (Jordan et al. 2024)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.size(0) > g.size(1)
    x = (g.T if tall else g).double()
    x = x / x.norm()
    for _ in range(steps):
        m = x @ x.T
        x = a * x + b * m @ x + c * m @ m @ x
    return (x.T if tall else x).float()


@pytest.mark.parametrize("shape", [(8, 8), (24, 8), (8, 32)])
def test_float32_newton_schulz_is_the_iteration_torch_runs_in_bfloat16(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz as torch_bf16

    from lm.training.optim import newton_schulz_fp32
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ours = newton_schulz_fp32(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
    torch.testing.assert_close(ours, hand_newton_schulz(g), rtol=1e-4, atol=1e-5)
    # torch's bfloat16 run of the same iteration: equal up to bfloat16 rounding
    torch.testing.assert_close(ours, torch_bf16(g, (3.4445, -4.775, 2.0315), 5, 1e-7).float(),
                               rtol=0, atol=0.1)


def test_float32_steps_equal_torch_muon_with_a_float32_iteration(monkeypatch):
    import torch.optim._muon as torch_muon
    original = torch_muon._zeropower_via_newtonschulz
    model = tiny(tie_weights=False).train()
    reference = copy.deepcopy(model)
    combined = MuonWithAdamW(muon_param_groups(model), **{**SETTINGS, "ns_dtype": "float32"})
    train_steps(model, combined, warmup(combined), 2)
    assert torch_muon._zeropower_via_newtonschulz is original  # restored after each step
    hidden, *others = muon_param_groups(reference)
    muon = torch.optim.Muon([hidden], lr=0.05, momentum=0.9, nesterov=True, ns_steps=5,
                            weight_decay=0.1, adjust_lr_fn=None)
    adamw = torch.optim.AdamW(others, lr=3e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.05)
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz",
                        lambda g, coefficients, steps, eps: hand_newton_schulz(g, steps))
    train_steps(reference, [muon, adamw], [warmup(muon), warmup(adamw)], 2)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert (p - q).abs().max() <= 1e-5 + 1e-4 * q.abs().max(), (name, (p - q).abs().max())
    with pytest.raises(ValueError, match=r"optimizer.ns_dtype=float16 must be one of"):
        MuonWithAdamW(muon_param_groups(model), **{**SETTINGS, "ns_dtype": "float16"})
