"""The side jobs of a training run, one Lightning callback each, so the LightningModule
(``lm/training/module.py``) holds the steps only.

- ``TargetLoss``: the first validation at or below ``tracking.target_loss``, printed and
  kept in checkpoints and ``run.json``.
- ``TextSamples``: a text sample in TensorBoard at each validation (``sample.*``).
- ``Throughput``: ``wallclock/tokens_per_sec`` and ``wallclock/mfu`` at each logging step.
- ``CompileModel``: ``torch.compile`` (``trainer.compile``) at the first training batch,
  eager where it cannot run.
- ``HParamsSession``: the run's row in TensorBoard's HParams tab.

Each but the last is a node of ``conf/callbacks/default.yaml`` whose arguments are the
run's existing keys (``${sample.prompt}``, ``${tracking.target_loss}``, ...);
``~callbacks.<name>`` drops one. None changes a number of the run, so their nodes are
not in the config hash (``HASH_EXCLUDED_KEYS``); ``trainer.compile``, which
``CompileModel`` only reads, is. ``HParamsSession`` takes the whole resolved config and
the run's name: ``lm/training/run.py`` adds it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from lm.errors import ConfigError, first_line
from lm.sampling import generate, prompt_ids
from lm.training.hparams import write_session
from lm.training.mfu import device_peak_tflops, flops_per_token, matmul_params, mfu
from lm.training.module import eager

if TYPE_CHECKING:
    from lm.training.module import LMModule


def validation_loss(pl_module: LMModule) -> float:
    """The val/loss of the validation that just ended (the module keeps it before any
    callback's ``on_validation_end``); NaN before any."""
    return pl_module.latest_metrics.get("val/loss", math.nan)


class TargetLoss(L.Callback):
    """Time to a target loss: at the first validation with val/loss <= ``target``, one
    line (step, seconds since training began) and ``reached`` = ``{"val/loss", "step",
    "elapsed_s"}`` (``elapsed_s``: the validation's ``wallclock/elapsed_s``); at the end of
    a fit that did not reach it, one line saying so. ``reached`` is saved in checkpoints
    (key ``target_reached``), so a resumed run keeps it, and ``run.json`` records it
    (``target``). Runs before the checkpoint callbacks (Lightning puts those last).

    Args:
        target: the val/loss to reach (``tracking.target_loss``); None: no target, the
            callback does nothing.
    """

    def __init__(self, target: float | None):
        self.target = target
        self.reached: dict[str, float] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: LMModule) -> None:
        loss = validation_loss(pl_module)
        if self.target is None or self.reached is not None or not loss <= self.target:
            return
        self.reached = {"val/loss": loss, "step": pl_module.global_step,
                        "elapsed_s": round(pl_module.validated_at_s, 3)}
        pl_module.print(f"target reached: val/loss {loss:.4f} <= {self.target} at step "
                        f"{pl_module.global_step}, {self.reached['elapsed_s']:.1f} s into training")

    def on_train_end(self, trainer: L.Trainer, pl_module: LMModule) -> None:
        if self.target is not None and self.reached is None:
            pl_module.print(f"target not reached: val/loss {validation_loss(pl_module):.4f} "
                            f"> {self.target} at step {pl_module.global_step}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: LMModule, checkpoint: dict) -> None:
        checkpoint["target_reached"] = self.reached  # the top-level key LMModule wrote before

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: LMModule, checkpoint: dict) -> None:
        self.reached = checkpoint.get("target_reached")

    def record(self) -> dict | None:
        """``run.json``'s ``target``: ``{"val/loss": target, "reached": reached}``; None
        without a target."""
        return None if self.target is None else {"val/loss": self.target, "reached": self.reached}


