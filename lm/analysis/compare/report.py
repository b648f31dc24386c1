"""The report of a comparison: ``compare`` reads, groups and tabulates the runs under
PATHS (rows, flags, excluded runs); ``write_report`` writes ``report.md``, ``report.csv``
and the two plots and returns what ``lm compare`` prints.
"""

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm.analysis.compare.configs import config_diff
from lm.analysis.compare.labels import (
    baseline_values,
    describe_diff,
    group_names,
    legend_names,
    signed,
)
from lm.analysis.compare.plots import plot_curves, plot_time_curves
from lm.analysis.compare.runs import (
    ELAPSED_TAG,
    Group,
    Run,
    expand_paths,
    group_runs,
    load_runs,
    mark_repeats,
    select_baseline,
)
from lm.analysis.compare.stats import difference, mean_ci, mean_std
from lm.analysis.compare.target import (
    TARGET_COLUMNS,
    target_columns,
    target_markdown,
    target_runs_markdown,
    target_table_markdown,
)
from lm.analysis.sweep_summary import fmt, markdown_table, metric, write_csv
from lm.training.hashing import code_version

MIN_CURVE_POINTS = 3  # fewer val/loss points than this: a curve not worth plotting

REPORT_COLUMNS = (
    "group", "baseline", "changes", "n_changes", "seeds", "n", "val_loss_mean",
    "val_loss_std", "diff", "ci_low", "ci_high", "p", "val_ppl_mean", "hash8s", "run_dirs",
)

# What each run cost and where it started, from run.json (lm/training/run.py), averaged
# per group: the "cost" section appears when a run records any of them.
COST_KEYS = {  # run.json key -> (column header, decimals)
    "n_params_trainable": ("trainable params", 0),
    "wall_time_s": ("wall time (s)", 1),
    "peak_memory_mb": ("peak RSS (MiB)", 0),
    "weights_mb": ("weights (MiB)", 3),
    "optimizer_state_mb": ("optimizer state (MiB)", 3),
    "checkpoint_mb": ("last.ckpt (MiB)", 3),
}
COST_COLUMNS = (*COST_KEYS, "val_loss_initial_mean", "gain_mean", "gain_ci_low", "gain_ci_high")


def compare(paths: Sequence[str], baseline_spec: str | None = None,
            target: float | None = None) -> dict[str, Any]:
    """Load, group and tabulate the runs under ``paths``: rows, flags and groups, each
    group named by its change from the baseline (``labels``: tables; ``legends``: plots).
    With a ``target`` val/loss (nats/token), each row also has the ``TARGET_COLUMNS``.

    Raises:
        CompareError: a path or ``baseline_spec`` that matches no run; no readable run.
    """
    runs, unreadable = load_runs(expand_paths(paths))
    mark_repeats(runs)
    groups = group_runs(runs)
    baseline = select_baseline(groups, baseline_spec)
    labels = group_names(groups, baseline)
    rows = [group_row(label, g, baseline) for label, g in zip(labels, groups)]
    if target is not None:
        for row, group in zip(rows, groups):
            row.update(target_columns(group, baseline, target))
    costs = has_costs(runs)
    if costs:
        for row, group in zip(rows, groups):
            row.update(cost_columns(group))
    return {"runs": runs, "groups": groups, "labels": labels, "rows": rows, "target": target,
            "legends": legend_names(groups, baseline),
            "baseline_values": baseline_values(groups, baseline),
            "costs": costs, "ablation_flags": ablation_flags(rows), "code_flags": code_flags(runs),
            "unreadable": unreadable, "excluded": unreadable + excluded_lines(runs),
            "sparse": sparse_curves(runs)}


