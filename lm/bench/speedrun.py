"""Benchmark: wall-clock time to a target val/loss, baseline recipe against speedrun recipe.

Each run is a fresh ``python -m lm train experiment=<recipe>`` process in its own
temporary registry (so nothing is skipped or resumed, and nothing is left behind), the
recipes alternating (baseline, speedrun, baseline, ...) so that drift in the machine's
speed hits both. Both validate on the same fixed batches every ``val_check_interval``
steps with ``tracking.target_loss=<target>``, so each run's ``run.json`` records the
first validation at or below the target: its step and ``elapsed_s``, the seconds since
training began, validations included (``lm.training.module``). Samples are off.

After a run, its final checkpoint is evaluated on the whole validation split
(``lm evaluate full=true``, ``lm.commands.evaluate.whole_split_loss``): the target is
met on sampled batches, and a recipe must not win by fitting those. Prints one line per
run as it ends, then the runs side by side and the ratio speedrun / baseline of the mean
time to target (the goal: <= 0.5) and of the mean total wall time. The speedrun
framing (a fixed target loss, time to reach it) is Keller Jordan's modded-nanogpt.

    lm bench speedrun [runs=2] [target=1.8851] [val_check_interval=50]   (conf/bench_speedrun.yaml)
"""

import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lm.bench import BenchSpeedrunConfig
from lm.config.overrides import check_overrides

WHOLE_SPLIT = ("all", "last", "none")


@dataclass
class RunResult:
    """One training run of the benchmark. Times in seconds; None where not known."""

    recipe: str
    number: int  # 1, 2, ... within its recipe
    status: str  # run.json's status, or "failed (exit N)" without one
    wall_s: float | None = None  # run.json wall_time_s: fit and final checkpoint
    target_step: int | None = None  # step of the first validation <= target
    target_s: float | None = None  # seconds from the start of training to that validation
    val_loss: float | None = None  # final val/loss on the sampled validation batches
    whole_split_loss: float | None = None  # final checkpoint, whole validation split
    error: str | None = None  # the last line the process wrote on stderr, if it failed


