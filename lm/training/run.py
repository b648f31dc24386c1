"""Train a GPT: ``python lm/train.py [group=option ...] [key=value ...]``.

Hydra composes ``conf/train.yaml``; ``run`` validates it, builds the data, the model
and the Trainer, fits, and records the run in its directory
(``outputs/runs/<date>/<time>-<hash8>/``): ``config.yaml`` (resolved), ``run.json``
(hash, overrides, status, metrics, code version), ``tb/`` (TensorBoard events) and
``checkpoints/`` (``last.ckpt``, ``best.ckpt`` by ``val/loss``).

Examples:
    python lm/train.py                                   # model=small, 2000 steps
    python lm/train.py model=tiny trainer.max_steps=50 seed=3
    python lm/train.py -m optimizer.lr=1e-4,3e-4,1e-3    # a sweep, one dir per job
"""

import sys
from pathlib import Path


import dataclasses
import logging
import shutil
import signal
import threading
import warnings
from collections.abc import Sequence
from typing import Self

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lm.training.callbacks import AtomicCheckpointIO, LastCheckpoint, RNGState, resume_step
from lm.training.config import CONF_DIR, ConfigError, check_overrides, register_configs, validate
from lm.interop.hf import init_from_hf
from lm.data.corpus import DataError
from lm.data.tokens import LMDataModule
from lm.hooks import build_hooks
from lm.model import GPTConfig
from lm.training.module import Diverged, LMModule
from lm.training.registry import (
    RESUMABLE,
    HashLock,
    RunRecord,
    code_version,
    config_hash,
    content_digests,
    find_runs,
    foreign_files,
    hashable_config,
    latest,
    mark_dead,
    register_resolvers,
    write_pointer,
)


def quiet_lightning() -> None:
    """Drop Lightning's advertising tips and a deprecation warning it raises itself."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "💡 Tip" not in str(record.msg)
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


register_configs()
register_resolvers()
quiet_lightning()


def build_datamodule(cfg: DictConfig) -> LMDataModule:
    """The data module for ``cfg``, prepared and set up (so data errors come first)."""
    dm = LMDataModule(
        source=cfg.data.source,
        path=cfg.data.path,
        data_dir=cfg.paths.data_dir,
        tokenizer=OmegaConf.to_container(cfg.data.tokenizer),
        val_fraction=cfg.data.val_fraction,
        block_size=cfg.model.block_size,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        eval_iters=cfg.data.eval_iters,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM; its record says ``interrupted``.

    Attributes:
        signum: the signal; the process should exit with 128 + signum (130, 143).
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class SigintFlag:
    """Notes a SIGINT while a fit runs (Lightning turns the KeyboardInterrupt into
    ``SystemExit(1)``, which alone cannot tell Ctrl-C from other exits)."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.received = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence = (),
                  record: RunRecord | None = None, purge_step: int | None = None) -> L.Trainer:
    """The Lightning Trainer from ``cfg.trainer`` with logger, checkpoints and progress bar.

    ``purge_step``: a resumed run's first step; TensorBoard hides the events an earlier
    segment wrote from there on (written after its last checkpoint, written again now).
    """
    logger = False
    if cfg.logger.get("_target_"):  # into run_dir, which differs from output_dir on resume
        where = {"save_dir": str(run_dir)} if "save_dir" in cfg.logger else {}
        if purge_step is not None and cfg.logger._target_.endswith("TensorBoardLogger"):
            where["purge_step"] = purge_step
        logger = hydra.utils.instantiate(cfg.logger, **where)
    ckpt_dir = run_dir / "checkpoints"
    heartbeat = None if record is None else (lambda trainer: record.update(**progress(trainer, cfg)))
    callbacks = [
        ModelCheckpoint(  # best.ckpt by val/loss; the Trainer's checkpoint_callback
            dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
            auto_insert_metric_name=False,
        ),
        LastCheckpoint(ckpt_dir, cfg.tracking.checkpoint_every_n_steps, on_save=heartbeat,
                       finite_only=cfg.tracking.divergence_guard),
        RNGState(),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    callbacks.extend(extra_callbacks)
    val_every = min(cfg.trainer.val_check_interval, cfg.trainer.max_steps)
    return hydra.utils.instantiate(
        cfg.trainer, val_check_interval=val_every, logger=logger, callbacks=callbacks,
        default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()],
    )