def write_report(result: dict[str, Any], out: Path, command: str) -> str:
    """Write ``report.md``, ``report.csv``, ``curves.png`` and ``curves_time.png`` into
    ``out``; return the text printed to stdout (tables, flags, excluded runs)."""
    out.mkdir(parents=True, exist_ok=True)
    rows, groups, target = result["rows"], result["groups"], result.get("target")
    table = "\n\n".join(filter(None, [result["baseline_values"], table_markdown(rows),
                                       one_seed_note(rows)]))
    flags = result["ablation_flags"] + result["code_flags"]
    groups_text = groups_markdown(result["labels"], groups)
    note = wall_time_note(wall_time_runs(groups))
    target_text, printed_target = "", []
    if target is not None:
        target_table = target_table_markdown(rows)
        runs_text = target_runs_markdown(result["labels"], groups, target)
        target_text = target_markdown(target_table, runs_text, target, note)
        printed_target = [f"Time to val/loss <= {target:g} (seconds since training began):",
                          target_table, *([f"note: {note}"] if note else [])]
    printed_costs = []
    if result.get("costs"):
        cost_table = cost_table_markdown(rows)
        target_text = cost_markdown(cost_table) + target_text
        printed_costs = ["Cost and starting point (means per group):", cost_table]
    (out / "report.md").write_text(report_markdown(
        table, flags, result["excluded"], groups_text, command, target_text, note,
        result["sparse"]))
    columns = (REPORT_COLUMNS + (TARGET_COLUMNS if target is not None else ())
               + (COST_COLUMNS if result.get("costs") else ()))
    write_csv(out / "report.csv", rows, columns)
    plot_curves(result["legends"], groups, out / "curves.png", target)
    plot_time_curves(result["legends"], groups, out / "curves_time.png", target)
    lines = [table, *printed_costs, *printed_target, *flags,
             *(f"excluded: {x}" for x in result["excluded"])]
    return "\n".join([*lines, f"wrote {out}/report.md, report.csv, curves.png, curves_time.png"])


# --- the table and report.md ------------------------------------------------------------


def group_row(label: str, group: Group, baseline: Group) -> dict[str, Any]:
    """One row (keys ``REPORT_COLUMNS``) for ``group`` against ``baseline``."""
    losses, base_losses = group.values("val/loss"), baseline.values("val/loss")
    mean, std = mean_std(losses)
    diff = config_diff(baseline.comparable, group.comparable)
    delta, ci_low, ci_high, p = (None,) * 4
    if group is not baseline:
        delta, ci_low, ci_high, p = difference(losses, base_losses)
    return {
        "group": label, "baseline": group is baseline,
        "changes": "(baseline)" if group is baseline else describe_diff(diff) or "(none)",
        "n_changes": len(diff), "seeds": " ".join(str(r.seed) for r in group.valid),
        "n": len(losses), "val_loss_mean": mean, "val_loss_std": std, "diff": delta,
        "ci_low": ci_low, "ci_high": ci_high, "p": p,
        "val_ppl_mean": mean_std(group.values("val/ppl"))[0],
        "hash8s": " ".join(r.hash8 for r in group.valid),
        "run_dirs": " ".join(str(r.dir) for r in group.valid),
    }


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table as Markdown (also what is printed)."""
    header = ["group", "changes vs baseline", "seeds", "n", "val/loss", "std",
              "Δ vs baseline", "95% CI", "p", "val/ppl"]
    cells = []
    for r in rows:
        ci = "-" if r["ci_low"] is None else f"[{signed(r['ci_low'])}, {signed(r['ci_high'])}]"
        p = "-" if r["p"] is None else f"{r['p']:.3g}"
        cells.append([r["group"], r["changes"], r["seeds"] or "-", str(r["n"]),
                      fmt(r["val_loss_mean"]), fmt(r["val_loss_std"]), signed(r["diff"]),
                      ci, p, fmt(r["val_ppl_mean"], 3)])
    return markdown_table(header, cells)


def one_seed_note(rows: Sequence[dict[str, Any]]) -> str:
    """A note under the table naming the groups with one seed, whose rows (and every row,
    for the baseline) have no CI and no p; ``""`` when no group has one."""
    single = [f"`{r['group']}`" for r in rows if r["n"] == 1]
    if not single:
        return ""
    return (f"note: one seed (n=1) in {', '.join(single)}: a 95% CI and a p need the spread "
            "of two seeds or more, so those rows show `-` (every row does when the baseline "
            "has one seed). Run each config with several seeds (e.g. `seed=0,1,2`) for them.")


def ablation_flags(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A warning per group that changes more than one key from the baseline."""
    return [
        f"warning: {r['group']} changes {r['n_changes']} keys from the baseline "
        f"(one change per ablation): {r['changes']}"
        for r in rows if r["n_changes"] > 1
    ]


