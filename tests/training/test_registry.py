"""The run record never lies: one run per dir, a content-addressed hash, exact resumes,
divergence caught, signals recorded. Each test reproduces a defect of issue 14."""

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lm.atomic import umask
from lm.config.compose import compose_config
from lm.errors import ConfigError
from lm.training.hashing import config_hash
from lm.training.record import write_json_atomic
from lm.training.run import run
from tests.conftest import ROOT, Crash, curves


def files_and_mtimes(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns
            for p in run_dir.rglob("*") if p.is_file()}


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())




# --- one run per dir ---------------------------------------------------------------

def test_rerun_into_its_own_dir_keeps_the_completed_record(make_cfg, tmp_path, capsys):
    first = run(make_cfg(out="sweep/0-job"))
    before = files_and_mtimes(tmp_path / "sweep" / "0-job")
    for _ in range(2):  # defect 1: the 2nd run wrote a pointer over it, the 3rd retrained
        again = run(make_cfg(out="sweep/0-job"))
        assert again["status"] == "skipped"
        assert files_and_mtimes(tmp_path / "sweep" / "0-job") == before
    assert record(tmp_path / "sweep" / "0-job")["status"] == "completed"
    assert record(tmp_path / "sweep" / "0-job")["metrics"] == first["metrics"]
    assert "already completed" in capsys.readouterr().out


def test_a_run_outside_the_registry_is_found_in_its_own_dir(make_cfg, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"  # defect 2
    overrides = (f"tracking.registry_dir={tmp_path / 'registry'}",
                 f"paths.output_dir={outside / 'sw' / '0-job'}")
    run(make_cfg(*overrides))
    before = files_and_mtimes(outside / "sw" / "0-job")
    assert run(make_cfg(*overrides))["status"] == "skipped"
    assert files_and_mtimes(outside / "sw" / "0-job") == before
    assert sorted(p.name for p in (outside / "sw" / "0-job" / "checkpoints").iterdir()) == [
        "best.ckpt", "last.ckpt"]


def test_a_dir_holding_another_run_is_refused(make_cfg, tmp_path):
    run(make_cfg("seed=1", out="shared"))
    with pytest.raises(ConfigError, match=r"already holds the completed run .*one run only"):
        run(make_cfg("seed=2", out="shared"))
    with pytest.raises(ConfigError, match="holds this config's completed run"):
        run(make_cfg("seed=1", "tracking.skip_completed=false", out="shared"))
    assert record(tmp_path / "shared")["hash"] == config_hash(make_cfg("seed=1", out="shared"))


# --- the hash follows the data's content --------------------------------------------

def test_hash_holds_the_corpus_content_not_its_path(make_cfg, tmp_path, corpus):
    corpus_dir = tmp_path / "d"
    corpus_dir.mkdir()
    (corpus_dir / "a.txt").write_text(corpus.read_text())
    spellings = [str(corpus_dir), f"{corpus_dir}/", f"{corpus_dir}/../d"]
    hashes = {config_hash(make_cfg(f"data.path={p}")) for p in spellings}
    assert len(hashes) == 1  # defect 3: three hashes
    (corpus_dir / "b.txt").write_text("more text\n")
    assert config_hash(make_cfg(f"data.path={corpus_dir}")) not in hashes
    moved = tmp_path / "copy.txt"
    moved.write_text(corpus.read_text())  # the same text elsewhere: the same run
    assert config_hash(make_cfg(f"data.path={moved}")) == config_hash(make_cfg())


def test_an_edited_corpus_is_trained_again(make_cfg, corpus):
    first = run(make_cfg(out="a"))
    corpus.write_text(corpus.read_text() + "A new line of text that changes the corpus.\n")
    again = run(make_cfg(out="b"))
    assert again["status"] == "completed" and again["hash"] != first["hash"]
    assert again["content"]["data.path"] != first["content"]["data.path"]


# --- exact resume -------------------------------------------------------------------

RESUME = ("trainer.max_steps=10", "trainer.val_check_interval=4", "model.dropout=0.1",
          "tracking.checkpoint_every_n_steps=3", "sample.max_new_tokens=0")




@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from tests.conftest import LINES

    tmp = tmp_path_factory.mktemp("straight")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(LINES[i % len(LINES)] + f" ({i})" for i in range(90)) + "\n")
    return corpus


