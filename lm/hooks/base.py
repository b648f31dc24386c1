"""The four kinds of experiment hook and what they share.

A hook is a small object built from ``conf/hooks/<name>.yaml`` (``_target_``) by
``lm.hooks.build_hooks``. ``LMModule`` runs the hooks of a run in the order given:

- ``ForwardHook``: ``forward(x, hook)`` sees the activation ``x`` at every hook point
  matching its glob patterns and returns None (observe) or a tensor of the same
  shape (replace). Attached for the whole fit, validation and samples included.
- ``BackwardHook``: a forward hook whose ``forward`` passes ``x`` through a
  ``torch.autograd.Function``: identity (or a same-shape edit) forward, custom gradient.
- ``UpdateHook``: ``update(model, step)`` edits ``p.grad`` in place after backward and
  before the optimizer step (before Lightning's own gradient clipping).
- ``AuxLossHook``: records activations at its hook points during the training forward
  and returns ``weight * value(activations)``, added to the training loss.

Metrics: on steps whose scalars are written, ``LMModule`` sets ``hook.logging``; a hook
then puts detached scalars into ``hook.metrics`` (``{"loss": t}``), logged as
``hooks/<name>/<key>``. Off those steps a hook computes nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.utils.hooks import RemovableHandle

from lm.hook_points import HookPoint, add_hooks
from lm.model import GPT

if TYPE_CHECKING:
    from lm.training.module import LMModule


class Hook:
    """Base of every hook.

    Attributes:
        name: the key under ``hooks`` in the config (set by ``build_hooks``); metrics are
            logged as ``hooks/<name>/<key>``.
        logging: True during a training step whose scalars are written.
        metrics: scalars (detached tensors or floats) to log at the end of this step.
    """

    name: str = "hook"

    def __init__(self) -> None:
        self.logging = False
        self.metrics: dict[str, torch.Tensor | float] = {}

    def check(self, model: GPT) -> None:
        """Raise ``ValueError`` (one line) if this hook cannot apply to ``model``."""

    def attach(self, model: GPT) -> list[RemovableHandle]:
        """Register on ``model`` for the fit; return the handles that detach it."""
        return []

    def on_validation_end(self, module: LMModule, batch: Any) -> None:
        """After each validation, with the module and its first validation batch."""


class ForwardHook(Hook):
    """Sees or replaces the activation at every hook point matching ``pattern``.

    Args:
        pattern: a hook point name or glob (``blocks.*.hook_resid_post``), or a list.
    """

    def __init__(self, pattern: str | Sequence[str]):
        super().__init__()
        self.patterns = [pattern] if isinstance(pattern, str) else [str(p) for p in pattern]
        if not self.patterns:
            raise ValueError("pattern=[] is invalid: give at least one hook point name or glob")

    def check(self, model: GPT) -> None:
        model.hook_names(self.patterns)

    def attach(self, model: GPT) -> list[RemovableHandle]:
        return add_hooks(model.hook_dict, [(self.patterns, self.forward)])

    def forward(self, x: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
        """``x`` at ``hook`` (``hook.name``, ``hook.training``) -> None or a replacement."""
        raise NotImplementedError


class BackwardHook(ForwardHook):
    """Passes the activation through ``function`` (a ``torch.autograd.Function``).

    Subclasses set ``function`` and return its extra arguments from ``function_args``.
    On logging steps the RMS of the gradient arriving at each point (before the
    custom backward) is logged as ``grad_rms/<point>``.
    """

    function: ClassVar[type[torch.autograd.Function]]

    def function_args(self) -> tuple:
        """Arguments after ``x`` of ``function.apply``."""
        return ()

    def forward(self, x: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        y = self.function.apply(x, *self.function_args())
        if self.logging and hook.training and y.requires_grad:
            y.register_hook(partial(self._record_grad, hook.name))
        return y

    def _record_grad(self, name: str, grad: torch.Tensor) -> None:
        self.metrics[f"grad_rms/{name}"] = grad.detach().float().pow(2).mean().sqrt()


class UpdateHook(Hook):
    """Transforms gradients after backward and before the optimizer step."""

    def update(self, model: GPT, step: int) -> None:
        """Edit ``p.grad`` of ``model``'s parameters in place; ``step`` = updates done so far."""
        raise NotImplementedError


class AuxLossHook(ForwardHook):
    """``weight * value(activations)``, added to the training loss and logged as ``loss``.

    Records the activations at its hook points during training forwards (not in
    validation or sampling); ``loss()`` consumes them.

    Args:
        weight: >= 0.
        pattern: the hook points whose activations ``value`` reads.
    """

    def __init__(self, weight: float, pattern: str | Sequence[str]):
        super().__init__(pattern)
        if weight < 0:
            raise ValueError(f"weight={weight} is invalid: must be >= 0")
        self.weight = weight
        self._acts: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, hook: HookPoint) -> None:
        if hook.training and torch.is_grad_enabled():
            self._acts[hook.name] = x

    def value(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """A scalar from the recorded activations (name -> tensor, in data order)."""
        raise NotImplementedError

    def loss(self) -> torch.Tensor:
        """The weighted loss of the last training forward (scalar, with its graph)."""
        acts, self._acts = self._acts, {}
        assert acts, f"hook {self.name!r}: no activations recorded (attached? training mode?)"
        loss = self.weight * self.value(acts)
        if self.logging:
            self.metrics["loss"] = loss.detach()
        return loss
