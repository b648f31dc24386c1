"""The figures of a comparison: ``curves.png`` (mean ``val/loss`` per group against step,
with a band for its 95% t interval) and ``curves_time.png`` (``val/loss`` against seconds
since training began), and the per-step means they draw. matplotlib and pandas are
imported when a figure is drawn, not with the module.
"""

from collections.abc import Sequence
from pathlib import Path

from lm.analysis.compare.runs import Group
from lm.analysis.compare.stats import mean_ci


def group_curve(group: Group):
    """Per step, over the group's valid runs that logged ``val/loss`` there: the mean
    (nats/token), its 95% t interval (``mean_ci``, the table's formula; NaN where n < 2)
    and n, as a DataFrame indexed by step (columns ``mean``, ``ci_low``, ``ci_high``,
    ``n``); None when no run has a curve."""
    import pandas as pd

    curves = [r.curve.loss for r in group.valid if r.curve is not None]
    if not curves:
        return None
    table = pd.concat(curves, axis=1)  # (steps, runs), NaN where a run has no such step
    rows = [mean_ci(losses.dropna().tolist()) for _, losses in table.iterrows()]
    curve = pd.DataFrame(rows, index=table.index, columns=["mean", "ci_low", "ci_high"],
                         dtype=float)  # None -> NaN
    curve["n"] = table.notna().sum(axis=1)
    return curve


def group_time_curve(group: Group):
    """Per step, the mean ``val/loss`` and the mean ``elapsed_s`` (seconds) over the group's
    valid runs that have both at that step, as a DataFrame; None without any."""
    import pandas as pd

    curves = [r.curve for r in group.valid if r.curve is not None]
    if not curves:
        return None
    runs = range(len(curves))  # column labels, one per run
    loss = pd.concat([c.loss for c in curves], axis=1, keys=runs)
    seconds = pd.concat([c.elapsed_s for c in curves], axis=1, keys=runs)
    both = loss.notna() & seconds.notna()
    table = pd.DataFrame({"mean": loss.where(both).mean(axis=1),
                          "elapsed_s": seconds.where(both).mean(axis=1)})
    return table.dropna()


def new_axes():
    """A figure and axes for one plot, drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, 5))


def save_plot(fig, ax, path: Path, target: float | None) -> None:
    """Draw the target line (if any), grid and legend; write ``path``; close the figure."""
    import matplotlib.pyplot as plt

    if target is not None:
        ax.axhline(target, color="0.3", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def group_color(i: int, n: int):
    """Colour of group i of n: matplotlib's ``Ci`` up to 10 groups, else ``tab20``, so
    that no two of up to 20 groups share a colour."""
    if n <= 10:
        return f"C{i}"
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def plot_curves(labels: Sequence[str], groups: Sequence[Group], path: Path,
                target: float | None = None) -> None:
    """``curves.png``: mean ``val/loss`` (nats/token) per group against step (integer
    ticks), a band for the 95% t interval of the mean at each step (``group_curve``; none
    where n = 1); a dashed line at ``target`` if given. Group i: ``group_color(i, n)``."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_axes()
    for i, (label, group) in enumerate(zip(labels, groups)):
        curve = group_curve(group)
        if curve is None:
            continue
        color = group_color(i, len(groups))
        ax.plot(curve.index, curve["mean"], marker="o", markersize=3, color=color,
                label=f"{label} [n={len(group.valid)}]")
        ax.fill_between(curve.index, curve["ci_low"], curve["ci_high"], color=color, alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # 10, 20, ...
    ax.set(xlabel="step", ylabel="val/loss (nats/token)",
           title="val/loss: mean over seeds; band: 95% t-CI of the mean (none for n=1)")
    save_plot(fig, ax, path, target)


def plot_time_curves(labels: Sequence[str], groups: Sequence[Group], path: Path,
                     target: float | None = None) -> None:
    """``curves_time.png``: ``val/loss`` against seconds since training began, one thin
    line per run and the group mean bold (mean loss at each step against the mean time
    at that step: ``group_time_curve``), coloured as in ``curves.png``."""
    fig, ax = new_axes()
    for i, (label, group) in enumerate(zip(labels, groups)):
        color = group_color(i, len(groups))
        for run in group.valid:
            if run.curve is not None:
                ax.plot(run.curve.elapsed_s, run.curve.loss, color=color, alpha=0.35, linewidth=1)
        curve = group_time_curve(group)
        if curve is not None and not curve.empty:
            ax.plot(curve["elapsed_s"], curve["mean"], marker="o", markersize=3, color=color,
                    linewidth=2, label=f"{label} [n={len(group.valid)}]")
    ax.set(xlabel="time since training began (s)", ylabel="val/loss (nats/token)",
           title="val/loss against wall time: one thin line per run, mean over seeds bold")
    save_plot(fig, ax, path, target)
