"""lm compare: grouping by seed, config diffs, Welch statistics, flags, report files,
time to a target loss.

Run dirs are fabricated (config.yaml, run.json, a few val/loss and wallclock/elapsed_s
events); nothing trains.
"""

import csv
import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from lm.analysis import compare
from lm.training.registry import config_hash, hashable_config
from tests.analysis.conftest import CURVE, make_config, make_run, run_main

# --- grouping and diffs ----------------------------------------------------------------


def test_runs_differing_only_in_seed_form_one_group(tmp_path):
    dirs = [make_run(tmp_path, "a", {"seed": 0}), make_run(tmp_path, "b", {"seed": 1}),
            make_run(tmp_path, "c", {"seed": 0, "optimizer.lr": 3e-4})]
    groups = compare.group_runs([compare.load_run(d) for d in dirs])
    assert [[r.dir.name for r in g.runs] for g in groups] == [["a", "b"], ["c"]]


def test_config_diff_gives_nested_keys_old_to_new_without_seed_or_excluded_keys():
    base = hashable_config(make_config())
    other = hashable_config(make_config({
        "seed": 7, "optimizer.lr": 3e-4, "model.n_layer": 4,
        "trainer.log_every_n_steps": 1, "paths.output_dir": "elsewhere",  # not in the hash
    }))
    assert compare.config_diff(base, other) == [("model.n_layer", 2, 4), ("optimizer.lr", 1e-3, 3e-4)]
    other["model"]["bias"] = False
    assert ("model.bias", compare.ABSENT, False) in compare.config_diff(base, other)
    assert compare.describe_diff([("optimizer.lr", 1e-3, 3e-4)]) == "optimizer.lr: 1e-3 -> 3e-4"


def test_adding_a_hook_is_one_change_and_reordering_hooks_is_one_too():
    clip = {"_target_": "lm.hooks.GradClipCustom", "max_norm": 1.0}
    z = {"_target_": "lm.hooks.ZLoss", "weight": 1e-4}
    base = {"seed": 0, "hooks": {"order": []}}
    one = {"seed": 0, "hooks": {"order": ["grad_clip_custom"], "grad_clip_custom": clip}}
    assert compare.config_diff(base, one) == [("hooks.grad_clip_custom", compare.ABSENT, clip)]
    ab = {"seed": 0, "hooks": {"order": ["grad_clip_custom", "z_loss"],
                               "grad_clip_custom": clip, "z_loss": z}}
    ba = {"seed": 0, "hooks": {**ab["hooks"], "order": ["z_loss", "grad_clip_custom"]}}
    assert compare.config_diff(ab, ba) == [
        ("hooks.order", ["grad_clip_custom", "z_loss"], ["z_loss", "grad_clip_custom"])]
    changed = {"seed": 0, "hooks": {"order": ["grad_clip_custom"],
                                    "grad_clip_custom": {**clip, "max_norm": 0.5}}}
    assert compare.config_diff(one, changed) == [("hooks.grad_clip_custom.max_norm", 1.0, 0.5)]


# --- statistics ----------------------------------------------------------------------


def test_mean_std_is_sample_std_and_undefined_for_one_value():
    assert compare.mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, statistics.stdev([1, 2, 4])))
    assert compare.mean_std([1.5]) == (1.5, None)


def test_welch_df_by_hand():
    # a = [1, 2, 3, 4]: var 5/3, n 4; b = [2, 4, 6]: var 4, n 3.
    qa, qb = (5 / 3) / 4, 4 / 3
    by_hand = (qa + qb) ** 2 / (qa**2 / 3 + qb**2 / 2)
    assert compare.welch_df(5 / 3, 4, 4.0, 3) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(3.2347, abs=1e-4)