def check_config(cfg: BenchSpeedrunConfig) -> None:
    """Raise ``ValueError`` (one line) for a bad count, interval or choice, a recipe that
    is not a conf/experiment option, or overrides ``lm train`` would reject."""
    for key in ("runs", "val_check_interval", "max_steps"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ValueError(f"{key}={value} is invalid: must be an integer >= 1"
                             + (", or null" if key == "max_steps" else ""))
    if cfg.baseline == cfg.speedrun:
        raise ValueError(f"speedrun={cfg.speedrun} is invalid: it must differ from baseline")
    if cfg.whole_split not in WHOLE_SPLIT:
        raise ValueError(f"whole_split={cfg.whole_split} is invalid: must be one of "
                         f"{' | '.join(WHOLE_SPLIT)}")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in (cfg.baseline, cfg.speedrun):
            if problem := check_overrides(train_overrides(cfg, recipe, Path(tmp))):
                raise ValueError(problem)


def train_overrides(cfg: BenchSpeedrunConfig, recipe: str, tmp: Path) -> list[str]:
    """``lm train`` overrides of one run of ``recipe`` with its registry and run dir in ``tmp``."""
    steps = [] if cfg.max_steps is None else [f"trainer.max_steps={cfg.max_steps}"]
    return [
        f"experiment={recipe}", *steps,
        f"trainer.val_check_interval={cfg.val_check_interval}",
        "tracking.min_val_points=null",  # exactly that interval, both recipes
        f"tracking.target_loss={cfg.target}", f"paths.data_dir={cfg.data_dir}",
        f"tracking.registry_dir={tmp}", f"hydra.run.dir={tmp / 'run'}",
        "tracking.skip_completed=false", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "sample.max_new_tokens=0", *cfg.overrides,
    ]


def train_once(cfg: BenchSpeedrunConfig, recipe: str, number: int, whole_split: bool) -> RunResult:
    """Train one run of ``recipe`` in a fresh process and temporary dir; its results,
    with the whole-split val/loss of its final checkpoint if ``whole_split``."""
    with tempfile.TemporaryDirectory(prefix="lm-bench-speedrun-") as tmp:
        done = launch(train_overrides(cfg, recipe, Path(tmp)))
        record_path = Path(tmp) / "run" / "run.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        result = result_of(recipe, number, done, record)
        print(status_line(result), flush=True)
        ckpt = (record.get("checkpoints") or {}).get("last")
        if whole_split and ckpt:
            result.whole_split_loss = whole_split_val_loss(ckpt)
    return result


def launch(overrides: list[str]) -> subprocess.CompletedProcess:
    """``python -m lm train <overrides>`` in a fresh process (nothing imported or
    warmed up by an earlier run); its exit code and captured output."""
    command = [sys.executable, "-m", "lm", "train", *overrides]
    return subprocess.run(command, check=False, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)  # a failed run is a row of the table, not an error


def result_of(recipe: str, number: int, done: subprocess.CompletedProcess, record: dict) -> RunResult:
    """A ``RunResult`` from a finished ``lm train`` process and its ``run.json`` (``{}``
    if it wrote none)."""
    status = record.get("status") or f"failed (exit {done.returncode})"
    reached = (record.get("target") or {}).get("reached") or {}
    stderr = [line for line in done.stderr.splitlines() if line.strip()]
    return RunResult(
        recipe, number, status, wall_s=record.get("wall_time_s"),
        target_step=reached.get("step"), target_s=reached.get("elapsed_s"),
        val_loss=(record.get("metrics") or {}).get("final", {}).get("val/loss"),
        error=None if status == "completed" or not stderr else stderr[-1],
    )


def status_line(r: RunResult) -> str:
    """One line for a run that has just ended."""
    line = f"  {r.recipe} run {r.number}: {r.status}"
    if r.wall_s is not None:
        line += f" in {r.wall_s:.1f} s"
    if r.val_loss is not None:
        line += f", final val/loss {r.val_loss:.4f}"
    if r.status == "completed":
        line += (f"; target reached at step {r.target_step}, {r.target_s:.1f} s into training"
                 if r.target_s is not None else "; target not reached")
    return line + (f" ({r.error})" if r.error else "")


def whole_split_val_loss(ckpt: str) -> float | None:
    """``lm evaluate ckpt=<ckpt> full=true``'s val/loss (its ``#`` line is printed,
    indented); None, with the reason printed, if it cannot be evaluated."""
    from lm.commands.evaluate import EvaluateConfig, evaluate

    cfg = EvaluateConfig(ckpt=ckpt, eval_iters=None, batch_size=None, full=True, device="cpu")
    try:
        loss = evaluate(cfg, say=lambda line: print(f"    {line}", flush=True))["val/loss"]
    except ValueError as err:  # CheckpointError, DataError
        print(f"    whole-split evaluation failed: {err}", flush=True)
        return None
    print(f"    whole-split val/loss {loss:.4f}", flush=True)
    return loss


def table(results: list[RunResult]) -> str:
    """The runs side by side, one row each."""
    def num(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    width = max(len("recipe"), *(len(r.recipe) for r in results))
    header = (f"{'recipe':<{width}}  run  steps to target  time to target (s)  total wall (s)"
              "  val/loss (sampled)  val/loss (whole split)")
    rows = [header]
    for r in results:
        reached = r.target_s is not None
        rows.append(
            f"{r.recipe:<{width}}  {r.number:>3}  "
            f"{num(r.target_step, 'd') if reached else 'not reached':>15}  "
            f"{num(r.target_s, '.1f') if reached else 'not reached':>18}  "
            f"{num(r.wall_s, '.1f'):>14}  {num(r.val_loss, '.4f'):>18}  "
            f"{num(r.whole_split_loss, '.4f'):>22}"
            + ("" if r.status == "completed" else f"  {r.status}")
        )
    return "\n".join(rows)


def mean_of(results: list[RunResult], key: str) -> float | None:
    """Mean of ``key`` over ``results``; None if any run lacks it (target not reached,
    run failed)."""
    values = [getattr(r, key) for r in results]
    return None if any(v is None for v in values) else statistics.mean(values)


def ratio_line(label: str, recipes: tuple[str, str], means: tuple[float | None, float | None],
               missing: str, goal: str = "") -> str:
    """``<label>: baseline x s, speedrun y s, ratio y/x<goal>``, with ``missing`` in place
    of a mean that is None and of the ratio then."""
    shown = [f"{name} {missing if m is None else f'{m:.1f} s'}" for name, m in zip(recipes, means)]
    b, s = means
    ratio = missing if b is None or s is None else f"{s / b:.2f}"
    return f"{label}: {', '.join(shown)}, ratio {ratio}{goal}"


def bench_speedrun(cfg: BenchSpeedrunConfig) -> int:
    """``lm bench speedrun``: train the two recipes alternately, print each run as it
    ends, then the table and the ratios of time to target and of total wall time.

    Raises:
        ValueError: a bad setting or override (one line), before any training.
    """
    check_config(cfg)
    recipes = (cfg.baseline, cfg.speedrun)
    steps = "each recipe's steps" if cfg.max_steps is None else f"{cfg.max_steps} steps"
    print(f"benchmark: experiment={cfg.baseline} against experiment={cfg.speedrun}, "
          f"{cfg.runs} run(s) of each alternating, {steps}, target val/loss <= {cfg.target}, "
          f"validation every {cfg.val_check_interval} steps, "
          f"{torch.get_num_threads()} torch threads here", flush=True)
    results = []
    for number in range(1, cfg.runs + 1):
        whole = cfg.whole_split == "all" or (cfg.whole_split == "last" and number == cfg.runs)
        for recipe in recipes:
            results.append(train_once(cfg, recipe, number, whole))
    print(table(results))
    by_recipe = [[r for r in results if r.recipe == name] for name in recipes]
    target = tuple(mean_of(rs, "target_s") for rs in by_recipe)
    wall = tuple(mean_of(rs, "wall_s") for rs in by_recipe)
    print(ratio_line(f"time to val/loss <= {cfg.target}", recipes, target, "not reached",
                     " (goal <= 0.5)"))
    print(ratio_line("total wall time", recipes, wall, "failed"))
    return 0