def resume_cfg(make_cfg, straight, *extra, out):
    return make_cfg(f"data.path={straight}", *RESUME, *extra, out=out)


@pytest.mark.parametrize(("hook", "step"), [
    ("train_batch_end", 8),  # defect 4: last.ckpt at 8 came before step 8's validation
    ("validation_batch_end", 10),  # killed inside the final validation
    ("validation_end", 10),  # after the final validation, before its checkpoint
    ("train_batch_end", 6),  # between checkpoints
])
def test_a_resumed_run_has_every_point_an_uninterrupted_run_has(make_cfg, straight, tmp_path,
                                                                 hook, step):
    whole = run(resume_cfg(make_cfg, straight, out="whole"))
    reg = f"tracking.registry_dir={tmp_path / 'reg'}"  # apart from the uninterrupted run
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(resume_cfg(make_cfg, straight, reg, out="reg/crashed"),
            extra_callbacks=[Crash(hook, step)])
    resumed = run(resume_cfg(make_cfg, straight, reg, out="reg/again"))
    assert resumed["run_dir"].endswith("crashed") and resumed["status"] == "completed"
    assert resumed["steps"] == 10
    assert resumed["metrics"] == whole["metrics"]
    assert curves(tmp_path / "reg" / "crashed") == curves(tmp_path / "whole")
    assert sorted(curves(tmp_path / "reg" / "crashed")["val/loss"]) == [4, 8, 10]


def test_an_unreadable_last_checkpoint_is_set_aside(make_cfg, straight, tmp_path, capsys):
    whole = run(resume_cfg(make_cfg, straight, out="whole"))
    reg = f"tracking.registry_dir={tmp_path / 'reg'}"
    with pytest.raises(RuntimeError):
        run(resume_cfg(make_cfg, straight, reg, out="reg/crashed"),
            extra_callbacks=[Crash("train_batch_end", 9)])
    ckpts = tmp_path / "reg" / "crashed" / "checkpoints"
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:1000])  # truncated
    resumed = run(resume_cfg(make_cfg, straight, reg, out="reg/again"))  # defect 5: failed for ever
    assert "last.ckpt is unreadable" in capsys.readouterr().err
    assert (ckpts / "last.ckpt.bad").is_file()
    assert resumed["resumed_from"] == [str(ckpts / "best.ckpt")]  # the previous good one
    assert resumed["metrics"]["final"] == whole["metrics"]["final"]
    assert curves(tmp_path / "reg" / "crashed") == curves(tmp_path / "whole")


def test_a_run_killed_before_its_first_checkpoint_is_not_left_running(make_cfg, tmp_path):
    cfg = make_cfg("tracking.checkpoint_every_n_steps=50", out="killed")
    with pytest.raises(RuntimeError):
        run(cfg, extra_callbacks=[Crash("train_batch_end", 1)])
    rec = record(tmp_path / "killed")
    rec["status"] = "running"  # as SIGKILL would leave it
    write_json_atomic(tmp_path / "killed" / "run.json", rec)
    again = run(make_cfg("tracking.checkpoint_every_n_steps=50", out="new"))
    assert again["status"] == "completed" and again["run_dir"].endswith("killed")
    assert again["resumed_from"] == ["scratch"]


