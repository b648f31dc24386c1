"""lm/analysis/compare/labels.py: groups named by their change from the baseline, values
read with defaults included and written as typed, long ones cut in legends.

Run dirs are fabricated with ``tests/analysis/conftest.py``'s helpers; nothing trains.
"""

from lm.analysis.compare.configs import ABSENT
from lm.analysis.compare.labels import LEGEND_VALUE_CHARS, format_float, format_value, legend_value
from lm.analysis.compare.report import compare
from tests.analysis.conftest import CURVE, make_run, report_files, run_main


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
    result = compare([str(tmp_path)], "optimizer.lr=1e-3")
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
    assert ABSENT not in report + stdout
    # an old run is picked by the default it predates
    rows = compare([str(tmp_path)], "model.norm=layernorm")["rows"]
    assert [r["group"] for r in rows] == ["baseline", "model.norm=rmsnorm"]


def test_values_read_as_typed_and_long_ones_are_cut_in_legends():
    cases = {3e-4: "3e-4", 1e-3: "1e-3", 1.5e-3: "1.5e-3", 0.01: "0.01", 0.5: "0.5",
             10000.0: "10000.0", 1e6: "1e6", 0.0: "0.0", 1 / 3: repr(1 / 3)}
    for x, text in cases.items():
        assert format_float(x) == text and float(text) == x
    assert format_value([0.9, 0.95]) == "[0.9,0.95]"
    assert format_value(None) == "null" and format_value(False) == "false"
    hook = {"_target_": "lm.hooks.GradClipCustom", "max_norm": 1.0}
    full = format_value(hook)
    assert full == "{_target_:lm.hooks.GradClipCustom,max_norm:1.0}"
    short = legend_value(hook)
    assert len(short) == LEGEND_VALUE_CHARS and short == full[:9] + "…" + full[-10:]
