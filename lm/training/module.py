"""The LightningModule: a GPT, its optimizer and schedule, its steps and what they log.

Logged (TensorBoard, ``group/name``; TensorBoard orders groups by name, so the metrics
come before the bookkeeping): ``train/loss``, ``train/lr``, ``train/grad_norm`` (global
L2 norm before clipping), ``val/loss``, ``val/ppl``, ``val/bpb``; then
``wallclock/elapsed_s`` (seconds since training began, at each validation, so curves can
be drawn against wall time), each experiment hook's scalars under ``hooks/<name>/``
(``lm/hooks/``). Checkpoints carry the resolved run config, the model config and the
tokenizer, so ``lm generate`` needs nothing else. The side jobs of a run (the HParams
session, text samples, the target loss, tokens/s and MFU, ``torch.compile``) are
callbacks: ``lm/training/run_callbacks.py``, listed in ``conf/callbacks/default.yaml``.
"""

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lm.adapters.build import adapter_state
from lm.hook_points import remove_hooks
from lm.hooks import AuxLossHook, Hook, UpdateHook
from lm.metrics import bits_per_byte, perplexity
from lm.model import GPT, GPTConfig
from lm.tokenizers import Tokenizer
from lm.training.finetune import check_resumed_adapter


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: weight decay on 2-D weights (matmuls, embeddings) only.

    Biases and LayerNorm gains are 1-D and never decayed (nanoGPT ``configure_optimizers``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


class Diverged(RuntimeError):
    """Training met a non-finite loss, gradient norm, validation loss or weight; the
    message is one line naming which, its value and the step."""


def check_finite_step(loss: torch.Tensor | None, grad_norm: torch.Tensor, step: int) -> None:
    """Raise ``Diverged`` unless the step's loss and gradient norm are finite (one sync)."""
    loss = torch.zeros(()) if loss is None else loss
    if bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
        return
    what, value = ("train/loss", loss) if not torch.isfinite(loss) else ("train/grad_norm", grad_norm)
    raise Diverged(f"{what}={float(value)} at step {step}")


def validates_after(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether Lightning validates after training batch ``batch_idx`` on its own: when
    its count of batches (not of optimizer steps, which differ under
    ``accumulate_grad_batches``) is a multiple of ``val_check_batch``
    (``check_val_every_n_epoch=None``, as ``conf/trainer`` sets)."""
    return (batch_idx + 1) % trainer.val_check_batch == 0


@contextmanager
def eager(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` uncompiled inside the block, whether or not ``model.compile()`` was
    called: ``nn.Module.compile`` only sets ``_compiled_call_impl``, which ``__call__``
    uses when it is not None."""
    compiled = model.__dict__.pop("_compiled_call_impl", None)  # the class's None remains
    try:
        yield model
    finally:
        if compiled is not None:
            model._compiled_call_impl = compiled


def logs_at(trainer: L.Trainer | None, steps_done: int) -> bool:
    """Whether the step that makes ``steps_done`` optimizer steps writes its scalars: when
    ``steps_done`` is a multiple of ``log_every_n_steps``, as Lightning decides (a metric
    computed at another step would be wasted work). Without a Trainer (a module driven by
    hand) nothing is written: never."""
    return trainer is not None and steps_done % trainer.log_every_n_steps == 0


class LMModule(L.LightningModule):
    """Trains ``GPT(model_config)`` on (x, y) token batches of shape (B, T).

    Args:
        model_config: the network (``vocab_size`` already set from the tokenizer).
        optimizer: ``optimizer(param_groups) -> torch.optim.Optimizer`` (a Hydra partial).
        scheduler: ``scheduler(optimizer) -> LRScheduler`` stepped every optimizer step.
        tokenizer: saved in checkpoints (text samples are decoded with it).
        run_config: the resolved run config (plain data), saved in checkpoints.
        hooks: experiment hooks (``lm.hooks.build_hooks(cfg)``), applied in this order.
            Forward and backward hooks are attached from setup to teardown of a fit (or
            validate), removed on an exception too; update hooks run in
            ``on_before_optimizer_step``, before Lightning's clipping; auxiliary losses
            are added to the training loss (``train/loss`` stays the cross-entropy).
        val_tokens_per_byte: validation tokens per UTF-8 byte of the validation text;
            with it ``val/bpb`` (bits per byte) is logged, comparable across tokenizers.
        divergence_guard: raise ``Diverged`` at the first non-finite training loss or
            gradient norm (before that update, ``configure_gradient_clipping``) or
            validation loss (before any checkpoint of that validation is written).

    Under data parallelism (``trainer.strategy=ddp``) every rank runs this module on its
    own batches: ``train/loss`` is the mean over ranks of their losses at a logging step,
    ``val/loss`` the mean over all ranks' validation batches (the same batches, and so
    the same number, as one process), and only rank 0 writes events. Hook scalars are
    rank 0's. The dropout masks are the same on every rank (one seed).

    The side jobs' callbacks (``lm/training/run_callbacks.py``) read ``latest_metrics``
    (this validation's, from ``on_validation_end``), ``validated_at_s`` and ``elapsed_s()``.
    """

    def __init__(
        self,
        model_config: GPTConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        tokenizer: Tokenizer | None = None,
        run_config: dict | None = None,
        hooks: Sequence[Hook] = (),
        val_tokens_per_byte: float | None = None,
        divergence_guard: bool = False,
    ):
        super().__init__()
        self.model = GPT(model_config)
        self.model_config = model_config
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.tokenizer = tokenizer
        self.run_config = run_config or {}
        self.hooks = list(hooks)
        for hook in self.hooks:
            hook.check(self.model)
        self._aux_hooks = [h for h in self.hooks if isinstance(h, AuxLossHook)]
        self._update_hooks = [h for h in self.hooks if isinstance(h, UpdateHook)]
        self._hook_handles: list = []
        self.val_tokens_per_byte = val_tokens_per_byte
        self.divergence_guard = divergence_guard
        self._val_losses: list[torch.Tensor] = []
        self._first_val_batch = None
        self._step_loss: torch.Tensor | None = None
        self.logging_step = False  # whether this step's scalars are written (start_step)
        # The latest logged train/loss and validation metrics; saved in checkpoints, so a
        # run resumed at its last step still reports them (run.json's final metrics).
        self.latest_metrics: dict[str, float] = {}
        self._latest_train_loss: torch.Tensor | None = None
        # Training seconds before this fit (from a checkpoint on resume), the perf_counter()
        # at which it began, and elapsed_s() at the latest validation (its wallclock point).
        self._elapsed_before = 0.0
        self._fit_started: float | None = None
        self.validated_at_s: float | None = None
        # Data-parallel processes and whether they shard parameters (FSDP): read in setup.
        self._world_size = 1
        self._sharded = False
        # An adapter run's {"config", "init_from", "weights_sha256"} (``use_adapter``);
        # None: every weight is the model's own and checkpoints hold them all.
        self.adapter: dict | None = None
        # val/loss before training (init_from: the pretrained model's; finetune.measure_initial).
        self.initial_metrics: dict[str, float] = {}

    def use_adapter(self, adapter: dict) -> None:
        """Declare the adapters ``apply_adapter`` gave ``self.model``: checkpoints then hold
        the adapter weights only, with ``adapter`` (``{"config", "init_from",
        "weights_sha256"}``: what rebuilds the base), and a resume loads them over the
        base rebuilt from ``init_from`` (Lightning's strict loading off; the adapter keys
        are checked in ``on_load_checkpoint``)."""
        self.adapter = adapter
        self.strict_loading = False

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """(B, T) token ids -> (logits (B, T, V), loss or None)."""
        return self.model(idx, targets)

    def setup(self, stage: str) -> None:
        self._world_size = self.trainer.world_size
        self._sharded = isinstance(self.trainer.strategy, FSDPStrategy)

    # --- training -------------------------------------------------------------
    def on_train_start(self) -> None:
        # Start the logger's writer first (TensorBoard's import takes seconds in a fresh
        # process): wallclock/elapsed_s counts training and validation, not logger set-up.
        _ = getattr(self.logger, "experiment", None)
        self._fit_started = time.perf_counter()

    def elapsed_s(self) -> float:
        """Seconds since training began (validation included), summed over resumed fits."""
        if self._fit_started is None:
            return self._elapsed_before
        return self._elapsed_before + time.perf_counter() - self._fit_started

    def start_step(self) -> None:
        """Decide whether the step about to run writes its scalars, for this module and
        its hooks (``hook.logging``). Called at each training batch's start; idempotent,
        so a callback that runs the step's graph first (the compile trial) calls it too."""
        self.logging_step = logs_at(self._trainer, self.global_step + 1)
        for hook in self.hooks:
            hook.logging = self.logging_step

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.start_step()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch  # (B, T), (B, T)
        _, loss = self.model(x, y)
        if self.logging_step:  # self.log costs ~1 ms: not every step
            self._latest_train_loss = self._mean_over_ranks(loss.detach())
            self.log("train/loss", self._latest_train_loss, on_step=True, on_epoch=False,
                     prog_bar=True, logger=False)  # the progress bar; the logger gets it in _write_step
        if self._aux_hooks:
            loss = loss + sum(hook.loss() for hook in self._aux_hooks)
        self._step_loss = loss.detach()
        return loss

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping; with the divergence guard, also stop before the update if
        the loss or the gradient norm is not finite (``Diverged``).

        Norm clipping already computes the total norm: it is done here as Lightning does
        it (``clip_grad_norm_`` over the optimizer's parameters in group order, so the
        same numbers), and its norm is checked, at the cost of one sync per step.
        """
        if not self.divergence_guard or self._sharded:
            # FSDP: a rank's grads are a shard; Lightning's clipping takes their global
            # norm, and the guard checks the loss only.
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            if self.divergence_guard:
                check_finite_step(self._step_loss, torch.zeros(()), self.global_step + 1)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if str(self.trainer.precision).startswith("16"):  # the grad scaler skips inf steps
            norm = torch.zeros(())
        check_finite_step(self._step_loss, norm, self.global_step + 1)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        scalars = {}
        if self.logging_step:  # the raw gradient, before update hooks and clipping
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            scalars["train/grad_norm"] = torch.nn.utils.get_total_norm(grads)
            scalars["train/lr"] = optimizer.param_groups[0]["lr"]
            scalars["train/loss"] = self._latest_train_loss
        if self.hooks:
            scalars.update(self._run_update_hooks(self.logging_step))
        if scalars:
            self._write_step(scalars)

    def _write_step(self, scalars: dict) -> None:
        """Write this step's scalars now, at the step Lightning would use (the count of
        updates before this one); Lightning would write them after ``last.ckpt`` of this
        step is saved, and a run resumed from it would lack these points."""
        if self.logger is not None:
            values = {k: float(v) for k, v in scalars.items() if v is not None}
            self.logger.log_metrics(values, step=self.global_step)

    def _run_update_hooks(self, logging: bool) -> dict:
        """Apply the update hooks; return every hook's scalars (``hooks/<name>/<key>``)
        if this is a logging step."""
        for hook in self._update_hooks:
            hook.update(self.model, self.global_step)
        scalars = {}
        for hook in self.hooks:
            if logging:
                scalars.update({f"hooks/{hook.name}/{k}": v for k, v in hook.metrics.items()})
            hook.metrics.clear()
            hook.logging = False
        return scalars

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Validate at the last step too, when max_steps is not a multiple of the interval.
        trainer = self.trainer
        last_step = trainer.max_steps > 0 and self.global_step >= trainer.max_steps
        if last_step and not validates_after(trainer, batch_idx):
            trainer.should_stop = True

    def _mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of scalar ``value`` over all ranks (a collective: every rank calls it
        at the same point); ``value`` itself in one process."""
        if self._world_size == 1:
            return value
        return self.trainer.strategy.reduce(value, reduce_op="mean")

    # --- validation -----------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch  # (B, T), (B, T)
        _, loss = self.model(x, y)
        self._val_losses.append(loss.detach())
        if batch_idx == 0 and self.hooks:
            self._first_val_batch = batch
        return loss

    def on_validation_epoch_end(self) -> None:
        losses = torch.stack(self._val_losses)  # (n,): this rank's validation batches
        self._val_losses.clear()
        if self._world_size == 1:
            loss = losses.mean()
        else:  # every rank's batches, each counted once (ranks may hold one batch more)
            strategy = self.trainer.strategy
            count = torch.tensor(float(len(losses)), device=losses.device)
            loss = strategy.reduce(losses.sum(), reduce_op="sum") / strategy.reduce(count, reduce_op="sum")
        # Lightning would write these at step global_step - 1 (its count of finished
        # batches lags here); a curve point belongs at the number of updates behind it.
        metrics = {"val/loss": loss.item(), "val/ppl": perplexity(loss.item())}
        if self.val_tokens_per_byte is not None:
            metrics["val/bpb"] = bits_per_byte(loss.item(), self.val_tokens_per_byte)
        for key, value in metrics.items():  # for checkpoints, the progress bar and run.json
            self.log(key, value, prog_bar=key == "val/loss", logger=False, sync_dist=True)  # equal on all ranks already
        self._write_validation(metrics)
        self.latest_metrics.update(metrics)  # the callbacks' (text samples, target loss) too
        if not math.isfinite(metrics["val/loss"]):
            if self.divergence_guard:  # before any checkpoint callback sees this validation
                raise Diverged(f"val/loss={metrics['val/loss']} at step {self.global_step}")
            return
        if self.hooks:
            with eager(self.model):  # one-off forwards (attention images): not worth compiling
                for hook in self.hooks:
                    hook.on_validation_end(self, self._first_val_batch)
            self._first_val_batch = None

    def _write_validation(self, metrics: dict[str, float]) -> None:
        """Write the validation metrics to the logger at this step, then
        ``wallclock/elapsed_s`` (kept in ``validated_at_s``)."""
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_step)
        self.validated_at_s = self.elapsed_s()
        if self.logger is not None and self._fit_started is not None:  # not a stand-alone validate()
            self.logger.log_metrics({"wallclock/elapsed_s": self.validated_at_s}, step=self.global_step)

    # --- hooks ------------------------------------------------------------------
    def configure_callbacks(self) -> list[L.Callback]:
        return [HookLifecycle()] if self.hooks else []

    def attach_hooks(self) -> None:
        """Register every hook on the model, in order (idempotent)."""
        self.detach_hooks()
        self._hook_handles = [h for hook in self.hooks for h in hook.attach(self.model)]

    def detach_hooks(self) -> None:
        """Remove every hook this module registered."""
        remove_hooks(self._hook_handles)
        self._hook_handles = []

    # --- optimizer and checkpoints ----------------------------------------------
    def configure_optimizers(self):
        # An optimizer class may group the model itself (MuonWithAdamW: hidden matrices
        # apart); any other gets param_groups, decay on 2-D weights only.
        target = getattr(self.optimizer_factory, "func", self.optimizer_factory)
        if hasattr(target, "param_groups_for"):
            groups = target.param_groups_for(self.model)
        else:
            weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
            groups = param_groups(self.model, weight_decay)
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def final_metrics(self) -> dict[str, float]:
        """The latest ``train/loss`` (of a logging step) and validation metrics."""
        if self._latest_train_loss is not None:
            self.latest_metrics["train/loss"] = self._latest_train_loss.item()
            self._latest_train_loss = None
        return dict(self.latest_metrics)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["latest_metrics"] = self.final_metrics()
        checkpoint["elapsed_s"] = self.elapsed_s()
        checkpoint["model_config"] = asdict(self.model_config)
        checkpoint["run_config"] = self.run_config
        checkpoint["initial_metrics"] = self.initial_metrics
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.to_dict()
        if self.adapter is not None:  # the base is rebuilt from init_from: not saved again
            checkpoint["state_dict"] = adapter_state(checkpoint["state_dict"])
            checkpoint["adapter"] = self.adapter

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.adapter is not None:
            check_resumed_adapter(self.adapter, set(adapter_state(self.state_dict())), checkpoint)
        self.initial_metrics = dict(checkpoint.get("initial_metrics", {}))
        self.latest_metrics = dict(checkpoint.get("latest_metrics", {}))
        self._elapsed_before = checkpoint.get("elapsed_s", 0.0)


class HookLifecycle(L.Callback):
    """Attaches an ``LMModule``'s hooks at setup and removes them at teardown or on an
    exception (Lightning calls no LightningModule method on an exception, only
    ``Callback.on_exception``); PyTorch hooks are global state and must not outlive a fit."""

    def setup(self, trainer: L.Trainer, pl_module: LMModule, stage: str) -> None:
        pl_module.attach_hooks()

    def teardown(self, trainer: L.Trainer, pl_module: LMModule, stage: str) -> None:
        pl_module.detach_hooks()

    def on_exception(self, trainer: L.Trainer, pl_module: LMModule, exception: BaseException) -> None:
        pl_module.detach_hooks()
