"""lm compare: groups named by their change from the baseline, values read with defaults
included, plot units and bands, the one-seed note, integer target steps, and the warning
for curves with too few points.

Run dirs are fabricated with ``tests/test_compare.py``'s helpers; nothing trains.
"""

import csv
import hashlib

import pytest

from lm.analysis import compare
from tests.analysis.conftest import CURVE, make_run, run_main


def report_files(out):
    """(report.md text, report.csv rows)."""
    return (out / "report.md").read_text(), list(csv.DictReader((out / "report.csv").open()))


# --- names ----------------------------------------------------------------------------


def test_groups_are_named_by_their_change_everywhere(tmp_path, capsys):
    for seed in (0, 1):
        make_run(tmp_path, f"a{seed}", {"seed": seed}, curve=CURVE, elapsed=[1.0, 2.0, 3.0])
        make_run(tmp_path, f"b{seed}", {"seed": seed, "optimizer.lr": 3e-3}, curve=CURVE,
                 elapsed=[1.0, 2.0, 3.0])
    make_run(tmp_path, "c0", {"optimizer.lr": 3e-4, "model.n_layer": 4})
    out = tmp_path / "r"
    code, stdout, _ = run_main(capsys, tmp_path, "--baseline", "optimizer.lr=1e-3",
                               "--target", "2.0", "--out", out)
    assert code == 0
    report, rows = report_files(out)
    names = ["baseline", "optimizer.lr=3e-3", "model.n_layer=4, optimizer.lr=3e-4"]
    assert [r["group"] for r in rows] == names
    assert "\nbaseline: model.n_layer=2, optimizer.lr=1e-3\n" in report
    assert stdout.startswith("baseline: model.n_layer=2, optimizer.lr=1e-3\n")
    for name in names:
        assert f"| {name} | " in report  # the table
        assert f"| {name} | " in stdout.split("Time to val/loss")[1]  # the --target table
    assert f"- optimizer.lr=3e-3 `{tmp_path / 'b1'}`: step 20" in report
    assert "G1" not in report and "G2" not in stdout
    result = compare.compare([str(tmp_path)], "optimizer.lr=1e-3")
    assert result["legends"] == ["baseline (model.n_layer=2, optimizer.lr=1e-3)",
                                 "optimizer.lr=3e-3", "model.n_layer=4, optimizer.lr=3e-4"]


def test_a_default_key_is_named_by_its_value_never_absent(tmp_path, capsys):
    """A model.norm=rmsnorm,layernorm sweep: layernorm is the hash-neutral default, left out
    of the hashable config; an older run's config.yaml lacks the key altogether."""
    make_run(tmp_path, "rms", {"model.norm": "rmsnorm"})
    make_run(tmp_path, "ln", {"model.norm": "layernorm", "seed": 1})
    make_run(tmp_path, "old", {"seed": 2})  # before model.norm existed: layernorm
    out = tmp_path / "r"
    code, stdout, _ = run_main(capsys, tmp_path, "--baseline", "model.norm=rmsnorm",
                               "--out", out)
    assert code == 0
    report, rows = report_files(out)
    assert [(r["group"], r["changes"], r["seeds"]) for r in rows] == [
        ("model.norm=layernorm", "model.norm: rmsnorm -> layernorm", "1 2"),
        ("baseline", "(baseline)", "0")]
    assert "baseline: model.norm=rmsnorm" in report
    assert compare.ABSENT not in report + stdout
    # an old run is picked by the default it predates
    rows = compare.compare([str(tmp_path)], "model.norm=layernorm")["rows"]
    assert [r["group"] for r in rows] == ["baseline", "model.norm=rmsnorm"]


