"""Several processes, one run: rank 0 decides, the other ranks follow.

Lightning's DDP (``trainer.strategy=ddp``) runs one process per device, started in
one of two ways:

- **Lightning starts them** (one machine, ``trainer.devices`` > 1): the process the
  user started is rank 0; inside ``trainer.fit`` Lightning runs the training script
  again for ranks 1.., with ``LOCAL_RANK`` set (``_SubprocessScriptLauncher``).
- **Something else starts every rank at once**: ``torchrun`` or SLURM's ``srun``
  (``hydra/launcher=submitit_slurm``); each process reads its rank from the
  environment (Lightning's ``TorchElasticEnvironment``, ``SLURMEnvironment``).

Either way rank 0 alone takes the hash's lock and decides (``registry.claim``: skip,
resume or start), and alone writes ``run.json``, ``config.yaml`` and events; the other
ranks train with its ``Plan``. The plan reaches them through the environment of the
processes Lightning starts (``children_follow``), or, for processes started
together, through a ``torch.distributed`` broadcast over the process group Lightning
then uses for training (``rank_zero_decides``).
"""

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, read_write

from lm.errors import ConfigError
from lm.training.registry import Plan, claim

PLAN_ENV = "LM_RANK0_PLAN"  # rank 0's Plan (JSON) in the environment of the ranks it starts
# What rank 0's environment gets while it starts the others: the plan, and Lightning's
# rendezvous variables (``_SubprocessScriptLauncher``).
LAUNCH_ENV = (PLAN_ENV, "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def world_size(cfg: DictConfig) -> int:
    """Processes a run trains in: ``trainer.devices * trainer.num_nodes``."""
    return int(cfg.trainer.devices) * int(cfg.trainer.get("num_nodes", 1))


def started_together() -> tuple[int, int] | None:
    """(global rank, world size) of a process that ``torchrun`` or SLURM's ``srun``
    started beside the others (Lightning's ``TorchElasticEnvironment`` or
    ``SLURMEnvironment`` detects it); None for a process started on its own, or by
    Lightning for another rank."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            env = environment()
            if env.world_size() > 1:
                return env.global_rank(), env.world_size()
    return None


@contextlib.contextmanager
def rank_zero_decides(cfg: DictConfig, full_hash: str) -> Iterator[Plan]:
    """The plan of this job's process (``Plan.leader`` False on ranks > 0): rank 0's
    ``registry.claim`` (the hash's lock held until the block ends), which the other
    ranks follow, from ``PLAN_ENV`` (ranks Lightning started) or a broadcast (ranks
    started together; the default process group is started first: gloo on CPU, NCCL
    for CUDA tensors and gloo for CPU ones on GPUs, which Lightning then trains with).

    Raises:
        ConfigError: ``claim``'s; on ranks > 0, rank 0's (it failed before deciding) or a
            config that is not rank 0's (another hash).
    """
    if (encoded := os.environ.get(PLAN_ENV)) is not None and not is_first_process():
        yield checked_plan(json.loads(encoded), full_hash)
        return
    together = started_together()
    if together is None:
        with claim(cfg, full_hash) as plan:
            yield plan
        return
    init_process_group(cfg)
    if together[0] != 0:
        yield checked_plan(broadcast(None), full_hash)
        return
    sent = False
    try:
        with claim(cfg, full_hash) as plan:
            broadcast(encode_plan(plan))
            sent = True
            yield plan
    except ConfigError as err:  # the others must not wait for a plan that never comes
        if not sent:
            broadcast({"error": str(err)})
        raise


def is_first_process() -> bool:
    """Whether this is the process the user started (rank 0), not one Lightning started
    for another rank (``LOCAL_RANK`` or ``NODE_RANK`` > 0)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def checked_plan(data: dict, full_hash: str) -> Plan:
    """The ``Plan`` a rank > 0 follows, from rank 0's JSON form (``encode_plan``).

    Raises:
        ConfigError: rank 0 failed before deciding (its error), or decided for another
            config hash than ``full_hash``.
    """
    if "error" in data:
        raise ConfigError(f"rank 0 stopped: {data['error']}")
    if data["full_hash"] != full_hash:
        raise ConfigError(f"this rank composed config {full_hash[:8]} but rank 0 composed "
                          f"{data['full_hash'][:8]}: every rank must run the same command")
    paths = {k: None if data[k] is None else Path(data[k]) for k in ("job_dir", "run_dir", "ckpt_path")}
    return Plan(**{**data, **paths, "leader": False})


def encode_plan(plan: Plan) -> dict:
    """``plan`` as JSON-able data (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(plan).items()}


def init_process_group(cfg: DictConfig) -> None:
    """Start the default process group of a ``torchrun`` / ``srun`` launch as Lightning
    would (its cluster environment's address, port, rank and world size); a no-op if
    one is running."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if torch.distributed.is_initialized():
        return
    env = TorchElasticEnvironment() if TorchElasticEnvironment.detect() else SLURMEnvironment()
    os.environ["MASTER_ADDR"] = env.main_address
    os.environ["MASTER_PORT"] = str(env.main_port)
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(env.local_rank())
    torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if on_gpu else "gloo",
                                         rank=env.global_rank(), world_size=env.world_size())


def broadcast(data: dict | None) -> dict:
    """Rank 0's ``data`` on every rank (through the CPU backend)."""
    box = [data]
    torch.distributed.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


@contextlib.contextmanager
def children_follow(cfg: DictConfig, plan: Plan, overrides: list[str]) -> Iterator[None]:
    """While rank 0 fits: the ranks Lightning starts get ``plan`` (``PLAN_ENV``) and run
    ``lm/train.py`` with this job's ``overrides`` in this job's dir (``plan.job_dir``).
    Nothing changes where Lightning starts no process (one process; ranks started
    together).

    Lightning starts them with this process's ``sys.argv`` (or ``-m`` and the main
    module), Hydra's ``run.dir`` as their run dir, and ``hydra.output_subdir=null``. So
    ``sys.argv`` becomes ``lm/train.py`` and the job's overrides (``lm train`` would
    read the first override as a command; a sweep's ``-m`` would start a sweep in every
    rank) and ``hydra.run.dir`` the job's dir (a sweep job's is under ``sweep.dir``).
    Everything is put back afterwards, the variables Lightning set in this process's
    environment too (with ``LOCAL_RANK`` set, Lightning takes the processes to be
    started by someone else and would start none for the next job of a sweep), and the
    process group is ended: the ranks it joined are gone.
    """
    from hydra.core.hydra_config import HydraConfig

    import __main__

    if world_size(cfg) == 1 or started_together() is not None:
        yield
        return
    saved_env = {key: os.environ.get(key) for key in LAUNCH_ENV}
    saved_argv, saved_spec = sys.argv, getattr(__main__, "__spec__", None)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    saved_run_dir = hydra_cfg.run.dir if hydra_cfg is not None else None
    os.environ[PLAN_ENV] = json.dumps(encode_plan(plan))
    sys.argv = [str(Path(__file__).resolve().parents[1] / "train.py"), *overrides]
    __main__.__spec__ = None  # Lightning: no spec -> `python sys.argv[0] ...`
    if hydra_cfg is not None:
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = str(plan.job_dir)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.argv, __main__.__spec__ = saved_argv, saved_spec
        if hydra_cfg is not None:
            with read_write(hydra_cfg):
                hydra_cfg.run.dir = saved_run_dir
