"""trainer.compile: a compiled run trains as the eager one (hooks included), its
checkpoint loads uncompiled, and where torch.compile cannot run the run goes on
eagerly after one warning line, with the eager run's numbers.

The fast tests compile with ``backend="aot_eager"`` (Dynamo's trace and AOTAutograd's
forward and backward graphs, run eagerly: what hooks and state_dict keys meet); the
``inductor`` variants (the real default, C++ codegen, tens of seconds here) are slow.
"""

import functools

import pytest
import torch
from lightning import Callback
from tbparse import SummaryReader

from lm.checkpoint import load_checkpoint
from lm.cli import main
from lm.config.compose import compose_config
from lm.errors import ConfigError
from lm.training.hashing import config_hash
from lm.training.run import run
from lm.training.run_callbacks import CompileModel

BACKENDS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


class KeepModule(Callback):
    """Keeps the fit's LightningModule and its compile callback (``run`` returns only the
    record)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.module = pl_module
        self.compiler = next(c for c in trainer.callbacks if isinstance(c, CompileModel))


def compile_with(monkeypatch, backend: str) -> None:
    """``torch.compile`` (which ``nn.Module.compile`` calls) with ``backend``."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))


def scalars(record: dict) -> dict[str, list[float]]:
    """TensorBoard scalars of a run: tag -> values in step order."""
    df = SummaryReader(record['run_dir']).scalars.sort_values("step")
    return {tag: list(group.value) for tag, group in df.groupby("tag")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_compiled_runs_checkpoint_loads_uncompiled(make_cfg, monkeypatch, capsys, backend):
    compile_with(monkeypatch, backend)
    keep = KeepModule()
    record = run(make_cfg("trainer.compile=true"), extra_callbacks=[keep])
    assert record["status"] == "completed"
    assert "warning" not in capsys.readouterr().err
    trained = keep.module.model
    assert trained._compiled_call_impl is not None  # compiled, not fallen back to eager
    assert keep.compiler.compiled and keep.compiler.graphs > 0
    path = record["checkpoints"]["last"]
    keys = torch.load(path, weights_only=True)["state_dict"]
    assert keys and not [k for k in keys if "_orig_mod" in k]
    model, _, _ = load_checkpoint(path)  # uncompiled, eval mode
    # A batch of the training shape in train mode with grad (dropout is 0): the compiled
    # graph of the training steps, not a new one.
    x = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    trained.train()
    logits, loss = trained(x, x)
    with torch.no_grad():
        expected, expected_loss = model(x, x)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_work_compiled(make_cfg, monkeypatch, backend):
    # head_ablation replaces an activation, attn_entropy reads the explicit attention
    # path's hook_pattern and adds an auxiliary loss: ignored hooks would change both.
    hooks = "hooks=[head_ablation,attn_entropy]"
    eager = run(make_cfg(hooks, out="eager"))
    compile_with(monkeypatch, backend)
    keep = KeepModule()
    compiled = run(make_cfg(hooks, "trainer.compile=true", out="compiled"), extra_callbacks=[keep])
    # really compiled: the trial passed, Dynamo traced graphs, and the model kept them
    assert keep.compiler.compiled and keep.compiler.graphs > 0, "fell back to eager"
    assert keep.module.model._compiled_call_impl is not None
    want, got = scalars(eager), scalars(compiled)
    tags = ["val/loss", "train/loss", "hooks/attn_entropy/loss",
            "hooks/head_ablation/removed_rms/blocks.0.attn.hook_z"]
    for tag in tags:
        assert len(got[tag]) == len(want[tag]) > 0, tag
        assert got[tag] == pytest.approx(want[tag], rel=1e-4), tag


def broken_compile(fn, *args, **kwargs):
    """A ``torch.compile`` that fails as a missing C++ compiler does: lazily, at the first
    call, after running (here: the forward itself, drawing dropout masks, as a trace
    may), with a multi-line message."""

    def compiled(*call_args, **call_kwargs):
        fn(*call_args, **call_kwargs)
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n\nSet TORCHDYNAMO_VERBOSE=1")

    return compiled


def test_where_compile_cannot_run_one_warning_and_the_eager_numbers(make_cfg, monkeypatch, capsys):
    dropout = "model.dropout=0.1"  # the failed trial must not move the RNG
    eager = run(make_cfg(dropout, out="eager"))
    capsys.readouterr()
    monkeypatch.setattr(torch, "compile", broken_compile)
    keep = KeepModule()
    record = run(make_cfg(dropout, "trainer.compile=true", out="fallback"), extra_callbacks=[keep])
    err = capsys.readouterr().err
    assert record["status"] == "completed"
    assert [line for line in err.splitlines() if "warning" in line.lower()] == [
        ("warning: trainer.compile=true: torch.compile cannot run here (InvalidCxxCompiler: "
         "No working C++ compiler found); training eagerly")]
    assert keep.module.model._compiled_call_impl is None
    assert not keep.compiler.compiled
    assert record["hash"] != eager["hash"]
    assert record["metrics"]["final"] == eager["metrics"]["final"]  # exactly: same RNG draws
    assert scalars(record)["train/loss"] == scalars(eager)["train/loss"]


@pytest.mark.parametrize(("overrides", "says"), [
    (["trainer.compile=true", "~callbacks.compile"],
     "trainer.compile=true is invalid without callbacks.compile"),
    (["callbacks.compile.enabled=true"], "callbacks.compile.enabled is invalid: must be ${trainer.compile}"),
])
def test_the_compile_callback_only_carries_out_trainer_compile(make_cfg, tmp_path, overrides, says):
    # trainer.compile is in the hash, callbacks.compile is not: they may not disagree
    with pytest.raises(ConfigError) as err:
        run(make_cfg(*overrides))
    assert str(err.value).startswith(says) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_compile_false_keeps_the_default_hash_and_true_changes_it():
    def hash_of(*overrides):
        return config_hash(compose_config(["paths.output_dir=x", *overrides]))

    assert hash_of("trainer.compile=false") == hash_of()
    assert hash_of("trainer.compile=true") != hash_of()
    assert compose_config(["paths.output_dir=x"]).trainer.compile is False


def test_a_non_bool_compile_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "trainer.compile=maybe"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == "error: trainer.compile=maybe is invalid: Value 'maybe' is not a valid bool (type str)\n"
    assert list(tmp_path.iterdir()) == []
