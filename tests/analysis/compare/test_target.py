"""lm/analysis/compare/target.py: time to a target val/loss per run and per group, against
scipy, with elapsed seconds logged or taken from event wall times.

Run dirs are fabricated (val/loss and wallclock/elapsed_s events); nothing trains.
"""

import csv

import numpy as np
import pytest
from scipy import stats

from lm.analysis.compare.report import compare
from lm.analysis.compare.runs import val_curve
from lm.analysis.compare.target import step_range, time_to_target
from tests.analysis.conftest import CURVE, make_run, run_main


def test_time_to_target_is_the_first_validation_at_or_below_it(tmp_path):
    curve = val_curve(make_run(tmp_path, "r", curve=CURVE, elapsed=[5.0, 10.0, 15.0]))
    assert not curve.from_wall_time
    assert time_to_target(curve, 1.8) == (30, 15.0)
    assert time_to_target(curve, 2.0) == (20, 10.0)  # <= counts
    assert time_to_target(curve, 1.0) is None
    gap = val_curve(make_run(tmp_path, "gap", curve=CURVE, elapsed=[5.0, None, 15.0]))
    assert time_to_target(gap, 2.5) == (20, None)  # reached, time not known


def test_without_time_elapsed_s_seconds_come_from_event_wall_times(tmp_path, capsys):
    run = make_run(tmp_path, "old", curve=CURVE, wall_times=(1000.0, [1004.0, 1010.0, 1017.5]))
    curve = val_curve(run)
    assert curve.from_wall_time
    assert curve.elapsed_s.tolist() == pytest.approx([4.0, 10.0, 17.5])
    assert time_to_target(curve, 1.8) == (30, 17.5)
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
    base, abl = compare([str(tmp_path)], target=1.8)["rows"]
    assert base["target_time_ci_low"] == pytest.approx(16.5 - stats.t.ppf(0.975, 1) * 1.5)
    assert abl["target_time_diff"] == pytest.approx(12.0 - 16.5)
    assert abl["target_time_ci_low"] is abl["target_time_diff_ci_low"] is abl["target_time_p"] is None
    nobody = compare([str(tmp_path)], target=0.5)["rows"][0]
    assert nobody["target_reached"] == 0 and nobody["target_time_mean"] is None


def test_target_steps_are_integers(tmp_path, capsys):
    make_run(tmp_path, "a0", {"seed": 0}, curve=CURVE, elapsed=[1.0, 2.0, 3.0])
    make_run(tmp_path, "a1", {"seed": 1}, curve=CURVE, elapsed=[1.0, 2.5, 3.5])
    make_run(tmp_path, "b0", {"seed": 0, "optimizer.lr": 3e-3}, curve=CURVE,
             elapsed=[1.0, 2.0, 3.0])
    make_run(tmp_path, "b1", {"seed": 1, "optimizer.lr": 3e-3},
             curve=[(10, 3.0), (20, 2.5), (30, 1.5)], elapsed=[1.0, 2.0, 3.0])
    code, stdout, _ = run_main(capsys, tmp_path, "--target", "2.0", "--out", tmp_path / "r")
    assert code == 0
    table = stdout.split("Time to val/loss <= 2")[1]
    assert "| baseline | 2 of 2 | 2.25 | [-0.93, 5.43] | 20 |" in table
    assert "| optimizer.lr=3e-3 | 2 of 2 | 2.50 | [-3.85, 8.85] | 20–30 |" in table
    assert "20.0" not in table and "25.0" not in table
    assert step_range("- -") == "-"