def test_wall_time_sums_segments_and_run_json_is_world_readable(make_cfg, tmp_path):
    class Slow(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            time.sleep(0.2)

    with pytest.raises(RuntimeError):
        run(make_cfg(out="seg"), extra_callbacks=[Slow(), Crash("train_batch_end", 5)])
    first = record(tmp_path / "seg")["wall_time_s"]
    assert first >= 1.0  # 5 steps of 0.2 s
    resumed = run(make_cfg(out="seg2"))
    assert resumed["wall_time_s"] >= first
    mode = stat.S_IMODE((tmp_path / "seg" / "run.json").stat().st_mode)
    assert mode == 0o666 & ~umask()


def test_a_locked_hash_leaves_a_pointer_in_its_job_dir(make_cfg, tmp_path):
    from lm.training.registry import HashLock

    (tmp_path / "job" / ".hydra").mkdir(parents=True)  # as Hydra makes it
    cfg = make_cfg(out="job")
    lock = HashLock(tmp_path, config_hash(cfg))
    assert lock.acquire()
    try:
        assert run(cfg)["status"] == "skipped"
    finally:
        lock.release()
    pointer = record(tmp_path / "job")
    assert pointer["status"] == "skipped" and "another process" in pointer["reason"]


# --- divergence ---------------------------------------------------------------------

def test_divergence_stops_the_run_and_keeps_finite_checkpoints(make_cfg, tmp_path, capsys):
    cfg = make_cfg("optimizer.lr=1e4", "trainer.gradient_clip_val=0",
                   "tracking.checkpoint_every_n_steps=1", "trainer.max_steps=30", out="nan")
    rec = run(cfg)
    assert rec["status"] == "diverged" and "non-finite" not in rec["error"]
    assert rec["error"].startswith(("train/loss=nan", "train/loss=inf", "train/grad_norm=",
                                    "val/loss="))
    text = (tmp_path / "nan" / "run.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in run.json"))  # strict JSON
    for ckpt in (tmp_path / "nan" / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    again = run(make_cfg("optimizer.lr=1e4", "trainer.gradient_clip_val=0",
                         "tracking.checkpoint_every_n_steps=1", "trainer.max_steps=30", out="x"))
    assert again["status"] == "skipped" and "diverged in" in capsys.readouterr().out
    retried = run(make_cfg("optimizer.lr=1e4", "trainer.gradient_clip_val=0",
                           "tracking.retry_diverged=true", "tracking.checkpoint_every_n_steps=1",
                           "trainer.max_steps=30", out="y"))
    assert retried["status"] == "diverged" and retried["run_dir"].endswith("y")


def test_non_finite_numbers_are_written_as_null_with_a_flag(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"metrics": {"final": {"val/loss": math.nan,
                                                                  "val/ppl": math.inf}}})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["metrics"]["final"] == {"val/loss": None, "val/ppl": None}
    assert data["non_finite"] == ["metrics.final.val/loss", "metrics.final.val/ppl"]


# --- the command line: signals, sweeps, bad input -------------------------------------

def cli(tmp_path, *args, **popen):
    flags = [a for a in args if a.startswith("-")]
    command = [sys.executable, str(ROOT / "lm" / "train.py"), *flags, "model=tiny", "data=text_file",
               f"data.path={tmp_path / 'corpus.txt'}", f"paths.data_dir={tmp_path / 'data'}",
               f"tracking.registry_dir={tmp_path / 'out'}", "trainer.enable_progress_bar=false",
               "trainer.enable_model_summary=false", "data.batch_size=4", "data.eval_iters=2",
               f"hydra.run.dir={tmp_path / 'out' / 'run'}",
               f"hydra.sweep.dir={tmp_path / 'out' / 'sweep'}", *(a for a in args if a not in flags)]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)