def test_content_keys_are_compared_by_digest_and_named_by_path(tmp_path):
    corpus = tmp_path / "corpora"
    corpus.mkdir()
    for name, text in [("a.txt", "to be"), ("copy.txt", "to be"), ("c.txt", "or not")]:
        (corpus / name).write_text(text)
    runs = tmp_path / "runs"
    make_run(runs, "a", {"data.path": str(corpus / "a.txt")})
    make_run(runs, "copy", {"data.path": str(corpus / "copy.txt"), "seed": 1})  # same bytes
    make_run(runs, "c", {"data.path": str(corpus / "c.txt")})
    result = compare.compare([str(runs)], str(runs / "a"))
    digest = hashlib.sha256(b"or not").hexdigest()
    assert [r["group"] for r in result["rows"]] == [
        "baseline", f"data.path={corpus / 'c.txt'} (sha256 {digest[:8]})"]
    assert result["rows"][0]["n"] == 2
    assert result["legends"][1] == f"data.path=c.txt@{digest[:6]}"


def test_values_read_as_typed_and_long_ones_are_cut_in_legends():
    cases = {3e-4: "3e-4", 1e-3: "1e-3", 1.5e-3: "1.5e-3", 0.01: "0.01", 0.5: "0.5",
             10000.0: "10000.0", 1e6: "1e6", 0.0: "0.0", 1 / 3: repr(1 / 3)}
    for x, text in cases.items():
        assert compare.format_float(x) == text and float(text) == x
    assert compare.format_value([0.9, 0.95]) == "[0.9,0.95]"
    assert compare.format_value(None) == "null" and compare.format_value(False) == "false"
    hook = {"_target_": "lm.hooks.GradClipCustom", "max_norm": 1.0}
    full = compare.format_value(hook)
    assert full == "{_target_:lm.hooks.GradClipCustom,max_norm:1.0}"
    short = compare.legend_value(hook)
    assert len(short) == compare.LEGEND_VALUE_CHARS and short == full[:9] + "…" + full[-10:]


# --- plots ----------------------------------------------------------------------------


@pytest.fixture
def saved_axes(monkeypatch):
    """The axes each plot draws, kept instead of written (``{file name: axes}``)."""
    axes = {}

    def keep(fig, ax, path, target):
        axes[path.name] = ax

    monkeypatch.setattr(compare, "save_plot", keep)
    return axes


def test_plots_state_units_integer_steps_and_the_band(tmp_path, saved_axes):
    from matplotlib.ticker import MaxNLocator

    make_run(tmp_path, "a0", {"seed": 0}, curve=CURVE, elapsed=[1.0, 2.0, 3.0])
    make_run(tmp_path, "a1", {"seed": 1}, curve=[(10, 3.5), (20, 2.5), (30, 1.5)],
             elapsed=[1.0, 2.0, 3.0])
    make_run(tmp_path, "b0", {"optimizer.lr": 3e-3}, curve=CURVE, elapsed=[1.0, 2.0, 3.0])
    result = compare.compare([str(tmp_path)])
    compare.write_report(result, tmp_path / "r", "lm compare")
    steps, seconds = saved_axes["curves.png"], saved_axes["curves_time.png"]
    assert steps.get_ylabel() == seconds.get_ylabel() == "val/loss (nats/token)"
    assert steps.get_xlabel() == "step"
    assert seconds.get_xlabel() == "time since training began (s)"
    locator = steps.xaxis.get_major_locator()
    assert isinstance(locator, MaxNLocator) and locator._integer
    assert "95% t-CI of the mean" in steps.get_title()
    legend = ["baseline (optimizer.lr=1e-3) [n=2]", "optimizer.lr=3e-3 [n=1]"]
    assert steps.get_legend_handles_labels()[1] == legend
    assert seconds.get_legend_handles_labels()[1] == legend
    band, lone = steps.collections  # fill_between, one per group
    curve = compare.group_curve(result["groups"][0])
    top = band.get_paths()[0].vertices[:, 1]
    assert top.max() == pytest.approx(curve["ci_high"].max())
    assert top.min() == pytest.approx(curve["ci_low"].min())
    assert all(len(p.vertices) == 0 for p in lone.get_paths())  # n = 1: no band


# --- notes and warnings ---------------------------------------------------------------


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
    assert compare.step_range("- -") == "-"


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
    [warning] = compare.sparse_curves([compare.load_run(one)])
    assert warning == line.replace(f"{short} has 2 val/loss points", f"{one} has 1 val/loss point")