class TextSamples(L.Callback):
    """A text sample of the model at the end of each validation, written by rank 0 to
    TensorBoard's text tab (tag ``samples``, in a Markdown code block, which keeps its
    line breaks). It is drawn eagerly (a compiled model would recompile as the KV cache
    grows) with a generator of its own, so the training RNG never moves. Skipped
    where val/loss is not finite (NaN logits cannot be sampled from), without a
    tokenizer, or with a logger that holds no text.

    Args:
        prompt: the prompt text (``sample.prompt``), encoded with the module's tokenizer.
        max_new_tokens: tokens to sample; 0 turns samples off.
        temperature: softmax temperature (0: greedy).
        top_k: sample among the k most likely tokens; None: all.
        seed: seeds the sample's generator (``seed``): the same text for the same weights.
    """

    def __init__(self, prompt: str, max_new_tokens: int, temperature: float,
                 top_k: int | None, seed: int):
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed

    def on_validation_end(self, trainer: L.Trainer, pl_module: LMModule) -> None:
        if (not self.max_new_tokens or pl_module.tokenizer is None or not trainer.is_global_zero
                or not math.isfinite(validation_loss(pl_module))):
            return
        experiment = getattr(pl_module.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("samples", "```\n" + self.sample(pl_module) + "\n```",
                                pl_module.global_step)

    def sample(self, pl_module: LMModule) -> str:
        """The prompt and ``max_new_tokens`` sampled after it, decoded."""
        device = pl_module.device
        idx = torch.tensor([prompt_ids(self.prompt, pl_module.tokenizer)], dtype=torch.long,
                           device=device)  # (1, T)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        with eager(pl_module.model) as model:
            out = generate(model, idx, self.max_new_tokens, temperature=self.temperature,
                           top_k=self.top_k, generator=generator)  # (1, T + max_new_tokens)
        return pl_module.tokenizer.decode(out[0].tolist())


class Throughput(L.Callback):
    """``wallclock/tokens_per_sec`` (every rank's tokens) and ``wallclock/mfu`` (model
    FLOPs utilisation, ``lm/training/mfu.py``) at each logging step, over the training
    batches since the previous one, each timed from its start to its end (the optimizer
    step in, validation and checkpoint writes out; the compile trial out too, as long as
    ``CompileModel`` comes before this callback in the list). Written at the step the
    module writes ``train/*`` at, just before them; nothing at the first logging step
    (no batch timed yet).

    Args:
        peak_tflops: one device's peak TFLOP/s (``trainer.peak_tflops``); None: the bf16
            peak of a known GPU, else no ``wallclock/mfu``.
    """

    def __init__(self, peak_tflops: float | None = None):
        self.peak_tflops = peak_tflops
        self._tokens, self._seconds, self._started = 0, 0.0, 0.0
        self._flops_per_token: float | None = None
        self._device_peak: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: LMModule) -> None:
        self._flops_per_token = flops_per_token(pl_module.model_config, matmul_params(pl_module.model))
        self._device_peak = device_peak_tflops(pl_module.device, self.peak_tflops)
        self._tokens, self._seconds = 0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: LMModule, batch: Any,
                             batch_idx: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: LMModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._tokens += batch[0].numel() * trainer.world_size  # every rank's (B, T) batch
        self._seconds += time.perf_counter() - self._started

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: LMModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if not pl_module.logging_step or self._seconds <= 0:  # the module's decision for this step
            return
        scalars = {"wallclock/tokens_per_sec": self._tokens / self._seconds}
        if self._device_peak is not None and self._flops_per_token is not None:
            scalars["wallclock/mfu"] = mfu(scalars["wallclock/tokens_per_sec"], self._flops_per_token,
                                           self._device_peak, trainer.world_size)
        self._tokens, self._seconds = 0, 0.0
        if trainer.logger is not None:  # now, as LMModule writes train/* (see its _write_step)
            trainer.logger.log_metrics(scalars, step=trainer.global_step)


