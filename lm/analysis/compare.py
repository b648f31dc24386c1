"""Compare runs honestly: a baseline against its ablations, averaged over seeds.

    lm compare PATHS... [--baseline SPEC] [--target LOSS] [--strict] [--out DIR]

(Flags, not Hydra settings: PATHS are what to compare, not a config.)

PATHS are run dirs, sweep dirs or dirs holding runs (every dir below with a
``run.json``), or quoted globs (``'outputs/runs/2026-11-21/*'``). Runs whose resolved
configs differ only in ``seed`` form one group. For each group the report gives the
config keys that differ from the baseline group, the number of seeds, the mean and
sample std of the final ``val/loss``, the difference from the baseline with a 95%
Welch confidence interval and Welch's t-test p-value (when both groups have two seeds
or more; a note under the table names the groups with one seed), and the mean final
``val/ppl``. A group is named by its change from the baseline (``optimizer.lr=3e-3``;
several keys: ``model.norm=rmsnorm, optimizer.lr=3e-3``), the baseline ``baseline``, with
its own values of the keys that vary stated (``baseline: optimizer.lr=1e-3``). Names and
diffs read the resolved config with defaults included (``comparable_config``): a
``model.norm=rmsnorm,layernorm`` sweep names its arms ``model.norm=layernorm`` and
``model.norm=rmsnorm``; grouping uses the config hash's own view (``hashable_config``).

SPEC picks the baseline group: a run dir, a prefix of a run's config hash, or
``key=value`` matched against each run's ``config.yaml`` at that dotted key (numbers
compared as floats; a key an older ``config.yaml`` lacks reads its default):
``--baseline optimizer.lr=3e-4``. Default: the group of the first run.

Flags: a group that changes more than one key from the baseline (a warning; exit code 1
with ``--strict``); one config hash run on different code (commit or dirty flag);
failed, running or diverged (non-finite ``val/loss``) runs, and repeats of one config
hash (same config, same seed: not a new sample), listed and never averaged. A run dir
whose ``run.json`` or ``config.yaml`` cannot be read (empty, not JSON or YAML), or whose
``run.json`` is not a run record (no ``status`` and ``hash``, as ``lm train`` writes; a
field of the wrong type), is excluded too: listed with the reason, and a ``warning:`` line
on stderr; one bad file does not stop the comparison of the others.

With ``--target LOSS``, the report also gives the time to a target: for each run the
step and the seconds since training began at its first validation with ``val/loss <=
LOSS``; for each group how many of its runs got there, the mean time over those that
did with a 95% t interval, and the difference from the baseline with a 95% Welch
interval and p-value (when both groups have two runs or more that got there). Seconds
come from the ``wallclock/elapsed_s`` scalar runs log at each validation; a run without it
(logged before it existed) falls back to TensorBoard event wall times, and the report
names it.

Writes ``report.md``, ``report.csv``, ``curves.png`` (mean ``val/loss`` per group
against step, a band for its 95% t interval at each step) and ``curves_time.png``
(``val/loss`` against seconds since training began: one line per run, the group mean
bold) into ``--out``; a run with fewer than 3 ``val/loss`` points gets a ``warning:``
line on stderr and a line in ``report.md``. Default ``--out``: the first PATH if it is
a sweep dir (it holds ``<job>-<hash8>`` job dirs), else ``outputs/compare/<date>/<time>/``.
Exit code 2 with one ``error:`` line for a path or baseline that matches no run, or when
no run can be read.
"""

import argparse
import copy
import datetime as dt
import functools
import glob
import json
import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from scipy import stats

from lm.analysis.sweep_summary import (
    find_run_dirs,
    fmt,
    job_number,
    markdown_table,
    metric,
    record_problem,
    write_csv,
)
from lm.errors import first_line
from lm.training.record import load_record
from lm.training.registry import (
    CONTENT_KEYS,
    canonical_sha256,
    code_version,
    hashable_config,
    neutral_values,
)

ABSENT = "(absent)"  # a key one config has and the other lacks (and that has no default)
ELAPSED_TAG = "wallclock/elapsed_s"  # seconds since training began, logged at each validation
OLD_ELAPSED_TAG = "time/elapsed_s"  # its name in runs recorded before the wallclock/ group
MIN_CURVE_POINTS = 3  # fewer val/loss points than this: a curve not worth plotting
LEGEND_VALUE_CHARS = 20  # a value longer than this is shortened in a plot's legend
LEGEND_CHARS = 60  # and a whole legend label