def test_welch_matches_scipy_and_a_hand_computed_interval():
    a, b = [2.31, 2.35, 2.29, 2.40], [2.45, 2.41, 2.52]
    diff, low, high, p = compare.welch(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(reference.pvalue, rel=1e-12)
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    se = math.sqrt(va / 4 + vb / 3)
    df = (va / 4 + vb / 3) ** 2 / ((va / 4) ** 2 / 3 + (vb / 3) ** 2 / 2)
    half = stats.t.ppf(0.975, df) * se
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (low, high) == pytest.approx((diff - half, diff + half))
    assert (low, high) == pytest.approx(tuple(reference.confidence_interval(0.95)))
    assert low < diff < high < 0


# --- flags ---------------------------------------------------------------------------


def test_multi_key_ablation_warns_and_strict_exits_1(tmp_path, capsys):
    make_run(tmp_path, "base0", {"seed": 0})
    make_run(tmp_path, "base1", {"seed": 1})
    make_run(tmp_path, "both", {"optimizer.lr": 3e-4, "model.n_layer": 4})
    args = [tmp_path / "base0", tmp_path / "base1", tmp_path / "both", "--out", tmp_path / "r"]
    code, out, _ = run_main(capsys, *args)
    assert code == 0
    assert "warning: model.n_layer=4, optimizer.lr=3e-4 changes 2 keys" in out
    code, _, err = run_main(capsys, *args, "--strict")
    assert code == 1 and "--strict" in err


def test_one_change_is_not_flagged(tmp_path, capsys):
    make_run(tmp_path, "base", {"seed": 0})
    make_run(tmp_path, "lr", {"optimizer.lr": 3e-4})
    code, out, _ = run_main(capsys, tmp_path / "base", tmp_path / "lr", "--strict",
                            "--out", tmp_path / "r")
    assert code == 0 and "warning" not in out


def test_one_hash_on_different_code_is_flagged_and_counted_once(tmp_path):
    make_run(tmp_path, "1-old", code=("a" * 40, False), val_loss=2.0)
    make_run(tmp_path, "2-new", code=("a" * 40, True), val_loss=2.1)
    result = compare.compare([str(tmp_path)])
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
    result = compare.compare([str(tmp_path)])
    [row] = result["rows"]
    assert row["n"] == 2 and row["seeds"] == "0 1"
    assert row["val_loss_mean"] == pytest.approx(1.1)
    excluded = "\n".join(result["excluded"])
    assert "s2" in excluded and "failed: RuntimeError: boom" in excluded
    assert "s3" in excluded and "running" in excluded
    assert "s4" in excluded and "diverged" in excluded


# --- baseline selection and paths ----------------------------------------------------------------


@pytest.fixture
def lr_sweep(tmp_path):
    """A sweep dir: lr 1e-3 and 3e-4, two seeds each (jobs 0-3)."""
    sweep = tmp_path / "sweep"
    for job, (lr, seed, loss) in enumerate([(1e-3, 0, 2.0), (1e-3, 1, 2.1),
                                            (3e-4, 0, 1.8), (3e-4, 1, 1.85)]):
        cfg = make_config({"optimizer.lr": lr, "seed": seed})
        make_run(sweep, f"{job}-{config_hash(cfg)[:8]}", {"optimizer.lr": lr, "seed": seed},
                 val_loss=loss)
    return sweep


def test_baseline_by_override_hash_prefix_and_run_dir(lr_sweep):
    job2 = sorted(lr_sweep.iterdir())[2]
    for spec in ["optimizer.lr=3e-4", "optimizer.lr=0.0003", job2.name.split("-")[1][:6],
                 str(job2)]:
        rows = compare.compare([str(lr_sweep)], spec)["rows"]
        assert [r["baseline"] for r in rows] == [False, True], spec
        assert [r["group"] for r in rows] == ["optimizer.lr=1e-3", "baseline"]
        assert rows[0]["changes"] == "optimizer.lr: 3e-4 -> 1e-3"


def test_sweep_dir_gives_welch_row_and_default_out_dir(lr_sweep, capsys, monkeypatch):
    monkeypatch.chdir(lr_sweep.parent)
    code, out, _ = run_main(capsys, lr_sweep)
    assert code == 0
    rows = list(csv.DictReader((lr_sweep / "report.csv").open()))
    diff, low, high, p = compare.welch([1.8, 1.85], [2.0, 2.1])
    assert float(rows[1]["diff"]) == pytest.approx(diff)
    assert (float(rows[1]["ci_low"]), float(rows[1]["ci_high"])) == pytest.approx((low, high))
    assert float(rows[1]["p"]) == pytest.approx(p)
    assert "| optimizer.lr=3e-4 | optimizer.lr: 1e-3 -> 3e-4 | 0 1 | 2 |" in out
    assert [r["group"] for r in rows] == ["baseline", "optimizer.lr=3e-4"]


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    make_run(tmp_path, "run")
    code, _, err = run_main(capsys, tmp_path / "missing*")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    code, _, err = run_main(capsys, tmp_path / "run", "--baseline", "optimizer.lr=0.5")
    assert code == 2 and "matches no run" in err and err.count("\n") == 1


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


# --- written files -------------------------------------------------------------------


def test_report_files_hold_the_run_json_values(tmp_path, capsys):
    base = make_run(tmp_path, "base", val_loss=2.25)
    abl = make_run(tmp_path, "abl", {"model.n_layer": 4}, val_loss=2.125)
    out = tmp_path / "report"
    code, stdout, _ = run_main(capsys, base, abl, "--out", out)
    assert code == 0 and "| baseline | (baseline) |" in stdout
    rows = list(csv.DictReader((out / "report.csv").open()))
    for row, run_dir in zip(rows, [base, abl]):
        final = json.loads((run_dir / "run.json").read_text())["metrics"]["final"]
        assert float(row["val_loss_mean"]) == final["val/loss"]
        assert float(row["val_ppl_mean"]) == final["val/ppl"]
        assert row["val_loss_std"] == row["ci_low"] == row["p"] == ""  # n = 1
    assert float(rows[1]["diff"]) == pytest.approx(2.125 - 2.25)
    report = (out / "report.md").read_text()
    assert "lm compare" in report and "model.n_layer: 2 -> 4" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_group_curve_band_is_the_t_interval_of_the_mean_at_each_step(tmp_path):
    # Step 9: 3.0, 4.0, 3.5 (mean 3.5, s 0.5, n 3); step 19: 2.0, 2.5 (mean 2.25, s √0.125,
    # n 2); step 29: seed 0 alone (no band).
    make_run(tmp_path, "s0", {"seed": 0}, curve=[(9, 3.0), (19, 2.0), (29, 1.5)])
    make_run(tmp_path, "s1", {"seed": 1}, curve=[(9, 4.0), (19, 2.5)])
    make_run(tmp_path, "s2", {"seed": 2}, curve=[(9, 3.5)])
    [group] = compare.compare([str(tmp_path)])["groups"]
    curve = compare.group_curve(group)
    assert list(curve.index) == [9, 19, 29] and curve["n"].tolist() == [3, 2, 1]
    assert curve["mean"].tolist() == pytest.approx([3.5, 2.25, 1.5])
    half_9 = 4.302652729911275 * 0.5 / math.sqrt(3)  # t_{0.975, 2} = 4.3027
    half_19 = 12.706204736174707 * math.sqrt(0.125) / math.sqrt(2)  # t_{0.975, 1} = 12.706
    assert curve["ci_low"].tolist()[:2] == pytest.approx([3.5 - half_9, 2.25 - half_19])
    assert curve["ci_high"].tolist()[:2] == pytest.approx([3.5 + half_9, 2.25 + half_19])
    assert math.isnan(curve["ci_low"].iloc[2]) and math.isnan(curve["ci_high"].iloc[2])


# --- time to a target loss -----------------------------------------------------------



def test_time_to_target_is_the_first_validation_at_or_below_it(tmp_path):
    curve = compare.val_curve(make_run(tmp_path, "r", curve=CURVE, elapsed=[5.0, 10.0, 15.0]))
    assert not curve.from_wall_time
    assert compare.time_to_target(curve, 1.8) == (30, 15.0)
    assert compare.time_to_target(curve, 2.0) == (20, 10.0)  # <= counts
    assert compare.time_to_target(curve, 1.0) is None
    gap = compare.val_curve(make_run(tmp_path, "gap", curve=CURVE, elapsed=[5.0, None, 15.0]))
    assert compare.time_to_target(gap, 2.5) == (20, None)  # reached, time not known


def test_older_runs_events_under_tb_and_old_elapsed_tag_are_read(tmp_path):
    """Runs recorded before events moved into the run dir (``tb/``) and before
    ``time/elapsed_s`` became ``wallclock/elapsed_s`` read as new ones."""
    run = make_run(tmp_path, "r", curve=CURVE, elapsed=[5.0, 10.0, 15.0])
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not events")
    before = compare.val_curve(run)
    old = make_run(tmp_path, "old", curve=CURVE, elapsed=[5.0, 10.0, 15.0],
                   elapsed_tag=compare.OLD_ELAPSED_TAG)
    (old / "tb").mkdir()
    for events in old.glob("events.out.tfevents.*"):
        events.rename(old / "tb" / events.name)
    after = compare.val_curve(old)
    assert after.loss.to_dict() == before.loss.to_dict() == dict(CURVE)
    assert after.elapsed_s.tolist() == before.elapsed_s.tolist() == [5.0, 10.0, 15.0]
    assert not after.from_wall_time


def test_without_time_elapsed_s_seconds_come_from_event_wall_times(tmp_path, capsys):
    run = make_run(tmp_path, "old", curve=CURVE, wall_times=(1000.0, [1004.0, 1010.0, 1017.5]))
    curve = compare.val_curve(run)
    assert curve.from_wall_time
    assert curve.elapsed_s.tolist() == pytest.approx([4.0, 10.0, 17.5])
    assert compare.time_to_target(curve, 1.8) == (30, 17.5)
    code, stdout, _ = run_main(capsys, run, "--target", "1.8", "--out", tmp_path / "r")
    assert code == 0
    assert "logged no `wallclock/elapsed_s`" in stdout and str(run) in stdout
    notes = (tmp_path / "r" / "report.md").read_text().split("## val/loss curves")[1]
    assert f"Those runs: `{run}`." in notes


def test_target_statistics_match_scipy(tmp_path, capsys):
    # Baseline (lr 1e-3): seeds 0-2 reach 1.8 at 15, 17, 20.5 s; seed 3 never does.
    # Ablation (lr 3e-4): 10 and 12.5 s.
    base_times, abl_times = [15.0, 17.0, 20.5], [10.0, 12.5]
    for seed, t in enumerate(base_times):
        make_run(tmp_path, f"b{seed}", {"seed": seed}, curve=CURVE, elapsed=[t / 3, t / 2, t])
    make_run(tmp_path, "b3", {"seed": 3}, curve=[(10, 3.0), (20, 2.5), (30, 1.9)],
             elapsed=[5.0, 10.0, 15.0])
    for seed, t in enumerate(abl_times):
        make_run(tmp_path, f"c{seed}", {"seed": seed, "optimizer.lr": 3e-4}, curve=CURVE,
                 elapsed=[t / 3, t / 2, t])
    out = tmp_path / "r"
    code, stdout, _ = run_main(capsys, tmp_path, "--target", "1.8", "--out", out)
    assert code == 0
    base, abl = list(csv.DictReader((out / "report.csv").open()))
    assert (base["target_reached"], base["target_n"]) == ("3", "4")
    assert base["target_steps"] == "30 30 30 -"
    assert [float(t) for t in base["target_times_s"].split()[:3]] == base_times
    mean = np.mean(base_times)
    interval = stats.t.interval(0.95, len(base_times) - 1, loc=mean, scale=stats.sem(base_times))
    assert float(base["target_time_mean"]) == pytest.approx(mean)
    assert (float(base["target_time_ci_low"]), float(base["target_time_ci_high"])) == (
        pytest.approx(interval))
    assert base["target_time_diff"] == base["target_time_p"] == ""  # the baseline itself
    reference = stats.ttest_ind(abl_times, base_times, equal_var=False)
    assert float(abl["target_time_diff"]) == pytest.approx(np.mean(abl_times) - mean)
    assert (float(abl["target_time_diff_ci_low"]), float(abl["target_time_diff_ci_high"])) == (
        pytest.approx(tuple(reference.confidence_interval(0.95))))
    assert float(abl["target_time_p"]) == pytest.approx(reference.pvalue, rel=1e-12)
    assert "Time to val/loss <= 1.8" in stdout and "| baseline | 3 of 4 |" in stdout
    report = (out / "report.md").read_text()
    assert "## Time to val/loss <= 1.8" in report and "![" in report
    assert f"- baseline `{tmp_path / 'b3'}`: not reached (lowest val/loss 1.9000)" in report
    assert f"- optimizer.lr=3e-4 `{tmp_path / 'c1'}`: step 30, 12.50 s" in report
    assert "(curves_time.png)" in report and "logged no" not in report  # no fallback
    assert (out / "curves_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_run_reaching_the_target_gives_a_point_difference_only(tmp_path):
    make_run(tmp_path, "b0", {"seed": 0}, curve=CURVE, elapsed=[5.0, 10.0, 15.0])
    make_run(tmp_path, "b1", {"seed": 1}, curve=CURVE, elapsed=[6.0, 12.0, 18.0])
    make_run(tmp_path, "c0", {"optimizer.lr": 3e-4}, curve=CURVE, elapsed=[4.0, 8.0, 12.0])
    base, abl = compare.compare([str(tmp_path)], target=1.8)["rows"]
    assert base["target_time_ci_low"] == pytest.approx(16.5 - stats.t.ppf(0.975, 1) * 1.5)
    assert abl["target_time_diff"] == pytest.approx(12.0 - 16.5)
    assert abl["target_time_ci_low"] is abl["target_time_diff_ci_low"] is abl["target_time_p"] is None
    nobody = compare.compare([str(tmp_path)], target=0.5)["rows"][0]
    assert nobody["target_reached"] == 0 and nobody["target_time_mean"] is None


def test_group_time_curve_averages_loss_and_seconds_per_step(tmp_path):
    make_run(tmp_path, "s0", {"seed": 0}, curve=[(10, 3.0), (20, 2.0)], elapsed=[5.0, 10.0])
    make_run(tmp_path, "s1", {"seed": 1}, curve=[(10, 4.0), (20, 2.5)], elapsed=[7.0, 14.0])
    [group] = compare.compare([str(tmp_path)])["groups"]
    curve = compare.group_time_curve(group)
    assert curve["elapsed_s"].tolist() == pytest.approx([6.0, 12.0])
    assert curve["mean"].tolist() == pytest.approx([3.5, 2.25])


def test_target_must_be_a_finite_number(tmp_path, capsys):
    run = make_run(tmp_path, "r")
    for bad in ["nan", "low"]:
        with pytest.raises(SystemExit) as exit_info:
            compare.main([str(run), "--target", bad])
        assert exit_info.value.code == 2
        assert "--target" in capsys.readouterr().err