class CompileModel(L.Callback):
    """``torch.compile`` the module's GPT in place (``nn.Module.compile``: the state_dict
    keys stay the eager model's, no ``_orig_mod.``, so checkpoints load either way) at the
    first training batch of a fit, and try it at once on a forward and backward of that
    batch (compilation is lazy). If that raises (no C++ compiler, an unsupported
    platform), one ``warning:`` line on stderr and the model stays eager. The compile
    time counts in ``wallclock/elapsed_s``, not in ``wallclock/tokens_per_sec`` (list this
    callback before ``Throughput``). Text samples and the hooks' validation-end forwards
    run eagerly (``lm.training.module.eager``).

    Args:
        enabled: compile (``${trainer.compile}``, the hashed switch; ``check_compile``
            keeps the two equal); false: the callback does nothing.

    Attributes:
        compiled: whether the trial ran compiled (False until it did, and after a failure).
        graphs: graphs Dynamo compiled in the trial (0: nothing was compiled).
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.compiled = False
        self.graphs = 0
        self._pending = False

    def on_train_start(self, trainer: L.Trainer, pl_module: LMModule) -> None:
        self._pending = self.enabled

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: LMModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending:
            self._pending = False
            pl_module.start_step()  # this step's hook flags: the trial's graph is the step's
            self.compiled, self.graphs = compile_trial(trainer, pl_module, batch)


class HParamsSession(L.Callback):
    """The run's HParams session (``hparams.write_session``): its resolved config as
    ``hyperparameters`` under the Trial ID ``trial_name``, written once, at the first
    validation of a fit, before that validation's metrics (a callback's
    ``on_validation_epoch_end`` runs before the module's, which writes them). The tab's
    metric columns are points of the run's own curves, not extra ones.

    Args:
        hyperparameters: flat ``{name: bool | int | float | str}`` (``hparams.hparam_values``).
        trial_name: the run's name in the tab (``lr:1e-3 1efc3874``).
    """

    def __init__(self, hyperparameters: dict[str, Any], trial_name: str):
        self.hyperparameters = hyperparameters
        self.trial_name = trial_name
        self._written = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._written and pl_module.logger is not None:
            write_session(pl_module.logger, self.hyperparameters, self.trial_name)
            self._written = True


def compile_trial(trainer: L.Trainer, pl_module: LMModule,
                  batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[bool, int]:
    """``pl_module.model.compile()``, tried on a forward and backward of ``batch`` (x, y:
    (B, T) each) under the training step's precision context: the shapes, grad mode and
    autocast of the steps, whose graphs are then reused, not compiled again. On any
    error: one warning line and the model back to eager. The trial changes no numbers:
    the RNG states are restored, the gradients are returned, not added to ``.grad``, and
    what the hooks recorded is cleared. Returns (compiled, graphs Dynamo compiled).

    Dynamo keeps compiled graphs per code object, shared by every GPT in the process, and
    by default does not guard on module hooks: a graph traced without a hook would run
    where one is attached (and the reverse). So the caches start empty (a sweep's jobs
    in one process would otherwise share them and reach Dynamo's recompile limit) and
    hooks are guarded on (a hook attached or removed recompiles)."""
    torch._dynamo.reset()
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    model = pl_module.model
    x, y = batch  # (B, T), (B, T)
    params = [p for p in model.parameters() if p.requires_grad]
    cuda = [pl_module.device] if pl_module.device.type == "cuda" else []
    compiled = True
    try:
        with torch.random.fork_rng(devices=cuda), trainer.precision_plugin.train_step_context():
            model.compile()
            _, loss = model(x, y)
            torch.autograd.grad(loss, params, allow_unused=True)
    except Exception as err:  # noqa: BLE001 - whatever stops compilation, eager runs
        model._compiled_call_impl = None  # what nn.Module.compile set: eager again
        compiled = False
        print(f"warning: trainer.compile=true: torch.compile cannot run here "
              f"({first_line(err)}); training eagerly", file=sys.stderr)
    for hook in pl_module.hooks:
        hook.metrics.clear()
    return compiled, counters["unique_graphs"] - before


def check_compile(callbacks: Sequence[L.Callback], compile: bool) -> None:
    """``trainer.compile`` (in the config hash) decides whether a run compiles; the
    ``CompileModel`` callbacks (``callbacks.compile``, not in it) only carry it out.

    Raises:
        ConfigError: ``trainer.compile=true`` without a ``CompileModel`` callback, or one
            whose ``enabled`` differs from ``trainer.compile`` (one line).
    """
    compilers = [c for c in callbacks if isinstance(c, CompileModel)]
    if compile and not compilers:
        raise ConfigError("trainer.compile=true is invalid without callbacks.compile "
                          "(lm.training.run_callbacks.CompileModel), which compiles the model")
    if any(c.enabled != compile for c in compilers):
        raise ConfigError(f"callbacks.compile.enabled is invalid: must be ${{trainer.compile}} "
                          f"({compile}); set trainer.compile, the switch in the config hash")