def log_hparams(trainer: L.Trainer, flat: dict) -> None:
    """Write the HParams-tab summary (hyperparameters, with ``val/loss`` as its metric)."""
    from torch.utils.tensorboard.summary import hparams

    experiment = getattr(trainer.logger, "experiment", None)
    if experiment is None or not hasattr(experiment, "_get_file_writer"):
        return
    writer = experiment._get_file_writer()
    for summary in hparams(flat, {"val/loss": 0.0}):
        writer.add_summary(summary)


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and None become strings (TensorBoard hparams)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def hydra_job_info() -> dict:
    """The overrides and group choices of this Hydra job ({} outside ``@hydra.main``)."""
    if not HydraConfig.initialized():
        return {"overrides": [], "choices": {}}
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    return {"overrides": list(hc.overrides.task), "choices": dict(choices)}


def run(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict:
    """Validate, then train one run unless the registry already has it; return its record.

    The record is the content of ``run.json`` (status ``skipped`` when not trained).

    The registry (run dirs under ``tracking.registry_dir``, and this job's own output
    dir wherever it is) is searched by config hash: a completed run is skipped
    (``tracking.skip_completed``) without touching its files, a diverged one is not
    retried (``tracking.retry_diverged``), an interrupted one is resumed in its own run
    dir (``resume=auto``) from its last readable checkpoint, and a hash being trained by
    another process right now is skipped. ``extra_callbacks`` are added to the
    Trainer's (the benchmark times steps with one).

    Raises:
        ConfigError, DataError: a bad config value, corpus or output dir (one line),
            before any training.
        Interrupted: SIGINT or SIGTERM stopped the run (recorded ``interrupted``).
    """
    model_config = validate(cfg)
    digests = content_digests(cfg)
    full_hash = config_hash(cfg, digests)
    job_dir = Path(cfg.paths.output_dir)
    lock = HashLock(cfg.tracking.registry_dir, full_hash)
    try:
        locked = lock.acquire()
    except OSError as err:
        raise ConfigError(f"tracking.registry_dir={cfg.tracking.registry_dir} cannot be written "
                          f"({err.strerror or err}); pick a writable dir") from None
    if not locked:
        print(f"skip {full_hash[:8]}: another process is training this config right now")
        skipped = {"hash": full_hash, "hash8": full_hash[:8], **hydra_job_info()}
        if job_dir.is_dir() and not foreign_files(job_dir, full_hash):
            write_pointer(job_dir, skipped, "skipped", reason="another process was training it")
        return {**skipped, "status": "skipped"}
    try:
        return run_locked(cfg, model_config, full_hash, digests, job_dir, extra_callbacks)
    finally:
        lock.release()


def run_locked(cfg: DictConfig, model_config: GPTConfig, full_hash: str, digests: dict,
               job_dir: Path, extra_callbacks: Sequence[L.Callback]) -> dict:
    """``run`` with the hash's lock held: decide skip, resume or start, then train."""
    h8 = full_hash[:8]
    runs = find_runs(cfg.tracking.registry_dir, full_hash, also=(job_dir,))
    mark_dead(runs)
    if problem := foreign_files(job_dir, full_hash):
        raise ConfigError(f"paths.output_dir={job_dir} already holds {problem}; a run dir is "
                          "written by one run only (choose another hydra.run.dir or hydra.sweep.dir)")
    if (done := latest(runs, "completed")) and cfg.tracking.skip_completed:
        print(f"skip {h8}: already completed in {done[0]} "
              "(tracking.skip_completed=false trains it again)")
        write_pointer(job_dir, {**done[1], "run_dir": str(done[0])}, "skipped")
        return {**done[1], "status": "skipped"}
    if (bad := latest(runs, "diverged")) and not done and not cfg.tracking.retry_diverged:
        print(f"skip {h8}: diverged in {bad[0]} ({bad[1].get('error')}); it is not resumed "
              "(tracking.retry_diverged=true trains it again from scratch)")
        write_pointer(job_dir, {**bad[1], "run_dir": str(bad[0])}, "skipped")
        return {**bad[1], "status": "skipped"}
    run_dir, ckpt_path, prior, purge_step = job_dir, None, {}, None
    if cfg.resume == "auto" and (interrupted := latest(runs, *RESUMABLE)):
        run_dir, prior = interrupted
        ckpt_path, purge_step = resumable_checkpoint(run_dir)
        print(f"resume {h8}: continuing {run_dir} from "
              f"{ckpt_path or 'scratch (no readable checkpoint)'}")
    else:
        if (own := [r for r in runs if r[0] == job_dir.resolve()]):
            raise ConfigError(f"paths.output_dir={job_dir} holds this config's {own[0][1].get('status')} "
                              "run; training it again needs a new run dir (another "
                              "hydra.run.dir or hydra.sweep.dir)")
        if cfg.resume not in ("auto", "never"):
            ckpt_path = Path(cfg.resume)
    record = train(cfg, model_config, full_hash, run_dir, ckpt_path, prior, extra_callbacks,
                   digests=digests, purge_step=purge_step)
    if run_dir.resolve() != job_dir.resolve():
        write_pointer(job_dir, record, "resumed")
    return record


def resumable_checkpoint(run_dir: Path) -> tuple[Path | None, int]:
    """(the newest checkpoint of an interrupted run that can be resumed: ``last.ckpt``,
    else ``best.ckpt``, else None to start afresh; the first step it trains). One that
    cannot (unreadable, truncated, non-finite weights) is renamed ``<name>.bad`` with one
    warning line."""
    for name in ("last.ckpt", "best.ckpt"):
        path = run_dir / "checkpoints" / name
        if not path.is_file():
            continue
        step, problem = resume_step(path)
        if problem is None:
            return path, step + 1
        aside = path.with_name(f"{name}.bad")
        path.replace(aside)
        print(f"warning: {path} is {problem}; set aside as {aside.name}", file=sys.stderr)
    return None, 0


def train(
    cfg: DictConfig, model_config: GPTConfig, full_hash: str, run_dir: Path,
    ckpt_path: Path | None, prior: dict, extra_callbacks: Sequence[L.Callback] = (),
    digests: dict | None = None, purge_step: int | None = None,
) -> dict:
    """Build data, model and Trainer from the validated ``cfg``, fit (from ``ckpt_path`` if
    given), and record the run in ``run_dir`` (``prior``: an interrupted run's record;
    ``purge_step``: its first step trained again, for TensorBoard).

    Returns the record; a diverged run returns with status ``diverged``.

    Raises:
        ConfigError: ``run_dir`` cannot be written. Interrupted: SIGINT or SIGTERM.
    """
    dm = build_datamodule(cfg)
    if model_config.vocab_size is None:
        model_config = dataclasses.replace(model_config, vocab_size=dm.tokenizer.vocab_size)
    elif model_config.vocab_size < dm.tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_config.vocab_size} is invalid: must be null or >= the "
            f"tokenizer's vocab_size {dm.tokenizer.vocab_size}"
        )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["paths"]["output_dir"] = str(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    except OSError as err:
        raise ConfigError(f"paths.output_dir={run_dir} cannot be written ({err.strerror or err}); "
                          "pick a writable hydra.run.dir / hydra.sweep.dir") from None

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = LMModule(
        model_config, optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler), tokenizer=dm.tokenizer,
        sample=OmegaConf.to_container(cfg.sample), run_config=resolved, seed=cfg.seed,
        val_tokens_per_byte=dm.meta["n_val"] / dm.meta["val_text_bytes"],
        hooks=build_hooks(cfg), divergence_guard=cfg.tracking.divergence_guard,
    )
    if cfg.init_from is not None and ckpt_path is None:  # a resume restores the tuned weights
        try:
            init_from_hf(module, cfg.init_from)
        except ValueError as err:
            raise ConfigError(f"init_from={cfg.init_from}: {err}") from None
    fields = {k: v for k, v in prior.items() if k not in ("run_dir", "status")}  # keep its history
    fields.update(hash=full_hash, hash8=full_hash[:8], code=code_version(), content=digests or {},
                  n_params=module.model.num_params(), **hydra_job_info())
    record = RunRecord(run_dir, **fields)
    if prior:
        record.data["resumed_from"] = [*prior.get("resumed_from", []), str(ckpt_path or "scratch")]
    trainer = build_trainer(cfg, run_dir, extra_callbacks, record, purge_step)
    record.start()
    if ckpt_path is None:
        log_hparams(trainer, {"hash8": full_hash[:8], **flatten(hashable_config(cfg, digests))})
    fit(trainer, module, dm, ckpt_path, record, cfg)
    if record.data["status"] == "diverged":
        return record.data
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # final
    record.finish("completed", **final_metrics(trainer, module, cfg))
    return record.data


