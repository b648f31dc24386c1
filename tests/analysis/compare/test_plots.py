"""lm/analysis/compare/plots.py: the per-step mean and its t band, the time curve, and what
the figures state (units, integer steps, legends)."""

import math

import pytest

from lm.analysis.compare import plots
from lm.analysis.compare.plots import group_curve, group_time_curve
from lm.analysis.compare.report import compare, write_report
from tests.analysis.conftest import CURVE, make_run


def test_group_curve_band_is_the_t_interval_of_the_mean_at_each_step(tmp_path):
    # Step 9: 3.0, 4.0, 3.5 (mean 3.5, s 0.5, n 3); step 19: 2.0, 2.5 (mean 2.25, s √0.125,
    # n 2); step 29: seed 0 alone (no band).
    make_run(tmp_path, "s0", {"seed": 0}, curve=[(9, 3.0), (19, 2.0), (29, 1.5)])
    make_run(tmp_path, "s1", {"seed": 1}, curve=[(9, 4.0), (19, 2.5)])
    make_run(tmp_path, "s2", {"seed": 2}, curve=[(9, 3.5)])
    [group] = compare([str(tmp_path)])["groups"]
    curve = group_curve(group)
    assert list(curve.index) == [9, 19, 29] and curve["n"].tolist() == [3, 2, 1]
    assert curve["mean"].tolist() == pytest.approx([3.5, 2.25, 1.5])
    half_9 = 4.302652729911275 * 0.5 / math.sqrt(3)  # t_{0.975, 2} = 4.3027
    half_19 = 12.706204736174707 * math.sqrt(0.125) / math.sqrt(2)  # t_{0.975, 1} = 12.706
    assert curve["ci_low"].tolist()[:2] == pytest.approx([3.5 - half_9, 2.25 - half_19])
    assert curve["ci_high"].tolist()[:2] == pytest.approx([3.5 + half_9, 2.25 + half_19])
    assert math.isnan(curve["ci_low"].iloc[2]) and math.isnan(curve["ci_high"].iloc[2])


def test_group_time_curve_averages_loss_and_seconds_per_step(tmp_path):
    make_run(tmp_path, "s0", {"seed": 0}, curve=[(10, 3.0), (20, 2.0)], elapsed=[5.0, 10.0])
    make_run(tmp_path, "s1", {"seed": 1}, curve=[(10, 4.0), (20, 2.5)], elapsed=[7.0, 14.0])
    [group] = compare([str(tmp_path)])["groups"]
    curve = group_time_curve(group)
    assert curve["elapsed_s"].tolist() == pytest.approx([6.0, 12.0])
    assert curve["mean"].tolist() == pytest.approx([3.5, 2.25])


@pytest.fixture
def saved_axes(monkeypatch):
    """The axes each plot draws, kept instead of written (``{file name: axes}``)."""
    axes = {}

    def keep(fig, ax, path, target):
        axes[path.name] = ax

    monkeypatch.setattr(plots, "save_plot", keep)
    return axes


def test_plots_state_units_integer_steps_and_the_band(tmp_path, saved_axes):
    from matplotlib.ticker import MaxNLocator

    make_run(tmp_path, "a0", {"seed": 0}, curve=CURVE, elapsed=[1.0, 2.0, 3.0])
    make_run(tmp_path, "a1", {"seed": 1}, curve=[(10, 3.5), (20, 2.5), (30, 1.5)],
             elapsed=[1.0, 2.0, 3.0])
    make_run(tmp_path, "b0", {"optimizer.lr": 3e-3}, curve=CURVE, elapsed=[1.0, 2.0, 3.0])
    result = compare([str(tmp_path)])
    write_report(result, tmp_path / "r", "lm compare")
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
    curve = group_curve(result["groups"][0])
    top = band.get_paths()[0].vertices[:, 1]
    assert top.max() == pytest.approx(curve["ci_high"].max())
    assert top.min() == pytest.approx(curve["ci_low"].min())
    assert all(len(p.vertices) == 0 for p in lone.get_paths())  # n = 1: no band
