"""Train a GPT: ``lm train [group=option ...] [key=value ...]`` (= ``python lm/train.py ...``).

Hydra composes ``conf/train.yaml``; ``run`` validates it, asks the registry what to do
with its hash (``lm/training/registry.py``: skip, resume or start), instantiates the
data module, the LightningModule, the callbacks (``conf/callbacks/``), the logger and
the Trainer from the config, fits, and records the run in its directory
(``outputs/runs/<date>/<time>-<hash8>/``): ``config.yaml`` (resolved), ``run.json``
(``lm/training/record.py``), ``tb/`` (TensorBoard events) and ``checkpoints/``
(``last.ckpt``, ``best.ckpt`` by ``val/loss``). As lightning-hydra-template's
``src/train.py``: this file wires; the policies live beside it.

Examples:
    lm train                                   # model=small, 2000 steps
    lm train model=tiny trainer.max_steps=50 seed=3
    lm train -m optimizer.lr=1e-4,3e-4,1e-3    # a sweep, one dir per job
"""

import contextlib
import copy
import dataclasses
import logging
import re
import resource
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lm.adapters.build import adapter_state
from lm.adapters.lora import count_params
from lm.checkpoint import save_adapter_safetensors
from lm.config.validate import Validated, validate
from lm.data.datamodule import LMDataModule, build_datamodule
from lm.data.prepare import ensure_prepared
from lm.errors import ConfigError
from lm.model import GPTConfig
from lm.tokenizers import Tokenizer
from lm.training.callbacks import AtomicCheckpointIO, LastCheckpoint, instantiate_callbacks
from lm.training.distributed import (
    children_follow,
    rank_zero_decides,
    started_together,
    world_size,
)
from lm.training.finetune import measure_initial, start_from
from lm.training.hashing import (
    canonical_sha256,
    code_version,
    content_digests,
    hashable_config,
    val_check_interval,
)
from lm.training.hparams import hparam_values
from lm.training.mfu import size_report
from lm.training.module import Diverged, LMModule
from lm.training.record import RunRecord
from lm.training.registry import Plan, hydra_job_info
from lm.training.run_callbacks import HParamsSession, TargetLoss, check_compile
from lm.training.signals import Interrupted, SigintFlag, stopping_signal
from lm.training.strategies import build_strategy

ADAPTER_FILE = "adapter.safetensors"  # an adapter run's adapters, at its last step