def fit(trainer: L.Trainer, module: LMModule, dm: LMDataModule, ckpt_path: Path | None,
        record: RunRecord, cfg: DictConfig) -> None:
    """``trainer.fit``, recording how it ended if it did not complete: ``diverged``
    (returns), ``interrupted`` (raises ``Interrupted``) or ``failed`` (re-raises)."""
    sigint = SigintFlag()
    try:
        with sigint:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except Diverged as err:
        record.finish("diverged", error=str(err), **final_metrics(trainer, module, cfg))
    except (SIGTERMException, KeyboardInterrupt, SystemExit) as err:
        if not (sigint.received or isinstance(err, (SIGTERMException, KeyboardInterrupt))):
            raise
        signum = signal.SIGTERM if isinstance(err, SIGTERMException) else signal.SIGINT
        message = f"{signal.Signals(signum).name} at step {trainer.global_step}"
        record.finish("interrupted", error=message, **progress(trainer, cfg))
        raise Interrupted(signum, message) from None
    except BaseException as err:  # the record must say the run did not finish
        record.finish("failed", error=f"{type(err).__name__}: {err}", **progress(trainer, cfg))
        raise


def progress(trainer: L.Trainer, cfg: DictConfig) -> dict:
    """Steps and tokens seen so far."""
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size * cfg.trainer.accumulate_grad_batches
    return {"steps": trainer.global_step, "tokens_seen": trainer.global_step * tokens_per_step}


