"""lm/analysis/compare/runs.py: grouping by seed, repeats and failed, running or diverged
runs left out, unreadable run dirs, the baseline spec, the val/loss events of older runs.

Run dirs are fabricated (config.yaml, run.json, a few val/loss events); nothing trains.
"""

import csv
import json
import math

import pytest

from lm.analysis.compare.report import compare
from lm.analysis.compare.runs import OLD_ELAPSED_TAG, group_runs, load_run, val_curve
from tests.analysis.conftest import CURVE, make_run, run_main

# --- runs and groups ----------------------------------------------------------------


def test_runs_differing_only_in_seed_form_one_group(tmp_path):
    dirs = [make_run(tmp_path, "a", {"seed": 0}), make_run(tmp_path, "b", {"seed": 1}),
            make_run(tmp_path, "c", {"seed": 0, "optimizer.lr": 3e-4})]
    groups = group_runs([load_run(d) for d in dirs])
    assert [[r.dir.name for r in g.runs] for g in groups] == [["a", "b"], ["c"]]


def test_one_hash_on_different_code_is_flagged_and_counted_once(tmp_path):
    make_run(tmp_path, "1-old", code=("a" * 40, False), val_loss=2.0)
    make_run(tmp_path, "2-new", code=("a" * 40, True), val_loss=2.1)
    result = compare([str(tmp_path)])
    [flag] = result["code_flags"]
    assert "1-old (aaaaaaaa)" in flag and "2-new (aaaaaaaa+dirty)" in flag
    assert result["rows"][0]["n"] == 1  # same config and seed: not a second sample
    [excluded] = result["excluded"]
    assert "2-new" in excluded and "repeat of 1-old" in excluded


def test_failed_running_and_diverged_runs_are_listed_not_averaged(tmp_path):
    make_run(tmp_path, "s0", {"seed": 0}, val_loss=1.0)
    make_run(tmp_path, "s1", {"seed": 1}, val_loss=1.2)
    make_run(tmp_path, "s2", {"seed": 2}, status="failed")
    make_run(tmp_path, "s3", {"seed": 3}, status="running")
    make_run(tmp_path, "s4", {"seed": 4}, val_loss=math.nan, curve=[(9, 3.0), (19, math.nan)])
    result = compare([str(tmp_path)])
    [row] = result["rows"]
    assert row["n"] == 2 and row["seeds"] == "0 1"
    assert row["val_loss_mean"] == pytest.approx(1.1)
    excluded = "\n".join(result["excluded"])
    assert "s2" in excluded and "failed: RuntimeError: boom" in excluded
    assert "s3" in excluded and "running" in excluded
    assert "s4" in excluded and "diverged" in excluded



# --- unreadable runs ----------------------------------------------------------------


def test_an_unreadable_run_is_excluded_with_a_warning_line(tmp_path, capsys):
    base = make_run(tmp_path, "base", val_loss=2.25)
    abl = make_run(tmp_path, "abl", {"model.n_layer": 4}, val_loss=2.125)
    corrupt = make_run(tmp_path, "corrupt", {"seed": 1})
    (corrupt / "run.json").write_text('{"status": "compl')
    empty = make_run(tmp_path, "empty", {"seed": 2})
    (empty / "run.json").write_text("")
    out = tmp_path / "report"
    code, stdout, err = run_main(capsys, tmp_path, "--out", out)
    assert code == 0 and "Traceback" not in err
    warning = "warning: excluded from the comparison:"
    reason = "is not valid JSON (Unterminated string starting at: line 1 column 12 (char 11))"
    assert err.splitlines() == [f"{warning} {corrupt / 'run.json'} {reason}",
                                f"{warning} {empty / 'run.json'} is empty (0 bytes)"]
    assert f"excluded: {empty / 'run.json'} is empty (0 bytes)" in stdout
    rows = list(csv.DictReader((out / "report.csv").open()))  # runs in name order
    assert [r["run_dirs"] for r in rows] == [str(abl), str(base)]
    assert rows[1]["seeds"] == "0" and rows[1]["n"] == "1"  # seeds 1 and 2 were unreadable
    excluded = (out / "report.md").read_text().split("## Excluded runs")[1]
    assert f"- {corrupt / 'run.json'} is not valid JSON" in excluded
    assert f"- {empty / 'run.json'} is empty (0 bytes)" in excluded


