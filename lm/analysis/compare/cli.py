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
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from lm.analysis.compare.report import compare, write_report
from lm.analysis.compare.runs import CompareError, default_out_dir


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
    """The flags of ``lm compare`` (see the module docstring); argparse exits with code 2
    on a bad one."""
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