def code_flags(runs: Sequence[Run]) -> list[str]:
    """A warning per config hash run on more than one code version (commit, dirty)."""
    by_hash: dict[str, list[Run]] = {}
    for run in runs:
        by_hash.setdefault(run.record.get("hash", ""), []).append(run)
    flags = []
    for same in by_hash.values():
        labels = [code_label(r.record.get("code") or {}) for r in same]
        if len(set(labels)) > 1:
            where = ", ".join(f"{r.dir.name} ({label})" for r, label in zip(same, labels))
            flags.append(f"warning: hash {same[0].hash8} was run on different code: {where}")
    return flags


def code_label(code: dict) -> str:
    """``88385f30+dirty``, ``aaec8e21``, or ``unknown`` outside git."""
    commit = code.get("commit")
    if commit is None:
        return "unknown"
    return commit[:8] + ("+dirty" if code.get("dirty") else "")


def excluded_lines(runs: Sequence[Run]) -> list[str]:
    """``run dir: reason`` for each run left out of the averages."""
    return [f"{r.dir} ({r.hash8}, seed {r.seed}): {r.problem}" for r in runs if r.problem]


def report_markdown(table: str, flags: list[str], excluded: list[str], groups_text: str,
                    command: str, target_text: str = "", time_note: str = "",
                    sparse: Sequence[str] = ()) -> str:
    """``report.md``: how it was produced, the table (with the baseline's values above it
    and notes under it), the time-to-target section (``target_text``, if any), flags,
    excluded runs, the plots against step and against seconds, and under them the runs
    with too few val/loss points (``sparse``) and ``time_note`` (runs timed by event wall
    times), if any."""
    return (
        f"# Comparison\n\nProduced by `{command}` on {dt.datetime.now():%Y-%m-%d %H:%M} "
        f"(code {code_label(code_version())}).\n\n"
        "Runs whose configs differ only in `seed` form a group. val/loss and val/ppl are the "
        "final values in each run's run.json, averaged over the group's seeds (std: sample "
        "std, ddof=1). Δ = group mean − baseline mean; the 95% CI (Welch–Satterthwaite df) "
        "and p (Welch's t-test) need n ≥ 2 in both groups.\n\n"
        f"{table}\n\n{target_text}## Flags\n\n{bullets(flags)}\n\n"
        f"## Excluded runs (never averaged)\n\n{bullets(excluded)}\n\n"
        f"## Runs per group\n\n{groups_text}\n\n"
        "## val/loss curves\n\nval/loss in nats/token, mean over seeds at each step; the band "
        "is the 95% t confidence interval of that mean (mean ± t·s/√n over the runs that "
        "logged the step, as in the table), none where n = 1.\n\n"
        "![val/loss per group against step](curves.png)\n\n"
        "Against seconds since training began (validation included): one thin line per run; "
        "bold, the group's mean val/loss at each step against its mean time at that step.\n\n"
        "![val/loss per group against wall time](curves_time.png)\n"
        + (f"\nRuns with fewer than {MIN_CURVE_POINTS} val/loss points (their curves say "
           f"little):\n\n{bullets(sparse)}\n" if sparse else "")
        + (f"\n{time_note}\n" if time_note else "")
    )


def bullets(lines: Sequence[str]) -> str:
    """A Markdown list, or ``(none)``."""
    return "\n".join(f"- {x}" for x in lines) or "(none)"


def groups_markdown(labels: Sequence[str], groups: Sequence[Group]) -> str:
    """One bullet per group with its run dirs."""
    lines = []
    for label, group in zip(labels, groups):
        dirs = ", ".join(f"`{r.dir}`" for r in group.runs)
        lines.append(f"- {label}: {dirs}")
    return "\n".join(lines)


# --- cost and starting point -----------------------------------------------------------


