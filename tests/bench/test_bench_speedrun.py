"""lm bench speedrun: the two recipes alternate, each run's run.json and whole-split
val/loss reach the table, and the ratio line is theirs. The fast tests stand in for the
``python -m lm train`` process (``speedrun.launch``): in-process tiny runs, or made-up
results; the slow one starts the real processes."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from lm.bench import speedrun
from lm.cli import main as lm
from lm.config.compose import compose_config
from lm.training.run import run
from tests.conftest import hand_whole_split_loss, validation_ids

RECIPES = ("baseline", "speedrun_cpu")


def bench_args(tmp_path, corpus, *extra: str) -> list[str]:
    """``lm bench speedrun`` on the tiny model and corpus: 6 steps, validation every 3."""
    overrides = ["model=tiny", "data=text_file", f"data.path={corpus}", "data.eval_iters=2",
                 "data.batch_size=4", "data.eval_batch_size=4", "logger=none"]
    return ["bench", "speedrun", "runs=1", "max_steps=6", "val_check_interval=3",
            "target=10.0", f"data_dir={tmp_path / 'data'}",
            f"overrides=[{','.join(json.dumps(o) for o in overrides)}]", *extra]


def value_of(overrides: list[str], key: str) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}="))


def test_runs_alternate_and_the_table_shows_each_runs_record(tmp_path, corpus, monkeypatch, capsys):
    runs = []  # (recipe, run.json, whole-split loss by hand) in launch order

    def launch(overrides):  # lm train in this process, in the run dir the bench reads
        run_dir = value_of(overrides, "hydra.run.dir")
        train = [o for o in overrides if not o.startswith("hydra.")]
        record = run(compose_config([*train, f"paths.output_dir={run_dir}"]))
        model, ids, _, _ = validation_ids(record["checkpoints"]["last"], corpus)
        runs.append((value_of(overrides, "experiment"), record, hand_whole_split_loss(model, ids)[0]))
        return subprocess.CompletedProcess(["lm", "train"], 0, "", "")

    monkeypatch.setattr(speedrun, "launch", launch)
    assert lm(bench_args(tmp_path, corpus)) == 0
    out = capsys.readouterr().out
    assert [recipe for recipe, _, _ in runs] == list(RECIPES)
    times = []
    for recipe, record, whole in runs:
        reached = record["target"]["reached"]
        assert reached["step"] == 3  # val/loss <= 10 at the first validation
        row = re.search(rf"^{recipe} +1 +(\S+) +(\S+) +(\S+) +(\S+) +(\S+)$", out, re.MULTILINE)
        assert row, out
        assert row.groups() == ("3", f"{reached['elapsed_s']:.1f}", f"{record['wall_time_s']:.1f}",
                                f"{record['metrics']['final']['val/loss']:.4f}", f"{whole:.4f}")
        times.append(reached["elapsed_s"])
    b, s = times
    assert (f"time to val/loss <= 10.0: baseline {b:.1f} s, speedrun_cpu {s:.1f} s, "
            f"ratio {s / b:.2f} (goal <= 0.5)") in out
    assert out.count("# whole validation split: ") == 2


def fake_record(run_dir, reached: dict | None, wall_s: float) -> None:
    """A completed run.json without checkpoints (so no whole-split evaluation)."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({
        "status": "completed", "wall_time_s": wall_s, "metrics": {"final": {"val/loss": 2.5}},
        "target": {"val/loss": 10.0, "reached": reached}, "checkpoints": {"last": None},
    }))


def test_a_target_not_reached_or_a_failed_run_is_reported_not_raised(tmp_path, corpus,
                                                                      monkeypatch, capsys):
    calls = []

    def launch(overrides):  # baseline reaches the target; speedrun never; then both fail
        calls.append(value_of(overrides, "experiment"))
        run_dir = Path(value_of(overrides, "hydra.run.dir"))
        if len(calls) <= 2:
            reached = {"step": 3, "elapsed_s": 4.0} if calls[-1] == "baseline" else None
            fake_record(run_dir, reached, wall_s=5.0)
            return subprocess.CompletedProcess(["lm"], 0, "", "")
        return subprocess.CompletedProcess(["lm"], 1, "", "Traceback ...\nRuntimeError: boom\n")

    monkeypatch.setattr(speedrun, "launch", launch)
    assert lm([*bench_args(tmp_path, corpus, "runs=2")]) == 0
    out = capsys.readouterr().out
    assert calls == [*RECIPES, *RECIPES]  # alternating
    assert "speedrun_cpu run 1: completed in 5.0 s, final val/loss 2.5000; target not reached" in out
    assert "baseline run 2: failed (exit 1) (RuntimeError: boom)" in out
    assert re.search(r"^speedrun_cpu +1 +not reached +not reached +5\.0 ", out, re.MULTILINE)
    assert "time to val/loss <= 10.0: baseline not reached, speedrun_cpu not reached, " \
           "ratio not reached (goal <= 0.5)" in out
    assert "total wall time: baseline failed, speedrun_cpu failed, ratio failed" in out


@pytest.mark.parametrize("argv, message", [
    (["runs=0"], "runs=0 is invalid: must be an integer >= 1"),
    (["val_check_interval=0"], "val_check_interval=0 is invalid"),
    (["whole_split=some"], "whole_split=some is invalid: must be one of all | last | none"),
    (["speedrun=baseline"], "speedrun=baseline is invalid: it must differ from baseline"),
    (["speedrun=nosuch"], "experiment=nosuch is not an option"),
    (["overrides=[\"colour=red\"]"], "colour"),
])
def test_bad_settings_are_one_line_and_exit_2(argv, message, capsys):
    assert lm(["bench", "speedrun", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_the_real_processes(tmp_path, corpus, capsys):
    assert lm(bench_args(tmp_path, corpus)) == 0
    out = capsys.readouterr().out
    for recipe in RECIPES:
        assert re.search(rf"^{recipe} +1 +3 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$", out, re.MULTILINE), out
    assert re.search(r"^time to val/loss <= 10.0: baseline [\d.]+ s, speedrun_cpu [\d.]+ s, "
                     r"ratio [\d.]+ \(goal <= 0.5\)$", out, re.MULTILINE), out
