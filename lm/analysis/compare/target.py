"""Time to a target: the step and the seconds since training began at which each run
first validated with ``val/loss <= target`` (``--target LOSS``), per group the mean time
with a 95% t interval and its difference from the baseline (Welch), and the
``report.md`` section that shows them.
"""

import math
from collections.abc import Sequence
from typing import Any

from lm.analysis.compare.labels import signed
from lm.analysis.compare.runs import ELAPSED_TAG, Group, ValCurve
from lm.analysis.compare.stats import difference, mean_ci, mean_std
from lm.analysis.sweep_summary import fmt, markdown_table

# With --target: times in seconds; target_steps and target_times_s hold one entry per run,
# in the order of run_dirs ("-": not reached, or no val/loss events).
TARGET_COLUMNS = (
    "target", "target_reached", "target_n", "target_time_mean", "target_time_ci_low",
    "target_time_ci_high", "target_step_mean", "target_time_diff", "target_time_diff_ci_low",
    "target_time_diff_ci_high", "target_time_p", "target_steps", "target_times_s",
)


def time_to_target(curve: ValCurve, target: float) -> tuple[int, float | None] | None:
    """``(step, seconds)`` of the run's first validation with ``val/loss <= target``
    (nats/token); seconds since training began, None where that step has no time. None
    when no validation reached ``target`` (a NaN loss never does)."""
    reached = curve.loss[curve.loss <= target]
    if reached.empty:
        return None
    step = int(reached.index[0])
    seconds = curve.elapsed_s.get(step)
    return step, None if seconds is None or math.isnan(seconds) else float(seconds)


def target_hits(group: Group, target: float) -> list[tuple[int, float | None] | None]:
    """``time_to_target`` of each valid run of ``group`` (None: not reached or no events)."""
    return [None if r.curve is None else time_to_target(r.curve, target) for r in group.valid]


def target_times(group: Group, target: float) -> list[float]:
    """Seconds to ``target`` of the group's valid runs that reached it."""
    return [h[1] for h in target_hits(group, target) if h is not None and h[1] is not None]


def target_columns(group: Group, baseline: Group, target: float) -> dict[str, Any]:
    """The ``TARGET_COLUMNS`` of ``group``'s row: how many runs reached ``target``, their
    mean seconds with a 95% t interval (``mean_ci``), mean step, and the difference in
    seconds from the baseline (``difference``: Welch when both have two times or more)."""
    hits = target_hits(group, target)
    reached = [h for h in hits if h is not None]
    times = target_times(group, target)
    mean, low, high = mean_ci(times)
    diff, diff_low, diff_high, p = (None,) * 4
    if group is not baseline:
        diff, diff_low, diff_high, p = difference(times, target_times(baseline, target))
    return {
        "target": target, "target_reached": len(reached),
        "target_n": sum(r.curve is not None for r in group.valid),
        "target_time_mean": mean, "target_time_ci_low": low, "target_time_ci_high": high,
        "target_step_mean": mean_std([h[0] for h in reached])[0],
        "target_time_diff": diff, "target_time_diff_ci_low": diff_low,
        "target_time_diff_ci_high": diff_high, "target_time_p": p,
        "target_steps": " ".join("-" if h is None else str(h[0]) for h in hits),
        "target_times_s": " ".join("-" if h is None else fmt(h[1], 3) for h in hits),
    }


def target_table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The time-to-target table as Markdown (also what is printed); seconds."""
    header = ["group", "reached", "time (s)", "95% CI", "step", "Δ time vs baseline (s)",
              "95% CI", "p"]
    cells = []
    for r in rows:
        ci = ("-" if r["target_time_ci_low"] is None
              else f"[{fmt(r['target_time_ci_low'], 2)}, {fmt(r['target_time_ci_high'], 2)}]")
        diff_ci = ("-" if r["target_time_diff_ci_low"] is None else
                   f"[{signed(r['target_time_diff_ci_low'], 2)}, "
                   f"{signed(r['target_time_diff_ci_high'], 2)}]")
        p = "-" if r["target_time_p"] is None else f"{r['target_time_p']:.3g}"
        cells.append([r["group"], f"{r['target_reached']} of {r['target_n']}",
                      fmt(r["target_time_mean"], 2), ci, step_range(r["target_steps"]),
                      signed(r["target_time_diff"], 2), diff_ci, p])
    return markdown_table(header, cells)


def step_range(target_steps: str) -> str:
    """The steps at which a group's runs reached the target, from its ``target_steps``
    cell (``"250 300 -"``): ``250``, ``250–300`` when they differ, ``-`` for none."""
    steps = sorted(int(s) for s in target_steps.split() if s != "-")
    if not steps:
        return "-"
    return str(steps[0]) if steps[0] == steps[-1] else f"{steps[0]}–{steps[-1]}"


def target_runs_markdown(labels: Sequence[str], groups: Sequence[Group], target: float) -> str:
    """One bullet per valid run: the step and seconds at which it reached ``target``."""
    lines = []
    for label, group in zip(labels, groups):
        for run, hit in zip(group.valid, target_hits(group, target)):
            if run.curve is None:
                what = "no val/loss events"
            elif hit is None:
                what = f"not reached (lowest val/loss {fmt(float(run.curve.loss.min()))})"
            else:
                what = f"step {hit[0]}, {fmt(hit[1], 2)} s"
            lines.append(f"- {label} `{run.dir}`: {what}")
    return "\n".join(lines) or "(none)"


def target_markdown(table: str, runs_text: str, target: float, note: str) -> str:
    """The ``report.md`` section on the time to ``target``; a pointer to the wall-time
    ``note`` (under the curves) when there is one."""
    return (
        f"## Time to val/loss <= {target:g}\n\n"
        f"For each run, the first validation with val/loss <= {target:g} (nats/token): its "
        f"step and the seconds since training began (`{ELAPSED_TAG}`, validation included). "
        "Per group: how many of its runs got there, and over those the mean time with a "
        "95% t interval and the step (lowest–highest when they differ); Δ = group mean − "
        "baseline mean time, with a 95% CI (Welch–Satterthwaite df) and p (Welch's t-test) "
        "when both groups have ≥ 2 runs that got there. Runs that never got there are not in "
        "the means.\n\n"
        f"{table}\n\n{runs_text}\n\n"
        + ("Some runs' seconds come from event wall times (they logged no "
           f"`{ELAPSED_TAG}`): see the note under the curves.\n\n" if note else "")
    )