def final_metrics(trainer: L.Trainer, module: LMModule, cfg: DictConfig) -> dict:
    """Steps, tokens seen, the latest and best ``val/loss`` and the checkpoints of a fit.

    The latest metrics come from the module, which keeps them in its checkpoints, so a
    run resumed at its last step reports what the uninterrupted run would.
    """
    best = trainer.checkpoint_callback.best_model_score  # restored on resume
    logged = module.final_metrics()
    return {
        **progress(trainer, cfg),
        "metrics": {
            "final": {k: logged[k] for k in ("train/loss", "val/loss", "val/ppl", "val/bpb") if k in logged},
            "best": {"val/loss": None if best is None else float(best)},
        },
        "checkpoints": {"last": existing(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"),
                        "best": existing(trainer.checkpoint_callback.best_model_path)},
    }


def existing(path: str | Path) -> str | None:
    """``path`` as a string if that file exists, else None."""
    return str(path) if path and Path(path).is_file() else None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final ``val/loss`` (what sweepers minimise).

    Exit codes: 2 bad input (one line), 3 diverged (a single run; a sweep goes on),
    130 / 143 stopped by SIGINT / SIGTERM (resumable: run the same command again).
    """
    try:
        record = run(cfg)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        remove_unstarted_run_dir(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)
    except Interrupted as err:
        print(f"interrupted: {err}; run the same command again to resume", file=sys.stderr)
        sys.exit(128 + err.signum)
    if record.get("status") == "diverged":
        print(f"diverged {record['hash8']}: {record.get('error')} (run.json: {record['run_dir']}); "
              "lower optimizer.lr or clip harder, then retry with tracking.retry_diverged=true",
              file=sys.stderr)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(3)
        return float("nan")
    return record.get("metrics", {}).get("final", {}).get("val/loss")


def remove_unstarted_run_dir(run_dir: Path) -> None:
    """Remove the dir Hydra made for a run that a bad value stopped before it started
    (nothing in it but Hydra's own ``.hydra/`` and log), so the registry holds runs only."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def command(argv: Sequence[str]) -> int:
    """``lm train [overrides]``: check the overrides (one line, exit 2), then Hydra's main."""
    if problem := check_overrides(list(argv)):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], *argv]  # @hydra.main reads its overrides from sys.argv
    main()
    return 0