def record_values(group: Group, key: str) -> list[float]:
    """``run.json[key]`` of each valid run of ``group`` that records a number there."""
    values = (r.record.get(key) for r in group.valid)
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def gains(group: Group) -> list[float]:
    """Per run: final val/loss − val/loss before training (``metrics.initial``: a
    fine-tune's pretrained model on the same batches); runs without both are left out."""
    pairs = ((metric(r.record, "initial", "val/loss"), metric(r.record, "final", "val/loss"))
             for r in group.valid)
    return [after - before for before, after in pairs if before is not None and after is not None]


def cost_columns(group: Group) -> dict[str, Any]:
    """The ``COST_COLUMNS`` of ``group``'s row: the mean of each ``COST_KEYS`` value, the
    mean val/loss before training, and the mean gain with a 95% t interval (``mean_ci``)."""
    initial = [v for v in (metric(r.record, "initial", "val/loss") for r in group.valid)
               if v is not None]
    mean_gain, low, high = mean_ci(gains(group))
    return {**{key: mean_std(record_values(group, key))[0] for key in COST_KEYS},
            "val_loss_initial_mean": mean_std(initial)[0], "gain_mean": mean_gain,
            "gain_ci_low": low, "gain_ci_high": high}


def has_costs(runs: Sequence[Run]) -> bool:
    """Whether any run records a cost or a val/loss before training."""
    return any(key in r.record for r in runs for key in COST_KEYS) or any(
        metric(r.record, "initial", "val/loss") is not None for r in runs)


def cost_table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The cost table as Markdown (also what is printed)."""
    header = ["group", *(name for name, _ in COST_KEYS.values()), "val/loss before",
              "val/loss after", "after − before", "95% CI"]
    cells = []
    for r in rows:
        ci = ("-" if r["gain_ci_low"] is None
              else f"[{signed(r['gain_ci_low'])}, {signed(r['gain_ci_high'])}]")
        cells.append([r["group"], *(fmt(r[key], digits) for key, (_, digits) in COST_KEYS.items()),
                      fmt(r["val_loss_initial_mean"]), fmt(r["val_loss_mean"]),
                      signed(r["gain_mean"]), ci])
    return markdown_table(header, cells)


def cost_markdown(table: str) -> str:
    """The ``report.md`` section on cost and the starting point."""
    return (
        "## Cost and starting point\n\n"
        "Means over each group's runs, from run.json: trainable parameters; wall time of the "
        "run; the process's peak resident memory (Python and torch included); the bytes of "
        "the model's weights (a 4-bit base counted as stored) and of the optimizer state; "
        "the size of `last.ckpt`. val/loss before is the model's loss on the run's own "
        "validation batches before its first step (recorded for `init_from` runs: the "
        "pretrained model's); after − before is per run, with a 95% t interval.\n\n"
        f"{table}\n\n"
    )


# --- notes on the curves ---------------------------------------------------------------


def sparse_curves(runs: Sequence[Run]) -> list[str]:
    """``<run dir> has 2 val/loss points: ...`` for each valid run with fewer than
    ``MIN_CURVE_POINTS`` (none when it logged no ``val/loss`` events)."""
    lines = []
    for run in (r for r in runs if r.problem is None):
        points = 0 if run.curve is None else len(run.curve.loss)
        if points < MIN_CURVE_POINTS:
            lines.append(f"{run.dir} has {points} val/loss point{'' if points == 1 else 's'}: "
                         "its curve is not worth plotting; validate more often "
                         "(trainer.val_check_interval) or train longer")
    return lines


def wall_time_runs(groups: Sequence[Group]) -> list[Run]:
    """The valid runs whose seconds come from event wall times (no ``wallclock/elapsed_s``)."""
    return [r for g in groups for r in g.valid if r.curve is not None and r.curve.from_wall_time]


def wall_time_note(runs: Sequence[Run]) -> str:
    """A footnote naming the runs whose seconds come from event wall times, or ``""``."""
    if not runs:
        return ""
    names = ", ".join(f"`{r.dir}`" for r in runs)
    return (f"Seconds of runs that logged no `{ELAPSED_TAG}` (older runs) are the TensorBoard "
            "wall time of each val/loss event minus that of the run's first scalar event: they "
            "count any pause before a resume and miss the time before the first scalar was "
            f"logged. Those runs: {names}.")
