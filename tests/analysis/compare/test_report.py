"""lm/analysis/compare/report.py and cli.py: the report files, what is printed, flags,
notes and warnings, exit codes.

Run dirs are fabricated (config.yaml, run.json, a few val/loss events); nothing trains.
"""

import csv
import json

import pytest

from lm.analysis.compare.report import sparse_curves
from lm.analysis.compare.runs import load_run
from lm.analysis.compare.stats import welch
from lm.commands.compare import main
from tests.analysis.conftest import CURVE, make_run, run_main

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


def test_sweep_dir_gives_welch_row_and_default_out_dir(lr_sweep, capsys, monkeypatch):
    monkeypatch.chdir(lr_sweep.parent)
    code, out, _ = run_main(capsys, lr_sweep)
    assert code == 0
    rows = list(csv.DictReader((lr_sweep / "report.csv").open()))
    diff, low, high, p = welch([1.8, 1.85], [2.0, 2.1])
    assert float(rows[1]["diff"]) == pytest.approx(diff)
    assert (float(rows[1]["ci_low"]), float(rows[1]["ci_high"])) == pytest.approx((low, high))
    assert float(rows[1]["p"]) == pytest.approx(p)
    assert "| optimizer.lr=3e-4 | optimizer.lr: 1e-3 -> 3e-4 | 0 1 | 2 |" in out
    assert [r["group"] for r in rows] == ["baseline", "optimizer.lr=3e-4"]



# --- flags, notes and warnings -------------------------------------------------------


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


def test_one_seed_is_explained_under_the_table(tmp_path, capsys):
    make_run(tmp_path, "a0", {"seed": 0})
    make_run(tmp_path, "a1", {"seed": 1})
    make_run(tmp_path, "b0", {"optimizer.lr": 3e-3})
    out = tmp_path / "r"
    code, stdout, _ = run_main(capsys, tmp_path, "--out", out)
    assert code == 0
    report = (out / "report.md").read_text()
    table_end = report.index("| optimizer.lr=3e-3 |")
    note = report.index("note: one seed (n=1) in `optimizer.lr=3e-3`: a 95% CI and a p need")
    assert table_end < note < report.index("## Flags")
    assert "`seed=0,1,2`" in report and "note: one seed (n=1)" in stdout
    make_run(tmp_path, "b1", {"optimizer.lr": 3e-3, "seed": 1})
    code, stdout, _ = run_main(capsys, tmp_path, "--out", out)
    assert code == 0 and "note: one seed" not in stdout + (out / "report.md").read_text()


def test_a_run_with_too_few_points_gets_a_warning(tmp_path, capsys):
    short = make_run(tmp_path, "short", {"seed": 0}, curve=[(10, 3.0), (20, 2.0)])
    make_run(tmp_path, "full", {"seed": 1}, curve=CURVE)
    out = tmp_path / "r"
    code, _, err = run_main(capsys, tmp_path, "--out", out)
    assert code == 0
    line = (f"{short} has 2 val/loss points: its curve is not worth plotting; validate more "
            "often (trainer.val_check_interval) or train longer")
    assert err.splitlines() == [f"warning: {line}"]
    curves = (out / "report.md").read_text().split("## val/loss curves")[1]
    assert f"fewer than 3 val/loss points (their curves say little):\n\n- {line}" in curves
    one = make_run(tmp_path / "more", "one", curve=[(10, 3.0)])
    [warning] = sparse_curves([load_run(one)])
    assert warning == line.replace(f"{short} has 2 val/loss points", f"{one} has 1 val/loss point")



# --- errors --------------------------------------------------------------------------


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    make_run(tmp_path, "run")
    code, _, err = run_main(capsys, tmp_path / "missing*")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    code, _, err = run_main(capsys, tmp_path / "run", "--baseline", "optimizer.lr=0.5")
    assert code == 2 and "matches no run" in err and err.count("\n") == 1


def test_target_must_be_a_finite_number(tmp_path, capsys):
    run = make_run(tmp_path, "r")
    for bad in ["nan", "low"]:
        with pytest.raises(SystemExit) as exit_info:
            main([str(run), "--target", bad])
        assert exit_info.value.code == 2
        assert "--target" in capsys.readouterr().err
