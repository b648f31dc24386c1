"""``lm train [group=option ...] [key=value ...]`` (= ``python lm/train.py ...``): one job.

``lm/cli.py`` dispatches ``lm train`` as it does every command (``lm/config/app.py``:
the overrides checked, then Hydra's ``@hydra.main`` on ``conf/train.yaml``); with ``-m``
Hydra's launcher runs ``train_command`` once per job of the sweep, in this process or
in others. Each job trains one run (``lm/training/run.py``), tees its output to
``train.log`` in its dir and ends with the exit code that says how the run ended.

Examples:
    lm train                                   # model=small, 2000 steps
    lm train model=tiny trainer.max_steps=50 seed=3
    lm train -m optimizer.lr=1e-4,3e-4,1e-3    # a sweep, one dir per job
"""

import contextlib
import os
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lm.config.compose import register_configs
from lm.data.corpus import DataError
from lm.errors import ConfigError, first_line
from lm.training.distributed import world_size
from lm.training.logfile import tee_output
from lm.training.registry import remove_unstarted_run_dir
from lm.training.run import quiet_lightning, run
from lm.training.signals import Interrupted


def prepare_process() -> None:
    """What a training process needs before its job runs: the schemas and resolvers
    registered, Lightning quieted. Idempotent; importing this module does none of it."""
    register_configs()
    quiet_lightning()


def train_command(cfg: DictConfig) -> float | None:
    """One job of ``lm train`` (Hydra's task function); returns the final ``val/loss``
    (what sweepers minimise), NaN for a diverged job of a sweep.

    Exit codes: 2 bad input (one line), 3 diverged (a single run; a sweep goes on),
    130 / 143 stopped by SIGINT / SIGTERM (resumable: run the same command again), 1 a
    run of several processes whose other rank stopped.
    """
    prepare_process()  # here: a launcher may run this job in a fresh process
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with tee_output(job_dir / "train.log") if is_rank_zero() else contextlib.nullcontext():
            record = run(cfg)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        remove_unstarted_run_dir(job_dir)
        sys.exit(2)
    except Interrupted as err:
        print(f"interrupted: {err}; run the same command again to resume", file=sys.stderr)
        sys.exit(128 + err.signum)
    except Exception as err:
        if (world := world_size(cfg)) == 1 or not peer_lost(err):
            raise
        other = "rank 1" if world == 2 else f"another of the {world} ranks"
        print(f"error: {other} of this run stopped ({peer_lost(err)}); "
              "the run is recorded failed: run the same command again to resume it from its "
              "last checkpoint", file=sys.stderr)
        sys.exit(1)
    keep_log(job_dir, record)
    if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep's pointers give its summary rows
        remove_unstarted_run_dir(job_dir)
    if record.get("status") == "diverged":
        print(f"diverged {record['hash8']}: {record.get('error')} (run.json: {record['run_dir']}); "
              "lower optimizer.lr or clip harder, then retry with tracking.retry_diverged=true",
              file=sys.stderr)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(3)
        return float("nan")
    return record.get("metrics", {}).get("final", {}).get("val/loss")


def peer_lost(err: BaseException) -> str | None:
    """How a collective failed because another rank's process is gone (gloo's
    "Connection reset/closed by peer", NCCL's, torch's ``DistError``), in a few words;
    None for any other error."""
    text = str(err)
    for phrase in ("Connection reset by peer", "Connection closed by peer"):
        if phrase in text:
            return f"gloo: {phrase.lower()}"
    if isinstance(err, torch.distributed.DistError) or "NCCL" in text:
        return f"{type(err).__name__}: {first_line(err)[:80]}"
    return None


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (or the only one): the other ranks of a run that
    Lightning, torchrun or srun started write no log."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def keep_log(job_dir: Path, record: dict) -> None:
    """A job that resumed a run in that run's earlier dir: its ``train.log`` (the resumed
    segment's lines) is appended to that dir's, where the rest of the run's log is."""
    run_dir = Path(record.get("run_dir") or job_dir)
    log = job_dir / "train.log"
    if record.get("status") != "skipped" and run_dir.resolve() != job_dir.resolve() and log.is_file():
        with contextlib.suppress(OSError), (run_dir / "train.log").open("a") as f:
            f.write(log.read_text(errors="replace"))
