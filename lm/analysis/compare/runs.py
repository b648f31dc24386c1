"""The runs of a comparison: run dirs found under PATHS and read (``run.json``,
``config.yaml``, the ``val/loss`` events), runs grouped by config without ``seed``, and
the baseline group picked by a spec (run dir, hash prefix or ``key=value``).

A run dir that cannot be read is ``UnreadableRun`` (left out and listed); a path or spec
that matches no run, or no readable run at all, is ``CompareError`` (exit code 2).
"""

import datetime as dt
import functools
import glob
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lm.analysis.compare.configs import ABSENT, comparable_config, lookup, without_seed
from lm.analysis.sweep_summary import find_run_dirs, job_number, metric, record_problem
from lm.errors import first_line
from lm.training.hashing import canonical_sha256, hashable_config
from lm.training.record import load_record

ELAPSED_TAG = "wallclock/elapsed_s"  # seconds since training began, logged at each validation
OLD_ELAPSED_TAG = "time/elapsed_s"  # its name in runs recorded before the wallclock/ group


class CompareError(Exception):
    """A path or a baseline spec that matches no run (exit code 2)."""


class UnreadableRun(Exception):
    """A run dir whose ``run.json`` or ``config.yaml`` cannot be read, or whose ``run.json``
    is not a run record: it is excluded."""


# --- runs and groups ---------------------------------------------------------------


@dataclass
class Run:
    """One run dir: its ``run.json``, its resolved ``config.yaml``, the hashable part (what
    groups runs) and the values its group is named by (``comparable_config``)."""

    dir: Path
    record: dict
    resolved: dict
    config: dict  # hashable_config(resolved): what the config hash covers
    comparable: dict  # comparable_config(config, resolved): what names and diffs show
    problem: str | None = None  # why it is not averaged (failed, diverged, a repeat)

    @property
    def hash8(self) -> str:
        """The first 8 hex digits of the run's config hash (its dir name ends with them)."""
        return str(self.record.get("hash8") or self.record.get("hash", "")[:8])

    @property
    def seed(self) -> Any:
        """The run's ``seed`` (None if its config has none)."""
        return self.config.get("seed")

    @functools.cached_property
    def curve(self) -> "ValCurve | None":
        """The run's ``val/loss`` events with elapsed seconds (``val_curve``), read once."""
        return val_curve(self.dir)


@dataclass
class Group:
    """Runs whose hashable configs are equal once ``seed`` is removed."""

    key: str
    runs: list[Run]

    @property
    def comparable(self) -> dict:
        """``comparable_config`` of the group's runs (one for all: it follows from the hash)."""
        return without_seed(self.runs[0].comparable)

    @property
    def valid(self) -> list[Run]:
        """The runs that are averaged: those without a ``problem``."""
        return [r for r in self.runs if r.problem is None]

    def values(self, key: str) -> list[float]:
        """The final ``key`` (``val/loss``, ``val/ppl``) of each valid run that logged it."""
        values = (metric(r.record, "final", key) for r in self.valid)
        return [v for v in values if v is not None]


def run_problem(record: dict) -> str | None:
    """Why a run with this ``run.json`` must not be averaged, or None if it can be."""
    status = record.get("status")
    if status != "completed":
        error = record.get("error")
        return f"{status}: {error}" if error else str(status)
    loss = metric(record, "final", "val/loss")
    if loss is None:
        return "completed without a final val/loss"
    if not math.isfinite(loss):
        return f"diverged: final val/loss={loss}"
    return None


def load_run(run_dir: Path) -> Run:
    """Read ``run.json`` and ``config.yaml`` of ``run_dir``; a job that was skipped or
    resumed elsewhere (``same_as`` in its ``run.json``) reads the run it points to.

    Raises:
        CompareError: a run.json without a config.yaml beside it.
        UnreadableRun: a run.json or config.yaml that is empty, not UTF-8, not JSON
            (YAML) or not a mapping, or a run.json that is not a run record
            (``record_problem``; one line: the file and what is wrong).
    """
    pointer = safe_record(run_dir).get("same_as")
    if isinstance(pointer, str) and pointer and (Path(pointer) / "run.json").exists():
        run_dir = Path(pointer)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise CompareError(f"{run_dir} has a run.json but no config.yaml")
    cfg = safe_config(config_path)
    record = safe_record(run_dir)
    if problem := record_problem(record):  # the record read, a pointer's target
        raise UnreadableRun(f"{run_dir / 'run.json'} is {problem}")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config = hashable_config(cfg, digests=record.get("content"))  # as hashed when it ran
    return Run(run_dir, record, resolved, config, comparable_config(config, resolved),
               run_problem(record))


