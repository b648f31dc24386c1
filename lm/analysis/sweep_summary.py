"""Sweep summaries: one row per job of a multirun, written when the multirun ends.

A multirun (``lm train -m ...``) writes one dir per job,
``outputs/multirun/<date>/<time>/<job>-<hash8>/``. ``write_summary`` reads their
``run.json`` files and writes ``summary.csv`` and ``summary.md`` into the sweep dir;
``SweepSummary`` is the Hydra callback that calls it after the last job. Enable it in
``conf/train.yaml``::

    hydra:
      callbacks:
        sweep_summary:
          _target_: lm.analysis.sweep_summary.SweepSummary

Each job's TensorBoard events carry its HParams session (its whole config, written by the
run); the sweep dir gets the HParams experiment summary (the keys the jobs differ in
first, ``val/loss`` beside them), so ``tensorboard --logdir <sweep dir>`` shows the
swept values beside ``val/loss``. For means over seeds and confidence intervals, use
``lm compare``.

This module is imported by Hydra at start-up, so it imports nothing heavy; that is why
the table helpers ``lm compare`` shares (``fmt``, ``markdown_table``, ``write_csv``,
``find_run_dirs``) and the rule of what a run record is (``record_problem``) live here
and ``lm/analysis/compare/`` imports them, not the other way round; what it needs of
``lm/training/hparams.py`` (which imports Lightning) it imports when a sweep ends.
"""

import csv
import logging
import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lm.training.record import read_record

log = logging.getLogger(__name__)

# <job>-<swept overrides>-<hash8> (or <job>-<hash8>), as hydra.sweep.subdir names it
JOB_DIR = re.compile(r"^(\d+)-(?:(.*)-)?[0-9a-f]{8}$")

# The run.json fields lm compare and this summary read, with the JSON type lm train writes
# them as (lm/training/run.py; a pointer record, registry.write_pointer, too); a field may
# be absent or null, but not status and hash: every record lm train writes has both.
RECORD_FIELDS = {"status": str, "hash": str, "hash8": str, "same_as": str, "overrides": list,
                 "metrics": dict, "code": dict, "content": dict}
REQUIRED_FIELDS = ("status", "hash")
NUMBER = (int, float)
TYPE_NAMES = {str: "a string", list: "an array", dict: "an object", NUMBER: "a number"}
JSON_NAMES = {str: "string", list: "array", dict: "object", bool: "boolean", int: "number",
              float: "number"}  # the JSON name of a parsed value's type

SUMMARY_COLUMNS = (
    "job", "hash8", "status", "overrides", "final_val_loss", "best_val_loss", "steps",
    "wall_time_s", "dir",
)


def job_number(run_dir: Path) -> int | None:
    """The ``<job>`` of a multirun job dir named ``<job>-<hash8>``; None for other names."""
    match = JOB_DIR.match(run_dir.name)
    return int(match.group(1)) if match else None