@pytest.mark.parametrize(("signum", "code"), [
    (signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])  # a process each
def test_a_signal_is_recorded_as_interrupted_and_resumed(tmp_path, corpus, signum, code):
    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    proc = cli(tmp_path, "trainer.max_steps=100000", "tracking.checkpoint_every_n_steps=5")
    run_json = tmp_path / "out" / "run" / "run.json"
    deadline = time.monotonic() + 120
    while not (run_json.is_file() and record(run_json.parent).get("steps", 0) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err  # defect 8: SIGTERM exited 0
    rec = record(run_json.parent)
    assert rec["status"] == "interrupted"
    assert rec["error"].startswith(signal.Signals(signum).name)
    assert "interrupted:" in err.splitlines()[-1]


SLOW_HOOK = """
from pathlib import Path

import torch

from lm.hooks import ForwardHook


class Stall(ForwardHook):
    \"\"\"Once the file ``stall`` exists, a forward multiplies two 12,000 x 12,000
    matrices: minutes of one native operation, where no Python signal handler runs.\"\"\"

    def __init__(self):
        super().__init__("blocks.0.hook_resid_post")

    def forward(self, x, hook):
        if Path("stall").exists():
            a = torch.ones(12000, 12000)
            Path("stalled").touch()
            torch.mm(a, a)
"""


@pytest.mark.slow  # an end-to-end process that stalls and is signalled: ~20 s
def test_sigterm_stops_a_run_inside_a_step(tmp_path, corpus):
    """Lightning checks for SIGTERM between steps; a step that takes minutes (a model too
    big for the machine) must still stop at once, recorded as interrupted."""
    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    (tmp_path / "stall_hook.py").write_text(SLOW_HOOK)
    proc = cli(tmp_path, "trainer.max_steps=100000", "+hooks.stall={_target_: stall_hook.Stall}")
    run_json = tmp_path / "out" / "run" / "run.json"
    deadline = time.monotonic() + 120
    while not (run_json.is_file() and record(run_json.parent).get("status") == "running"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    (tmp_path / "stall").touch()
    while not (tmp_path / "stalled").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(2)  # well inside the product
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # the matrix product alone takes minutes here
    assert proc.returncode == 143, err
    rec = record(run_json.parent)
    assert rec["status"] == "interrupted" and rec["error"].endswith("inside a step")
    assert err.splitlines()[-1].startswith("interrupted: SIGTERM at step")


@pytest.mark.slow  # a sweep process
def test_a_sweep_goes_on_past_a_diverged_job(tmp_path, corpus):
    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    proc = cli(tmp_path, "-m", "trainer.max_steps=20", "trainer.val_check_interval=10",
               "trainer.gradient_clip_val=0", "optimizer.lr=1e4,1e-3")
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = (tmp_path / "out" / "sweep" / "summary.csv").read_text()
    assert ",diverged," in summary and ",completed," in summary


@pytest.mark.parametrize(("args", "says"), [
    (["hooks=null"], "hooks=null is not an option; available:"),
    (["+model.foo=1"], "model.foo is not a config key"),
    (["+foo=1"], "foo is not a config key"),
    (["+data.foo=1"], "data.foo is not a config key"),
    (["optimizer.lrr=1e-3"], "optimizer.lrr is not a config key; closest: optimizer.lr"),
    (["model.n_layer=abc"], "model.n_layer=abc is invalid"),
    (["+trainer.foo=1"], "trainer.foo is not a config key"),
    (["trainer.max_stepz=3"], "closest: trainer.max_steps"),
    (["-m", "optimizer.lr=1e-3,abc"], "optimizer.lr=abc is invalid"),
    (["optimizer.lr=1e-3,1e-2"], "is a sweep: add -m"),
    (["hydra.run.dir=/proc/lm-run"], "hydra.run.dir=/proc/lm-run cannot be written"),
])
def test_bad_overrides_are_named_in_one_line(args, says):
    from lm.config.overrides import check_overrides

    problem = check_overrides(args)  # defect 9: tracebacks, exit 0 or multi-line Hydra errors
    assert problem is not None and "\n" not in problem and says in problem, problem


@pytest.mark.slow  # a process; test_config checks exit code 2 through one too
def test_a_bad_override_exits_2_before_anything_is_written(tmp_path, corpus):
    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    proc = cli(tmp_path, "+model.foo=1")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("error: model.foo is not a config key"), err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_registry_or_data_dir_is_one_line(make_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="tracking.registry_dir=.* cannot be written"):
        run(make_cfg(f"tracking.registry_dir={blocker / 'reg'}"))
    from lm.data.corpus import DataError

    with pytest.raises(DataError, match="paths.data_dir=.* cannot be written"):
        run(make_cfg(f"paths.data_dir={blocker / 'data'}"))


def test_unknown_keys_fail_through_the_compose_api_too(make_cfg):
    with pytest.raises(ConfigError, match="data.foo is not a config key"):
        run(make_cfg("+data.foo=1"))
    cfg = compose_config(["paths.output_dir=x", "+trainer.detect_anomaly=false"])  # a Trainer argument
    from lm.config.validate import unknown_key

    assert unknown_key(cfg) is None



def test_weights_made_non_finite_by_an_update_are_never_saved(make_cfg, tmp_path):
    class Overflow(L.Callback):  # an update that overflows while loss and gradient are finite
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 4:  # not a validation step (every 3)
                with torch.no_grad():
                    next(pl_module.parameters()).fill_(math.inf)

    rec = run(make_cfg("tracking.checkpoint_every_n_steps=1", out="inf"), extra_callbacks=[Overflow()])
    assert rec["status"] == "diverged" and rec["error"] == "non-finite weights after step 4"
    state = torch.load(tmp_path / "inf" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