def safe_record(run_dir: Path) -> dict:
    """``load_record(run_dir)``, or UnreadableRun naming what is wrong with ``run.json``."""
    path = run_dir / "run.json"
    if path.is_file() and path.stat().st_size == 0:
        raise UnreadableRun(f"{path} is empty (0 bytes)")
    try:
        record = load_record(run_dir)
    except OSError as err:
        raise UnreadableRun(f"{path} could not be read ({first_line(err)})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableRun(f"{path} is not valid JSON ({first_line(err)})") from None
    if not isinstance(record, dict):
        raise UnreadableRun(f"{path} holds a {type(record).__name__}, not a JSON object")
    return record


def safe_config(path: Path):
    """``OmegaConf.load(path)`` of a mapping, or UnreadableRun naming what is wrong."""
    if path.stat().st_size == 0:
        raise UnreadableRun(f"{path} is empty (0 bytes)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml, OmegaConf and OS errors alike
        raise UnreadableRun(f"{path} could not be read as YAML ({first_line(err)})") from None
    if not OmegaConf.is_dict(cfg):
        raise UnreadableRun(f"{path} is not a mapping of config keys")
    return cfg


def load_runs(run_dirs: Sequence[Path]) -> tuple[list[Run], list[str]]:
    """(the runs that could be read, ``<file> is ...`` for each that could not).

    Raises:
        CompareError: not one run could be read.
    """
    runs, unreadable = [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except UnreadableRun as err:
            unreadable.append(str(err))
    if not runs:
        raise CompareError(f"no run could be read ({len(unreadable)} unreadable; first: "
                           f"{unreadable[0]})")
    return runs, unreadable


def mark_repeats(runs: Sequence[Run]) -> None:
    """Keep the first valid run of each config hash; later ones (same config, same seed)
    are not independent samples, so they get a ``problem`` and are not averaged."""
    first: dict[str, Run] = {}
    for run in runs:
        if run.problem is None:
            kept = first.setdefault(run.record.get("hash", ""), run)
            if kept is not run:
                run.problem = f"repeat of {kept.dir.name} (same config hash and seed)"


def group_key(config: dict) -> str:
    """SHA-256 of the canonical JSON of the hashable config without ``seed``."""
    return canonical_sha256(without_seed(config))


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by ``group_key``, groups in the order of their first run."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = group_key(run.config)
        groups.setdefault(key, Group(key, [])).runs.append(run)
    return list(groups.values())


# --- finding runs --------------------------------------------------------------------


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Run dirs for PATHS: each a run dir, a dir holding runs, or a glob; no duplicates.

    Raises:
        CompareError: a pattern that matches no dir with a ``run.json``.
    """
    found: dict[Path, None] = {}
    for pattern in patterns:
        is_glob = any(c in pattern for c in "*?[")
        matches = sorted(glob.glob(pattern)) if is_glob else [pattern]
        dirs = [d for m in matches if Path(m).is_dir() for d in find_run_dirs(m)]
        if not dirs:
            raise CompareError(f"{pattern} matches no run dir (a dir with a run.json)")
        found.update(dict.fromkeys(dirs))
    return list(found)


def is_sweep_dir(path: Path) -> bool:
    """A dir holding multirun job dirs (``<job>-<hash8>/run.json``)."""
    return path.is_dir() and any(
        job_number(d) is not None for d in path.iterdir() if (d / "run.json").exists()
    )


def default_out_dir(first_path: str) -> Path:
    """The sweep dir if the first PATH is one, else ``outputs/compare/<date>/<time>``."""
    if is_sweep_dir(Path(first_path)):
        return Path(first_path)
    return Path("outputs/compare") / dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


# --- the baseline --------------------------------------------------------------------


def value_matches(actual: Any, wanted: str) -> bool:
    """Does a config value equal the text of an override? Numbers compare as floats
    (``3e-4`` equals ``0.0003``); anything else by text, case-insensitive (``true``)."""
    if actual is ABSENT:
        return False
    try:
        return float(actual) == float(wanted)
    except (TypeError, ValueError):
        text = "null" if actual is None else str(actual)
        return text.lower() == wanted.lower()


def run_matches(run: Run, spec: str) -> bool:
    """Does ``spec`` (run dir, hash prefix or ``key=value``) select ``run``?"""
    if Path(spec).is_dir():
        return run.dir.resolve() == Path(spec).resolve()
    if "=" in spec:
        key, _, wanted = spec.partition("=")
        actual = lookup(run.resolved, key.strip())
        if actual is ABSENT:  # a key at its default that an older config.yaml predates
            actual = lookup(run.comparable, key.strip())
        return value_matches(actual, wanted.strip())
    prefix = spec.lower()
    is_hex = re.fullmatch(r"[0-9a-f]+", prefix) is not None
    return is_hex and run.record.get("hash", "").startswith(prefix)


def select_baseline(groups: Sequence[Group], spec: str | None) -> Group:
    """The group named by ``spec``; without one, the group of the first run.

    Raises:
        CompareError: ``spec`` matches no run, or runs in more than one group.
    """
    if spec is None:
        return groups[0]
    matched = [g for g in groups if any(run_matches(r, spec) for r in g.runs)]
    if not matched:
        raise CompareError(
            f"--baseline {spec} matches no run (give a run dir, a hash prefix or key=value)"
        )
    if len(matched) > 1:
        hashes = ", ".join("/".join(sorted({r.hash8 for r in g.runs})) for g in matched)
        raise CompareError(
            f"--baseline {spec} matches runs in {len(matched)} groups ({hashes}); narrow it"
        )
    return matched[0]


# --- curves --------------------------------------------------------------------------


@dataclass
class ValCurve:
    """A run's validation curve: one point per step that logged ``val/loss``.

    ``loss``: ``val/loss`` (mean cross-entropy, nats/token), a pandas Series indexed by step.
    ``elapsed_s``: seconds since training began at those steps (same index; NaN where not
    known). ``from_wall_time``: the run logged no ``wallclock/elapsed_s``, so ``elapsed_s`` is
    the TensorBoard wall time of each ``val/loss`` event minus that of the run's first
    scalar event: it counts any pause before a resume, and misses the time before the
    first scalar was logged (the first ``log_every_n_steps`` steps).
    """

    loss: Any
    elapsed_s: Any
    from_wall_time: bool


def read_scalars(run_dir: Path):
    """The scalar events of a run as a pandas DataFrame with columns ``step``, ``tag``,
    ``value`` and ``wall_time`` (Unix seconds), or None when there are none. Event files
    lie in the run dir itself, or under ``tb/`` for older runs; they are read one by one
    in the order written (a dir reader would also open ``checkpoints/``)."""
    import pandas as pd
    from tbparse import SummaryReader

    pattern = "events.out.tfevents.*"
    files = [*run_dir.glob(pattern), *(run_dir / "tb").rglob(pattern)]
    frames = [SummaryReader(str(f), extra_columns={"wall_time"}).scalars
              for f in sorted(files, key=lambda f: f.name)]  # the name holds its start time
    frames = [df for df in frames if not df.empty and "tag" in df]
    return pd.concat(frames, ignore_index=True) if frames else None


def val_curve(run_dir: Path) -> ValCurve | None:
    """The ``val/loss`` events of a run joined on step with its ``wallclock/elapsed_s`` events
    (or, without them, event wall times: see ``ValCurve``); None without ``val/loss``.
    A step logged twice (a resumed run) keeps its last value."""
    scalars = read_scalars(run_dir)
    if scalars is None:
        return None
    val = scalars[scalars["tag"] == "val/loss"]
    if val.empty:
        return None
    loss = val.groupby("step")["value"].last()
    logged = scalars[scalars["tag"].isin([ELAPSED_TAG, OLD_ELAPSED_TAG])]
    if logged.empty:
        elapsed = val.groupby("step")["wall_time"].last() - scalars["wall_time"].min()
    else:
        elapsed = logged.groupby("step")["value"].last().reindex(loss.index)
    return ValCurve(loss, elapsed, from_wall_time=logged.empty)