REPORT_COLUMNS = (
    "group", "baseline", "changes", "n_changes", "seeds", "n", "val_loss_mean",
    "val_loss_std", "diff", "ci_low", "ci_high", "p", "val_ppl_mean", "hash8s", "run_dirs",
)
# With --target: times in seconds; target_steps and target_times_s hold one entry per run,
# in the order of run_dirs ("-": not reached, or no val/loss events).
TARGET_COLUMNS = (
    "target", "target_reached", "target_n", "target_time_mean", "target_time_ci_low",
    "target_time_ci_high", "target_step_mean", "target_time_diff", "target_time_diff_ci_low",
    "target_time_diff_ci_high", "target_time_p", "target_steps", "target_times_s",
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
        return str(self.record.get("hash8") or self.record.get("hash", "")[:8])

    @property
    def seed(self) -> Any:
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


def without_seed(config: dict) -> dict:
    """``config`` without its top-level ``seed`` (nor ``data.eval_seed``, which the hash
    leaves out where it equals ``seed``: a seed sweep is one group either way)."""
    config = {k: v for k, v in config.items() if k != "seed"}
    if isinstance(config.get("data"), dict) and "eval_seed" in config["data"]:
        config["data"] = {k: v for k, v in config["data"].items() if k != "eval_seed"}
    return config


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


def lookup(tree: dict, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``, or ``ABSENT``."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


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


# --- config differences ----------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """A ``CONTENT_KEYS`` path in ``comparable_config``: equal to another by the SHA-256 of what
    it held (None: unreadable), as in the config hash, and shown by its path."""

    path: str = field(compare=False)
    sha256: str | None


def comparable_config(hashable: dict, resolved: dict) -> dict:
    """What a run's group is named by and diffed on: its resolved config without
    ``HASH_EXCLUDED_KEYS`` (keys that cannot change the numbers), defaults included.

    Built from ``hashable`` (the run's ``hashable_config``), which leaves out a
    ``HASH_NEUTRAL_DEFAULTS`` key at its default: each such key it lacks is put back at its
    default, which also fills a key that an older ``config.yaml`` predates. Each
    ``CONTENT_KEYS`` digest ``{"sha256": ...}`` becomes a ``Content`` with the path from
    ``resolved``, still compared by digest. Apart from the paths shown, it follows from
    ``hashable`` alone, so the runs of a group share it.
    """
    values = copy.deepcopy(hashable)
    for dotted, default in neutral_values(values).items():
        parent, leaf = parent_node(values, dotted, create=True)
        if parent is not None:
            parent.setdefault(leaf, default)
    for dotted in CONTENT_KEYS:
        parent, leaf = parent_node(values, dotted, create=False)
        digest = None if parent is None else parent.get(leaf)
        if isinstance(digest, dict) and "sha256" in digest:
            parent[leaf] = Content(str(lookup(resolved, dotted)), digest["sha256"])
    return values


def parent_node(tree: dict, dotted: str, create: bool) -> tuple[dict | None, str]:
    """(the dict of ``tree`` holding key ``dotted``, the key's last part); the dicts on the
    way are made when ``create``. None for the dict when one on the way is missing or is
    not a dict."""
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.setdefault(part, {}) if create else node.get(part)
        if not isinstance(node, dict):
            return None, leaf
    return node, leaf


def config_diff(base: dict, other: dict) -> list[tuple[str, Any, Any]]:
    """``(dotted key, base value, other value)`` for each key that differs, sorted by key.

    Give it ``comparable_config``s (or hashable configs): keys that cannot change the numbers
    are already out. ``seed`` is ignored; a missing key reads ``ABSENT``. A
    node present on one side only is one change (adding a hook is one ablation, however
    many keys its YAML has), and ``hooks.order`` counts only when the same hooks were
    reordered: when hooks are added or removed, their nodes already say so.
    """
    diff = _node_diff(without_seed(base), without_seed(other), "")
    return [d for d in diff if d[0] != "hooks.order" or _same_members(d[1], d[2])]


def _node_diff(a: dict, b: dict, prefix: str) -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(a.keys() | b.keys()):
        old, new = a.get(key, ABSENT), b.get(key, ABSENT)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _node_diff(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append((f"{prefix}{key}", old, new))
    return out


def _same_members(old: Any, new: Any) -> bool:
    return isinstance(old, list) and isinstance(new, list) and sorted(old) == sorted(new)


def describe_diff(diff: Sequence[tuple[str, Any, Any]]) -> str:
    """``model.n_layer: 4 -> 6; optimizer.lr: 1e-3 -> 3e-4`` (values: ``format_value``)."""
    return "; ".join(f"{key}: {format_value(old)} -> {format_value(new)}"
                     for key, old, new in diff)


def format_value(value: Any) -> str:
    """A config value as a Hydra override spells it (``3e-4``, ``true``, ``null``,
    ``[0.9,0.99]``, ``{a:1}``); a ``Content`` as ``<path> (sha256 <8 hex>)``."""
    if isinstance(value, Content):
        return f"{value.path} (sha256 {(value.sha256 or '?')[:8]})"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, list):
        return "[" + ",".join(map(format_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_float(x: float) -> str:
    """``x`` as written by hand: ``3e-4``, ``1.5e-3`` and ``1e6`` (the shortest exponent
    form that reads back as ``x``) below 0.01 or from 1e5 on, ``repr(x)`` otherwise."""
    if not math.isfinite(x) or x == 0 or 1e-2 <= abs(x) < 1e5:
        return repr(x)
    text = next(t for t in (f"{x:.{d}e}" for d in range(17)) if float(t) == x)
    mantissa, _, power = text.partition("e")
    return f"{mantissa}e{int(power)}"


def legend_value(value: Any) -> str:
    """``format_value`` for a plot's legend: a ``Content`` by file name and 6 hex of its
    digest, and any value over ``LEGEND_VALUE_CHARS`` cut in the middle."""
    if isinstance(value, Content):
        text = f"{Path(value.path).name}@{(value.sha256 or '?')[:6]}"
    else:
        text = format_value(value)
    return cut_middle(text, LEGEND_VALUE_CHARS)


def cut_middle(text: str, width: int) -> str:
    """``text``, or its start and end around ``…`` in ``width`` characters."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


# --- group names -----------------------------------------------------------------------


def name_parts(groups: Sequence[Group], baseline: Group) -> list[list[tuple[str, Any]]]:
    """Per group, the ``(dotted key, value)`` pairs that name it: each key it changes from
    the baseline with its own value; for the baseline, its values of every key that some
    group changes (``ABSENT`` where it lacks one without a default)."""
    diffs = [config_diff(baseline.comparable, g.comparable) for g in groups]
    varying = sorted({key for diff in diffs for key, _, _ in diff})
    return [[(key, lookup(baseline.comparable, key)) for key in varying] if g is baseline
            else [(key, new) for key, _, new in diff] for g, diff in zip(groups, diffs)]


def join_parts(parts: Sequence[tuple[str, Any]], value=format_value) -> str:
    """``model.norm=rmsnorm, optimizer.lr=3e-3`` (each value through ``value``)."""
    return ", ".join(f"{key}={value(v)}" for key, v in parts)


def group_names(groups: Sequence[Group], baseline: Group) -> list[str]:
    """Each group's name in the tables and the CSV: ``baseline``, or its change from the
    baseline (``optimizer.lr=3e-3``; ``(none)`` if it changes nothing)."""
    parts = name_parts(groups, baseline)
    return ["baseline" if g is baseline else join_parts(p) or "(none)"
            for g, p in zip(groups, parts)]


def legend_names(groups: Sequence[Group], baseline: Group) -> list[str]:
    """Each group's name in the plots' legends, at most ``LEGEND_CHARS`` characters:
    ``baseline (optimizer.lr=1e-3)``, ``optimizer.lr=3e-3``, long values shortened."""
    names = []
    for group, parts in zip(groups, name_parts(groups, baseline)):
        text = join_parts(parts, legend_value)
        if group is baseline:
            text = f"baseline ({text})" if text else "baseline"
        names.append(cut_middle(text or "(none)", LEGEND_CHARS))
    return names


def baseline_values(groups: Sequence[Group], baseline: Group) -> str:
    """``baseline: optimizer.lr=1e-3``: the baseline's values of the keys that vary across
    groups (``""`` when none does)."""
    parts = name_parts(groups, baseline)[list(groups).index(baseline)]
    return f"baseline: {join_parts(parts)}" if parts else ""


# --- statistics ----------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); None where undefined (n=0, n=1)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else None
    std = float(x.std(ddof=1)) if len(x) >= 2 else None
    return mean, std


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, ...]:
    """Mean and its ``confidence`` Student t interval, ``mean ± t_{(1+confidence)/2, n-1} ·
    s / sqrt(n)`` (s: sample std, ddof=1), in the unit of ``values``.

    Returns:
        ``(mean, ci_low, ci_high)``; the interval is None for n < 2, the mean too for n = 0.
        Source: Student (1908), "The probable error of a mean", Biometrika 6(1):1-25.
    """
    mean, std = mean_std(values)
    if std is None:
        return mean, None, None
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, mean - half, mean + half


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch–Satterthwaite degrees of freedom of ``mean_a - mean_b`` with unequal variances.

    ``(va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1))``; ``var_*`` are sample
    variances (ddof=1). Sources: Satterthwaite (1946), Biometrics Bulletin 2(6):110-114;
    Welch (1947), Biometrika 34(1-2):28-35.
    """
    qa, qb = var_a / n_a, var_b / n_b
    return (qa + qb) ** 2 / (qa**2 / (n_a - 1) + qb**2 / (n_b - 1))


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, ...]:
    """Welch's unequal-variance comparison of two samples (each n >= 2).

    Returns:
        ``(diff, ci_low, ci_high, p)``: ``diff = mean(a) - mean(b)``, its ``confidence``
        interval ``diff ± t_{(1+confidence)/2, df} · sqrt(va/na + vb/nb)`` with ``df`` from
        ``welch_df``, and the two-sided p-value of Welch's t-test
        (``scipy.stats.ttest_ind(a, b, equal_var=False)``). Both samples constant: the
        interval and p are NaN (no spread, t undefined). Source: Welch (1947),
        "The generalization of 'Student's' problem when several different population
        variances are involved", Biometrika 34(1-2):28-35.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert len(a) >= 2 and len(b) >= 2, "Welch's test needs two values per sample"
    va, vb = a.var(ddof=1), b.var(ddof=1)
    diff = float(a.mean() - b.mean())
    se = math.sqrt(va / len(a) + vb / len(b))
    if se == 0:
        return diff, math.nan, math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, welch_df(va, len(a), vb, len(b))) * se
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return diff, diff - float(half), diff + float(half), float(p)


def difference(values: Sequence[float], base_values: Sequence[float]) -> tuple[float | None, ...]:
    """``(diff, ci_low, ci_high, p)`` of ``mean(values) - mean(base_values)``: ``welch``
    when both samples have two values or more; the point difference alone (interval and
    p None) when one has a single value; all None when one is empty."""
    if len(values) >= 2 and len(base_values) >= 2:
        return welch(values, base_values)
    if values and base_values:
        return mean_std(values)[0] - mean_std(base_values)[0], None, None, None
    return None, None, None, None


# --- the report ----------------------------------------------------------------------


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


def signed(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


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


# --- time to a target loss -----------------------------------------------------------


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


# --- entry point ---------------------------------------------------------------------


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


def finite_float(text: str) -> float:
    """``float(text)`` for ``--target``; argparse turns the error into exit code 2."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lm compare", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="run dirs, sweep dirs, dirs holding runs, or quoted globs")
    parser.add_argument("--baseline", metavar="SPEC",
                        help="run dir, config-hash prefix or key=value "
                             "(default: the first run's group)")
    parser.add_argument("--target", type=finite_float, metavar="LOSS",
                        help="also report the time (seconds since training began) and step "
                             "at which each run first reached val/loss <= LOSS, per group "
                             "with a 95%% CI and the difference from the baseline")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if a group changes more than one key from the baseline")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="dir for report.md, report.csv, curves.png and "
                             "curves_time.png (default: the first PATH if a sweep dir, "
                             "else outputs/compare/<date>/<time>)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; returns the exit code: 0, 1 (``--strict`` and a multi-key ablation), 2 (error)."""
    args = parse_args(argv)
    try:
        result = compare(args.paths, args.baseline, args.target)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in result["unreadable"]:
        print(f"warning: excluded from the comparison: {line}", file=sys.stderr)
    for line in result["sparse"]:
        print(f"warning: {line}", file=sys.stderr)
    out = args.out or default_out_dir(args.paths[0])
    command = shlex.join(["lm", "compare", *(argv if argv is not None else sys.argv[1:])])
    print(write_report(result, out, command))
    if args.strict and result["ablation_flags"]:
        print(f"error: {len(result['ablation_flags'])} group(s) change more than one key "
              "from the baseline (--strict)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
