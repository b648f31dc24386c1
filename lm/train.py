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

if __package__ in (None, ""):  # run as a script: import the package, not lm/*.py as top level
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import dataclasses
import logging
import shutil
import warnings
from collections.abc import Sequence

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from lm.config import ConfigError, register_configs, unknown_choice, validate
from lm.convert import init_from_hf
from lm.corpus import DataError
from lm.data import LMDataModule
from lm.hooks import build_hooks
from lm.model import GPTConfig
from lm.module import LMModule
from lm.tracking import (
    HashLock,
    RunRecord,
    code_version,
    completed_run,
    config_hash,
    find_runs,
    hashable_config,
    register_resolvers,
    resumable_run,
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


class RNGState(L.Callback):
    """Saves the CPU (and CUDA) RNG states in checkpoints and restores them on resume,
    so dropout after a resume draws what an uninterrupted run would have drawn.
    (Batches need no state: they depend on (seed, step) only.)"""

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence = ()) -> L.Trainer:
    """The Lightning Trainer from ``cfg.trainer`` with logger, checkpoints and progress bar."""
    logger = False
    if cfg.logger.get("_target_"):  # into run_dir, which differs from output_dir on resume
        where = {"save_dir": str(run_dir)} if "save_dir" in cfg.logger else {}
        logger = hydra.utils.instantiate(cfg.logger, **where)
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        ModelCheckpoint(  # best.ckpt by val/loss; the Trainer's checkpoint_callback
            dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
            auto_insert_metric_name=False,
        ),
        ModelCheckpoint(  # last.ckpt, often enough to resume an interrupted run
            dirpath=ckpt_dir, every_n_train_steps=cfg.tracking.checkpoint_every_n_steps,
            save_top_k=0, save_last=True,
        ),
        RNGState(),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    callbacks.extend(extra_callbacks)
    val_every = min(cfg.trainer.val_check_interval, cfg.trainer.max_steps)
    return hydra.utils.instantiate(
        cfg.trainer, val_check_interval=val_every, logger=logger, callbacks=callbacks,
        default_root_dir=str(run_dir),
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

    The registry (run dirs under ``tracking.registry_dir``) is searched by config hash:
    a completed run is skipped (``tracking.skip_completed``), an interrupted one with a
    last checkpoint is resumed in its own run dir (``resume=auto``), and a hash being
    trained by another process right now is skipped. ``extra_callbacks`` are added to
    the Trainer's (the benchmark times steps with one).

    Raises:
        ConfigError, DataError: a bad config value or corpus, before any training.
    """
    model_config = validate(cfg)
    full_hash = config_hash(cfg)
    lock = HashLock(cfg.tracking.registry_dir, full_hash)
    if not lock.acquire():
        print(f"skip {full_hash[:8]}: another process is training this config right now")
        return {"status": "skipped", "hash": full_hash}
    try:
        runs = find_runs(cfg.tracking.registry_dir, full_hash)
        done = completed_run(runs)
        job_dir = Path(cfg.paths.output_dir)
        if done and cfg.tracking.skip_completed:
            print(f"skip {full_hash[:8]}: already completed in {done[0]} "
                  "(tracking.skip_completed=false trains it again)")
            write_pointer(job_dir, {**done[1], "run_dir": str(done[0])}, "skipped")
            return {**done[1], "status": "skipped"}
        run_dir, ckpt_path, prior = job_dir, None, {}
        if cfg.resume == "auto" and (interrupted := resumable_run(runs)):
            run_dir, prior = interrupted
            ckpt_path = run_dir / "checkpoints" / "last.ckpt"
            print(f"resume {full_hash[:8]}: continuing {run_dir} from {ckpt_path}")
        elif cfg.resume not in ("auto", "never"):
            ckpt_path = Path(cfg.resume)
        record = train(cfg, model_config, full_hash, run_dir, ckpt_path, prior, extra_callbacks)
        if run_dir != job_dir:
            write_pointer(job_dir, record, "resumed")
        return record
    finally:
        lock.release()


def train(
    cfg: DictConfig, model_config: GPTConfig, full_hash: str, run_dir: Path,
    ckpt_path: Path | None, prior: dict, extra_callbacks: Sequence[L.Callback] = (),
) -> dict:
    """Build data, model and Trainer from the validated ``cfg``, fit (from ``ckpt_path`` if
    given), and record the run in ``run_dir`` (``prior``: an interrupted run's record)."""
    dm = build_datamodule(cfg)
    if model_config.vocab_size is None:
        model_config = dataclasses.replace(model_config, vocab_size=dm.tokenizer.vocab_size)
    elif model_config.vocab_size < dm.tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_config.vocab_size} is invalid: must be null or >= the "
            f"tokenizer's vocab_size {dm.tokenizer.vocab_size}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["paths"]["output_dir"] = str(run_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = LMModule(
        model_config, optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler), tokenizer=dm.tokenizer,
        sample=OmegaConf.to_container(cfg.sample), run_config=resolved, seed=cfg.seed,
        val_tokens_per_byte=dm.meta["n_val"] / dm.meta["val_text_bytes"],
        hooks=build_hooks(cfg),
    )
    if cfg.init_from is not None and ckpt_path is None:  # a resume restores the tuned weights
        try:
            init_from_hf(module, cfg.init_from)
        except ValueError as err:
            raise ConfigError(f"init_from={cfg.init_from}: {err}") from None
    trainer = build_trainer(cfg, run_dir, extra_callbacks)
    fields = {k: v for k, v in prior.items() if k != "run_dir"}  # resumed: keep its history
    fields.update(hash=full_hash, hash8=full_hash[:8], code=code_version(),
                  n_params=module.model.num_params(), **hydra_job_info())
    record = RunRecord(run_dir, **fields)
    if ckpt_path is not None:
        record.data["resumed_from"] = [*prior.get("resumed_from", []), str(ckpt_path)]
    record.start()
    if ckpt_path is None:
        log_hparams(trainer, {"hash8": full_hash[:8], **flatten(hashable_config(cfg))})
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except BaseException as err:  # Ctrl-C included: the record must say the run did not finish
        record.finish("failed", error=f"{type(err).__name__}: {err}", steps=trainer.global_step)
        raise
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # final
    record.finish("completed", **final_metrics(trainer, cfg))
    return record.data


def final_metrics(trainer: L.Trainer, cfg: DictConfig) -> dict:
    """Steps, tokens seen and the final and best ``val/loss`` of a finished fit."""
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = trainer.checkpoint_callback.best_model_score  # restored on resume, unlike the module
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size * cfg.trainer.accumulate_grad_batches
    return {
        "steps": trainer.global_step,
        "tokens_seen": trainer.global_step * tokens_per_step,
        "metrics": {
            "final": {k: logged[k] for k in ("train/loss", "val/loss", "val/ppl", "val/bpb") if k in logged},
            "best": {"val/loss": None if best is None else float(best)},
        },
        "checkpoints": {"last": str(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"),
                        "best": trainer.checkpoint_callback.best_model_path},
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final ``val/loss`` (what sweepers minimise)."""
    try:
        record = run(cfg)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        remove_unstarted_run_dir(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)
    return record.get("metrics", {}).get("final", {}).get("val/loss")


def remove_unstarted_run_dir(run_dir: Path) -> None:
    """Remove the dir Hydra made for a run that a bad value stopped before it started
    (nothing in it but Hydra's own ``.hydra/`` and log), so the registry holds runs only."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    if problem := unknown_choice([a for a in sys.argv[1:] if not a.startswith("-")]):
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