def test_no_readable_run_is_one_line_and_exit_2(tmp_path, capsys):
    (make_run(tmp_path, "a") / "run.json").write_text("")
    (make_run(tmp_path, "b") / "config.yaml").write_text("")
    code, _, err = run_main(capsys, tmp_path)
    assert code == 2 and err.startswith("error: no run could be read (2 unreadable; first: ")
    assert err.count("\n") == 1 and "is empty (0 bytes)" in err


def test_a_run_json_that_is_not_a_run_record_is_excluded_with_a_warning_line(tmp_path, capsys):
    base = make_run(tmp_path / "sweep", "base", val_loss=2.25)
    seed1 = make_run(tmp_path / "sweep", "base1", {"seed": 1}, val_loss=2.5)
    empty = make_run(tmp_path / "sweep", "empty", {"seed": 2})
    (empty / "run.json").write_text("{}")
    no_hash = make_run(tmp_path / "sweep", "nohash", {"seed": 3})
    (no_hash / "run.json").write_text('{"status": "completed"}')
    # a pointer (same_as) needs no status or hash of its own: its target is read
    target = make_run(tmp_path / "registry", "lr", {"optimizer.lr": 3e-4}, val_loss=2.0)
    pointer = make_run(tmp_path / "sweep", "pointer", {"optimizer.lr": 3e-4})
    (pointer / "run.json").write_text(json.dumps({"same_as": str(target)}))
    out = tmp_path / "report"
    code, stdout, err = run_main(capsys, tmp_path / "sweep", "--out", out)
    assert code == 0
    warning, rule = "warning: excluded from the comparison:", "(lm train writes both)"
    assert err.splitlines() == [
        f"{warning} {empty / 'run.json'} is not a run record: it has no status and no hash {rule}",
        f"{warning} {no_hash / 'run.json'} is not a run record: it has no hash {rule}"]
    assert "(, seed" not in stdout and "None" not in stdout
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [(r["group"], r["seeds"], r["run_dirs"]) for r in rows] == [
        ("baseline", "0 1", f"{base} {seed1}"), ("optimizer.lr=3e-4", "0", str(target))]
    assert float(rows[0]["val_loss_mean"]) == 2.375  # the good runs are still compared

    code, _, err = run_main(capsys, empty, "--out", out)  # no run left: refused
    assert code == 2 and err == (f"error: no run could be read (1 unreadable; first: "
                                 f"{empty / 'run.json'} is not a run record: it has no status "
                                 "and no hash (lm train writes both))\n")



# --- the baseline and the curves -----------------------------------------------------


def test_baseline_by_override_hash_prefix_and_run_dir(lr_sweep):
    job2 = sorted(lr_sweep.iterdir())[2]
    for spec in ["optimizer.lr=3e-4", "optimizer.lr=0.0003", job2.name.split("-")[1][:6],
                 str(job2)]:
        rows = compare([str(lr_sweep)], spec)["rows"]
        assert [r["baseline"] for r in rows] == [False, True], spec
        assert [r["group"] for r in rows] == ["optimizer.lr=1e-3", "baseline"]
        assert rows[0]["changes"] == "optimizer.lr: 3e-4 -> 1e-3"


def test_older_runs_events_under_tb_and_old_elapsed_tag_are_read(tmp_path):
    """Runs recorded before events moved into the run dir (``tb/``) and before
    ``time/elapsed_s`` became ``wallclock/elapsed_s`` read as new ones."""
    run = make_run(tmp_path, "r", curve=CURVE, elapsed=[5.0, 10.0, 15.0])
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not events")
    before = val_curve(run)
    old = make_run(tmp_path, "old", curve=CURVE, elapsed=[5.0, 10.0, 15.0],
                   elapsed_tag=OLD_ELAPSED_TAG)
    (old / "tb").mkdir()
    for events in old.glob("events.out.tfevents.*"):
        events.rename(old / "tb" / events.name)
    after = val_curve(old)
    assert after.loss.to_dict() == before.loss.to_dict() == dict(CURVE)
    assert after.elapsed_s.tolist() == before.elapsed_s.tolist() == [5.0, 10.0, 15.0]
    assert not after.from_wall_time