def run_sort_key(run_dir: Path) -> tuple:
    """Order run dirs by parent, then job number (so 10 comes after 9), then name."""
    job = job_number(run_dir)
    return (str(run_dir.parent), job if job is not None else -1, run_dir.name)


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every dir under ``root`` (itself included) holding a ``run.json``, in job order."""
    root = Path(root)
    return sorted((p.parent for p in root.rglob("run.json")), key=run_sort_key)


def metric(record: dict, kind: str, key: str) -> float | None:
    """``record["metrics"][kind][key]`` (kind: final | best | initial), or None when not
    recorded."""
    value = ((record.get("metrics") or {}).get(kind) or {}).get(key)
    return None if value is None else float(value)


def record_fields(record: dict) -> Iterator[tuple[str, Any, type | tuple]]:
    """(dotted name, value, allowed type) of each field of ``record`` that lm compare
    or the summary reads: ``RECORD_FIELDS``, ``code.commit``, each override and each
    ``metrics.<kind>.<name>`` (a number)."""
    for key, kind in RECORD_FIELDS.items():
        yield key, record.get(key), kind
    code, overrides, metrics = (record.get(k) for k in ("code", "overrides", "metrics"))
    if isinstance(code, dict):
        yield "code.commit", code.get("commit"), str
    for i, override in enumerate(overrides if isinstance(overrides, list) else []):
        yield f"overrides[{i}]", override, str
    for kind, values in (metrics.items() if isinstance(metrics, dict) else []):
        yield f"metrics.{kind}", values, dict
        for name, value in (values.items() if isinstance(values, dict) else []):
            yield f"metrics.{kind}.{name}", value, NUMBER


def record_problem(record: dict) -> str | None:
    """Why a parsed ``run.json`` object is not a run record, or None if it is: it lacks
    ``status`` or ``hash``, or a field lm compare or the summary reads is of another JSON
    type (``record_fields``), e.g. ``not a run record: it has no status and no hash (lm
    train writes both)``. ``lm compare`` asks it of the record it reads: a pointer's
    (``same_as``) target when there is one."""
    missing = [key for key in REQUIRED_FIELDS if record.get(key) in (None, "")]
    if missing:
        return f"not a run record: it has no {' and no '.join(missing)} (lm train writes both)"
    for name, value, kind in record_fields(record):
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            return (f"not a run record: {name} is a JSON {JSON_NAMES[type(value)]}, "
                    f"expected {TYPE_NAMES[kind]}")
    return None


def summary_row(sweep_dir: Path, run_dir: Path) -> dict[str, Any]:
    """One summary row (keys ``SUMMARY_COLUMNS``, and ``events``: the dir that holds the
    run's TensorBoard events, another run's for a skipped job) for the job in
    ``run_dir``; a ``run.json`` that cannot be read or is not a run record
    (``record_problem``) gives a row with status ``unreadable``."""
    record = read_record(run_dir)
    if record is None or record_problem(record):
        record = {"status": "unreadable"}
    pointer = record.get("same_as")
    return {
        "events": Path(pointer) if isinstance(pointer, str) and pointer else run_dir,
        "job": job_number(run_dir),
        "hash8": record.get("hash8"),
        "status": record.get("status"),
        "overrides": list(record.get("overrides") or []),
        "final_val_loss": metric(record, "final", "val/loss"),
        "best_val_loss": metric(record, "best", "val/loss"),
        "steps": record.get("steps"),
        "wall_time_s": record.get("wall_time_s"),
        "dir": str(run_dir.relative_to(sweep_dir)),
    }


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` decimals, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; ``|`` inside a cell is escaped."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """``rows`` as CSV with a header; None becomes an empty cell, floats keep full precision."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in columns})


