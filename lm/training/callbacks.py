"""Lightning callbacks and plugins that keep a run's record and checkpoints honest.

- ``LastCheckpoint``: ``checkpoints/last.ckpt`` every N steps and after every
  validation, so a resumed run repeats no validation and misses none.
- ``AtomicCheckpointIO``: checkpoints written to a temporary file and renamed, so a
  kill mid-write leaves the previous checkpoint, never half of one.
- ``RNGState``: the torch RNG states in checkpoints, so dropout resumes exactly.
- ``instantiate_callbacks``: the ``callbacks`` config group (``conf/callbacks/``), each
  callback built from its ``_target_``.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig

from lm.atomic import atomic_file
from lm.errors import ConfigError, first_line
from lm.training.module import Diverged, validates_after


class LastCheckpoint(Checkpoint):
    """``<dirpath>/last.ckpt``: the state to resume from.

    Written at every ``every_n_steps``-th step and at the end of every validation
    during a fit. At a step that validates, it is written after the validation (not
    at the end of the training batch, as ``ModelCheckpoint`` does), so the checkpoint
    holds that validation's metrics and best score and a resumed run neither skips nor
    repeats it. A ``Checkpoint`` subclass: Lightning runs it after the other callbacks
    and, among checkpoint callbacks, in list order (put it after ``best``).

    Args:
        dirpath: the run's ``checkpoints/`` dir.
        every_n_steps: steps between checkpoints (>= 1).
        on_save: called after each save with the trainer (the run record's heartbeat).
        finite_only: raise ``Diverged`` instead of saving non-finite weights (an update
            that overflowed while its loss and gradient were still finite).
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int,
                 on_save: Callable[[L.Trainer], None] | None = None, finite_only: bool = True):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} is invalid: must be >= 1")
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self.on_save = on_save
        self.finite_only = finite_only
        self._saved_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and not self._validates_now(trainer, batch_idx):
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.save(trainer)

    @staticmethod
    def _validates_now(trainer: L.Trainer, batch_idx: int) -> bool:
        # The module makes Lightning validate at the last step too (LMModule.on_train_batch_end).
        last = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        return last or validates_after(trainer, batch_idx)

    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now (once per step at most)."""
        if self._saved_step == trainer.global_step:
            return
        if self.finite_only and not all(bool(p.isfinite().all()) for p in trainer.lightning_module.parameters()):
            raise Diverged(f"non-finite weights after step {trainer.global_step}")
        for logger in trainer.loggers:  # events up to this step reach the disk first
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step
        if self.on_save is not None:
            self.on_save(trainer)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, then ``os.replace``: a
    reader (or a resumed run) sees the old checkpoint or the new one, never half."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        with atomic_file(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


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


def instantiate_callbacks(node: DictConfig | None, progress_bar: bool = True) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks`` (``conf/callbacks/``: name -> node with a
    ``_target_``), built by ``hydra.utils.instantiate`` in the order the config lists
    them (Lightning then runs checkpoint callbacks last, in that order).

    Args:
        node: ``cfg.callbacks``; None or empty: no callbacks.
        progress_bar: ``trainer.enable_progress_bar``; when false, progress-bar callbacks
            are left out (Lightning refuses one while the bar is turned off).

    Raises:
        ConfigError: one line, ``callbacks.<name>...`` and what is wrong (no ``_target_``,
            a target that is not a Lightning callback, an argument it rejects).
    """
    callbacks = []
    for name, spec in (node or {}).items():
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            raise ConfigError(f"callbacks.{name}={spec} is invalid: must be a node with a "
                              "_target_ naming a Lightning callback")
        try:
            callback = hydra.utils.instantiate(spec)
        except Exception as err:  # noqa: BLE001 - Hydra wraps the constructor's error
            raise ConfigError(f"callbacks.{name}: {first_line(err.__cause__ or err)}") from None
        if not isinstance(callback, L.Callback):
            raise ConfigError(f"callbacks.{name}._target_={spec._target_} is invalid: must be a "
                              "lightning Callback")
        if progress_bar or not isinstance(callback, ProgressBar):
            callbacks.append(callback)
    return callbacks