def run(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict:
    """Validate, then train one run unless the registry already has it; return its record.

    The record is the content of ``run.json`` (status ``skipped`` when not trained; see
    ``registry.claim`` for when). ``extra_callbacks`` are added to the configured ones
    (the benchmark times steps with one).

    Raises:
        ConfigError, DataError: a bad config value, corpus or output dir (one line),
            before any training.
        Interrupted: SIGINT or SIGTERM stopped the run (recorded ``interrupted``).
    """
    checked = validate(cfg)
    ensure_prepared(OmegaConf.to_container(cfg.data, resolve=True))  # data=tinystories: once
    digests = content_digests(cfg)
    full_hash = canonical_sha256(hashable_config(cfg, digests))  # = registry.config_hash
    check_world_size(cfg)
    with rank_zero_decides(cfg, full_hash) as plan:  # claim(cfg, full_hash) on rank 0
        if plan.skipped is not None:
            return plan.skipped
        record = train(at_run_dir(cfg, plan.run_dir), plan, checked, digests, extra_callbacks)
        if plan.leader:
            plan.done(record)
        return record


def check_world_size(cfg: DictConfig) -> None:
    """A run on several processes is started by a command, and every rank needs a
    validation batch of its own.

    Raises:
        ConfigError: several processes outside a Hydra job (Lightning starts the other
            ranks by running the job's command again), or ``data.eval_iters`` below the
            number of processes.
    """
    world = world_size(cfg)
    if world > cfg.data.eval_iters:
        raise ConfigError(f"data.eval_iters={cfg.data.eval_iters} is invalid with {world} processes "
                          f"(trainer.devices * trainer.num_nodes): must be >= {world}, "
                          "each rank validates its own share of the batches")
    if world > 1 and not HydraConfig.initialized() and started_together() is None:
        raise ConfigError(f"trainer.devices * trainer.num_nodes = {world} processes need a "
                          "command (lm train ..., torchrun, srun): Lightning starts the other "
                          "ranks by running it again; in Python, train on one process")


def train(cfg: DictConfig, plan: Plan, checked: Validated, digests: dict,
          extra_callbacks: Sequence[L.Callback] = ()) -> dict:
    """Instantiate data, model, callbacks, logger and Trainer from ``cfg`` (validated, its
    ``paths.output_dir`` the run dir), fit (from ``plan.ckpt_path`` if set), and record
    the run in ``plan.run_dir``. On
    a rank > 0 (``plan.leader`` False) the same, but nothing of the run's is written
    (run.json, config.yaml, events, the adapter file: rank 0 writes them).

    Returns the record ({} on a rank > 0); a diverged run returns with status
    ``diverged``.

    Raises:
        ConfigError: a callback argument is rejected, ``callbacks.compile`` disagrees
            with ``trainer.compile``, ``init_from`` does not fit, or the run dir cannot be
            written. Interrupted: SIGINT or SIGTERM.
    """
    dm = build_datamodule(cfg, fixed_tokenizer=checked.init.tokenizer if checked.init else None)
    cfg.trainer.val_check_interval = val_check_interval(  # as hashed: see registry
        cfg.trainer, cfg.tracking.get("min_val_points"))
    run_config = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = LMModule(
        with_vocab(checked.model_config, dm.tokenizer),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler), tokenizer=dm.tokenizer,
        run_config=run_config, hooks=checked.hooks,
        val_tokens_per_byte=dm.meta["n_val"] / dm.meta["val_text_bytes"],
        divergence_guard=cfg.tracking.divergence_guard,
    )
    if cfg.init_from is not None:
        start_from(module, cfg.init_from, checked.init, run_config.get("adapter"),
                   digests.get("init_from"), resuming=plan.ckpt_path is not None, verbose=plan.leader)
    if cfg.init_from is not None and plan.ckpt_path is None:
        loss = measure_initial(module, dm.val_dataloader())
        if plan.leader:
            print(f"init_from: val/loss {loss:.4f} before training, on this run's validation batches")
    callbacks = [HParamsSession(hparam_values(cfg), trial_name(plan.run_dir, plan.full_hash)),
                 *instantiate_callbacks(cfg.callbacks, cfg.trainer.enable_progress_bar),
                 *extra_callbacks]
    check_compile(callbacks, cfg.trainer.compile)
    trainer_args = {k: v for k, v in run_config["trainer"].items()
                    if k not in ("compile", "peak_tflops")}  # the callbacks' (conf/callbacks/)
    trainer = hydra.utils.instantiate(
        trainer_args, val_check_interval=min(cfg.trainer.val_check_interval, cfg.trainer.max_steps),
        strategy=build_strategy(cfg.trainer.get("strategy", "auto")),
        use_distributed_sampler=False,  # each rank's batches: LMDataModule
        logger=build_logger(cfg, plan.purge_step), callbacks=callbacks,
        default_root_dir=str(plan.run_dir), plugins=[AtomicCheckpointIO()],
    )
    if not plan.leader:
        try:
            fit(trainer, module, dm, plan.ckpt_path, None, cfg)
        except Diverged:  # rank 0 records it and says so
            return {}
        trainer.save_checkpoint(plan.run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # collective
        return {}
    record = RunRecord(plan.run_dir, **{
        **plan.history(), "hash": plan.full_hash, "hash8": plan.full_hash[:8],
        "code": code_version(), "content": digests, **param_counts(module),
        "unk_fraction": dm.meta.get("unk_fraction"),
        "world_size": world_size(cfg),
        **hydra_job_info(),
    })
    for callback in callbacks:  # each last.ckpt updates run.json: steps so far
        if isinstance(callback, LastCheckpoint):
            callback.on_save = lambda trainer: record.update(**progress(trainer, cfg))
    write_config(plan.run_dir, run_config)
    say_size(module, cfg)
    record.start()
    reset_peak_memory()
    with children_follow(cfg, plan, hydra_job_info()["overrides"]):
        fit(trainer, module, dm, plan.ckpt_path, record, cfg)
        if record.data["status"] == "diverged":
            return record.data
        trainer.save_checkpoint(plan.run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # final
    if module.adapter is not None:
        save_adapter_safetensors(adapter_checkpoint(module), plan.run_dir / "checkpoints" / ADAPTER_FILE)
    record.finish("completed", **final_metrics(trainer, module, cfg))
    return record.data


def say_size(module: LMModule, cfg: DictConfig) -> None:
    """Print how big a step is (parameters, FLOPs, attention memory) before training,
    and a warning on stderr when one batch's attention would not fit in memory."""
    device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu"
    line, warning = size_report(module.model_config, module.model, cfg.data.batch_size, device)
    print(line)
    if warning:
        print(warning, file=sys.stderr)


def param_counts(module: LMModule) -> dict[str, int]:
    """``run.json``'s parameter counts: ``n_params_total`` (every weight, a 4-bit one by
    its logical size), ``n_params_trainable`` (what the optimizer updates) and
    ``n_params_non_embedding`` (without the position embedding, nor the token embedding
    unless tied to the head: Kaplan et al. 2020, the N of scaling laws and of MFU)."""
    trainable, total = count_params(module.model)
    return {"n_params_total": total, "n_params_trainable": trainable,
            "n_params_non_embedding": module.model.num_params(non_embedding=True)}


def adapter_checkpoint(module: LMModule) -> dict:
    """The adapter weights and what rebuilds the base, as ``load_checkpoint`` reads them."""
    return {"state_dict": adapter_state(module.state_dict()), "adapter": module.adapter,
            "model_config": dataclasses.asdict(module.model_config),
            "tokenizer": module.tokenizer.to_dict(), "run_config": module.run_config}


def at_run_dir(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """A copy of ``cfg`` whose ``paths.output_dir`` is ``run_dir``: a resumed run trains in
    the interrupted run's dir, not the job's, and the logger and the checkpoint callbacks
    (``${paths.output_dir}``) follow."""
    cfg = copy.deepcopy(cfg)
    cfg.paths.output_dir = str(run_dir)
    return cfg


def with_vocab(model_config: GPTConfig, tokenizer: Tokenizer) -> GPTConfig:
    """``model_config`` with ``vocab_size`` taken from ``tokenizer`` where it is null.

    Raises:
        ConfigError: a ``model.vocab_size`` smaller than the tokenizer's.
    """
    if model_config.vocab_size is None:
        return dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    if model_config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_config.vocab_size} is invalid: must be null or >= the "
            f"tokenizer's vocab_size {tokenizer.vocab_size}"
        )
    return model_config


def build_logger(cfg: DictConfig, purge_step: int | None) -> Any:
    """The logger of ``cfg.logger`` (False for ``logger=none``). ``purge_step``: a resumed
    run's first step; TensorBoard hides the events an earlier segment wrote from there
    on (written after its last checkpoint, written again now)."""
    if not cfg.logger.get("_target_"):
        return False
    extra = {}
    if purge_step is not None and cfg.logger._target_.endswith(("TensorBoardLogger", "RunDirLogger")):
        extra["purge_step"] = purge_step
    return hydra.utils.instantiate(cfg.logger, **extra)


def trial_name(run_dir: Path, full_hash: str) -> str:
    """A run's name in TensorBoard's HParams tab: its overrides as its dir names them
    (``0-lr:1e-3-1efc3874`` -> ``lr:1e-3 1efc3874``), or its hash alone."""
    h8 = full_hash[:8]
    label = re.sub(rf"^(\d\d-\d\d-\d\d-|\d+-)?(.*?)-?{h8}$", r"\2", run_dir.name)
    return f"{label} {h8}" if label and label != run_dir.name else h8


def write_config(run_dir: Path, run_config: dict) -> None:
    """``<run_dir>/config.yaml``: the resolved config of the run.

    Raises:
        ConfigError: the run dir cannot be written (one line).
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(run_config))
    except OSError as err:
        raise ConfigError(f"paths.output_dir={run_dir} cannot be written ({err.strerror or err}); "
                          "pick a writable hydra.run.dir / hydra.sweep.dir") from None


def fit(trainer: L.Trainer, module: LMModule, dm: LMDataModule, ckpt_path: Path | None,
        record: RunRecord | None, cfg: DictConfig) -> None:
    """``trainer.fit``, recording how it ended if it did not complete: ``diverged``
    (returns), ``interrupted`` (raises ``Interrupted``) or ``failed`` (re-raises).
    ``record`` None (a rank > 0): nothing recorded, every exception re-raised."""
    def stuck(signum: signal.Signals) -> None:  # the watchdog thread, inside a long step
        message = f"{signum.name} at step {trainer.global_step}, inside a step"
        if record is not None:
            record.finish("interrupted", error=message, **progress(trainer, cfg))
            print(f"interrupted: {message}; run the same command again to resume", file=sys.stderr)

    sigint = SigintFlag(on_stuck=stuck)
    try:
        with sigint:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except Diverged as err:
        if record is None:
            raise
        record.finish("diverged", error=str(err), **final_metrics(trainer, module, cfg))
    except BaseException as err:  # the record must say the run did not finish
        if record is None:
            raise
        signum = stopping_signal(err, sigint)
        if signum is not None:
            message = f"{signum.name} at step {trainer.global_step}"
            record.finish("interrupted", error=message, **progress(trainer, cfg))
            raise Interrupted(signum, message) from None
        if isinstance(err, SystemExit):  # not a signal's: not the run's to record
            raise
        record.finish("failed", error=f"{type(err).__name__}: {err}", **progress(trainer, cfg))
        raise


def progress(trainer: L.Trainer, cfg: DictConfig) -> dict:
    """Steps and tokens seen so far (all ranks: each step takes ``world_size`` batches)."""
    tokens_per_step = (cfg.data.batch_size * cfg.model.block_size
                       * cfg.trainer.accumulate_grad_batches * world_size(cfg))
    return {"steps": trainer.global_step, "tokens_seen": trainer.global_step * tokens_per_step}


def final_metrics(trainer: L.Trainer, module: LMModule, cfg: DictConfig) -> dict:
    """Steps, tokens seen, the latest and best ``val/loss`` and the checkpoints of a fit.

    The latest metrics come from the module, which keeps them in its checkpoints, so a
    run resumed at its last step reports what the uninterrupted run would. The best
    comes from the first ``ModelCheckpoint`` (``callbacks.best_checkpoint``; None
    without one), whose score a resume restores; the target from ``TargetLoss``
    (``callbacks.target_loss``; None without one or without a target).
    """
    best = trainer.checkpoint_callback
    ckpt_dir = Path(best.dirpath) if best else Path(cfg.paths.output_dir) / "checkpoints"
    logged = module.final_metrics()
    return {
        **progress(trainer, cfg),
        "peak_memory_mb": peak_memory_mb(),
        "weights_mb": tensors_mb([*module.model.parameters(), *module.model.buffers()]),
        "optimizer_state_mb": tensors_mb([t for optimizer in trainer.optimizers
                                          for state in optimizer.state.values()
                                          for t in state.values() if torch.is_tensor(t)]),
        "metrics": {
            "initial": module.initial_metrics or None,
            "final": {k: logged[k] for k in ("train/loss", "val/loss", "val/ppl", "val/bpb") if k in logged},
            "best": {"val/loss": None if best is None or best.best_model_score is None
                     else float(best.best_model_score)},
        },
        "target": next((c.record() for c in trainer.callbacks if isinstance(c, TargetLoss)), None),
        "checkpoints": {"last": existing(ckpt_dir / "last.ckpt"),
                        "best": existing(best.best_model_path) if best else None,
                        "adapter": existing(ckpt_dir / ADAPTER_FILE)},
        "checkpoint_mb": file_mb(ckpt_dir / "last.ckpt"),
    }


def reset_peak_memory() -> None:
    """Start counting ``peak_memory_mb`` from now: the GPU allocator's peak on CUDA, the
    resident set's high-water mark on Linux (``/proc/self/clear_refs``), so the peak is
    the fit's, not the corpus download's or tokenisation's before it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb() -> float:
    """Peak memory in MiB since ``reset_peak_memory``: the GPU allocator's peak on CUDA;
    else the resident set's high-water mark (Linux ``VmHWM``; elsewhere ``ru_maxrss``,
    the whole process's: KiB on Linux, bytes on macOS)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return round(int(next(x for x in status if x.startswith("VmHWM:")).split()[1]) / 2**10, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def tensors_mb(tensors: list[torch.Tensor]) -> float:
    """MiB held by ``tensors`` (a tensor shared by several names counted once): a 4-bit
    base's weights count as the bytes they take, not as float32."""
    unique = {t.data_ptr(): t for t in tensors}.values()
    return round(sum(t.numel() * t.element_size() for t in unique) / 2**20, 3)


def file_mb(path: Path) -> float | None:
    """A file's size in MiB (None if it does not exist)."""
    return round(path.stat().st_size / 2**20, 3) if path.is_file() else None


def existing(path: str | Path) -> str | None:
    """``path`` as a string if that file exists, else None."""
    return str(path) if path and Path(path).is_file() else None


def quiet_lightning() -> None:
    """Drop Lightning's advertising tips and a deprecation warning it raises itself
    (idempotent: the same filter object, and ``filterwarnings`` replaces its twin)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _no_tips(record: logging.LogRecord) -> bool:
    return "💡 Tip" not in str(record.msg)