def split_overrides(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The overrides every job shares, and each job's others (what the sweep varied)."""
    per_job = [r["overrides"] for r in rows]
    common = [o for o in per_job[0] if all(o in job for job in per_job)] if per_job else []
    return common, [shlex.join(o for o in job if o not in common) for job in per_job]


def summary_markdown(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    """``summary.md``: a title, the overrides all jobs share, the table, where to look next."""
    common, varied = split_overrides(rows)
    header = ["job", "hash8", "status", "swept overrides", "final val/loss", "best val/loss",
              "steps", "wall time (s)"]
    cells = [[fmt(r["job"]), fmt(r["hash8"]), fmt(r["status"]), f"`{v}`" if v else "-",
              fmt(r["final_val_loss"]), fmt(r["best_val_loss"]), fmt(r["steps"]),
              fmt(r["wall_time_s"], 1)] for r, v in zip(rows, varied)]
    shared = f"`{shlex.join(common)}`" if common else "(none)"
    return (
        f"# Sweep {sweep_dir}\n\n{len(rows)} jobs, one row each (from their run.json). "
        f"Overrides all jobs share: {shared}.\n\n"
        f"{markdown_table(header, cells)}\n\n"
        f"Curves and the HParams tab: `{tensorboard_command(sweep_dir, rows)}`.\n"
        f"Means over seeds with confidence intervals: `lm compare {sweep_dir}`.\n"
    )


def tensorboard_command(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    """The command that shows the sweep's curves: ``tensorboard --logdir <sweep dir>``
    when every job trained there; when some were trained before (a re-run skips them,
    pointing at their run dirs), ``--logdir_spec`` naming each job's events dir by its
    swept overrides, and the sweep dir itself (its HParams experiment summary)."""
    outside = [r for r in rows if not Path(r["events"]).resolve().is_relative_to(sweep_dir.resolve())]
    if not outside:
        return f"tensorboard --logdir {sweep_dir}"
    specs = [f"sweep:{sweep_dir}"]
    for row, varied in zip(rows, split_overrides(rows)[1]):
        name = re.sub(r"[^A-Za-z0-9._=-]+", "_", varied or str(row["job"]))
        specs.append(f"{row['job']}-{name}:{row['events']}")
    return f"tensorboard --logdir_spec {','.join(specs)}"


def write_summary(sweep_dir: str | Path, registry_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir``: one row per job dir
    (any dir below it with a ``run.json``) in job order, with its overrides, hash8,
    status, final and best ``val/loss``, steps and wall time (seconds); and the
    TensorBoard HParams experiment of its jobs in ``sweep_dir`` and ``registry_dir``
    (``lm/training/hparams.py``), so ``tensorboard --logdir`` either shows the swept
    keys first. TensorBoard reads one experiment under its logdir, so the experiments
    of earlier sweeps under ``registry_dir`` are removed: the latest sweep leads (an
    earlier sweep's own dir then lists the keys its jobs differ in first all the same:
    TensorBoard's rule without an experiment, but its metric columns by name).

    Returns:
        The paths of the CSV and the Markdown file.
    """
    from lm.training.hparams import remove_experiments

    sweep_dir = Path(sweep_dir)
    rows = [summary_row(sweep_dir, d) for d in find_run_dirs(sweep_dir)]
    if registry_dir is not None:  # the latest sweep's experiment is the only one under it
        remove_experiments(registry_dir, below=True)
    for log_dir in {sweep_dir, *([Path(registry_dir)] if registry_dir else [])}:
        write_hparams_experiment(log_dir, rows)
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    write_csv(csv_path, [{**r, "overrides": shlex.join(r["overrides"])} for r in rows],
              SUMMARY_COLUMNS)
    md_path.write_text(summary_markdown(sweep_dir, rows))
    return csv_path, md_path


def write_hparams_experiment(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """TensorBoard's HParams experiment summary in ``sweep_dir`` (``lm/training/hparams.py``:
    the keys the jobs' configs differ in first), from each job's resolved config; jobs
    whose config cannot be read are left out. Returns the differing keys."""
    from lm.training.hparams import hparam_values, write_experiment

    runs = []
    for row in rows:
        path = Path(row["events"]) / "config.yaml"
        try:
            runs.append(hparam_values(OmegaConf.load(path)))
        except Exception as err:  # noqa: BLE001 - a summary row says what is wrong
            log.warning("%s left out of the HParams experiment: %s", path, err)
    return write_experiment(sweep_dir, runs) if runs else []


class SweepSummary(Callback):
    """Hydra callback: after a multirun, ``write_summary(hydra.sweep.dir)``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # hydra.sweep.dir holds ${now:...}; Hydra caches that resolver per config, so
        # this is the dir the sweeper created, not a new timestamp.
        registry = OmegaConf.select(config, "tracking.registry_dir")
        inside = registry is not None and Path(config.hydra.sweep.dir).resolve().is_relative_to(
            Path(registry).resolve())
        _, md_path = write_summary(config.hydra.sweep.dir, registry if inside else None)
        log.info("sweep summary: %s", md_path)
