"""Update hooks: gradient transforms between backward and the optimizer step."""

from __future__ import annotations

import math

import torch
from torch import nn

from lm.hooks.base import UpdateHook
from lm.model import GPT


def clip_groups(model: GPT) -> dict[str, list[nn.Parameter]]:
    """Parameters grouped for per-layer clipping, named as ``model.named_layers()`` names them.

    One group per part of the model holding parameters: ``wte``, ``wpe`` (learned
    positions), one per block ``blocks.{i}``, ``ln_f``, and ``lm_head`` when it is not
    tied to ``wte`` (a tied weight is counted once, in ``wte``). Together the groups
    list ``model.parameters()`` once each, in that order.
    """
    groups: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, part in model.named_layers(recurse=False).items():
        params = [p for p in part.parameters() if id(p) not in seen]
        seen.update(map(id, params))
        if params:
            groups[name] = params
    assert [id(p) for ps in groups.values() for p in ps] == [id(p) for p in model.parameters()]
    return groups


class GradClipCustom(UpdateHook):
    """Per-layer gradient-norm clipping: each group of ``clip_groups`` is scaled to
    L2 norm at most ``max_norm``, independently of the others.

    Per group: ``coef = min(1, max_norm / (norm + 1e-6))``, ``g <- coef * g``, as
    ``torch.nn.utils.clip_grad_norm_`` does for the whole model. Lightning's global
    clipping (``trainer.gradient_clip_val``) still runs afterwards unless set to 0.

    Logs ``norm/<group>`` (the pre-clip norms) and ``clipped_fraction`` (the fraction
    of groups whose norm exceeded ``max_norm`` this step).

    Args:
        max_norm: > 0.
    """

    name = "grad_clip_custom"

    def __init__(self, max_norm: float = 1.0):
        super().__init__()
        if max_norm <= 0:
            raise ValueError(f"max_norm={max_norm} is invalid: must be > 0")
        self.max_norm = max_norm
        self._groups: tuple[GPT, dict[str, list[nn.Parameter]]] | None = None

    def groups(self, model: GPT) -> dict[str, list[nn.Parameter]]:
        """``clip_groups(model)``, computed once per model."""
        if self._groups is None or self._groups[0] is not model:
            self._groups = (model, clip_groups(model))
        return self._groups[1]

    def update(self, model: GPT, step: int) -> None:
        names, grads = [], []
        for name, params in self.groups(model).items():
            group = [p.grad for p in params if p.grad is not None]
            if group:
                names.append(name)
                grads.append(group)
        if not grads:
            return
        norms = torch.stack([
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in group]))
            for group in grads
        ])  # (G,)
        coefs = (self.max_norm / (norms + 1e-6)).clamp(max=1.0)  # (G,)
        for group, coef in zip(grads, coefs):
            torch._foreach_mul_(group, coef)
        if self.logging:
            self.metrics.update({f"norm/{n}": v for n, v in zip(names, norms.detach())})
            self.metrics["clipped_fraction"] = (norms > self.max_norm).float().mean()


class GradNoise(UpdateHook):
    """Adds Gaussian noise of variance ``eta / (1 + t)^gamma`` to every gradient, t the
    global step (Neelakantan et al. 2015, "Adding Gradient Noise Improves Learning for
    Very Deep Networks": eta in {0.01, 0.3, 1.0}, gamma = 0.55).

    The noise has its own generator, reseeded from ``(seed, t)`` at every step, so it
    never moves the training RNG and a resumed run draws what an uninterrupted one would.
    Logs ``std``.

    Args:
        eta: > 0. gamma: >= 0. seed: >= 0.
    """

    name = "grad_noise"

    def __init__(self, eta: float = 0.01, gamma: float = 0.55, seed: int = 0):
        super().__init__()
        if eta <= 0:
            raise ValueError(f"eta={eta} is invalid: must be > 0")
        if gamma < 0:
            raise ValueError(f"gamma={gamma} is invalid: must be >= 0")
        if seed < 0:
            raise ValueError(f"seed={seed} is invalid: must be >= 0")
        self.eta, self.gamma, self.seed = eta, gamma, seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def std(self, step: int) -> float:
        """sqrt(eta / (1 + step)^gamma)."""
        return math.sqrt(self.eta / (1 + step) ** self.gamma)

    def generator(self, device: torch.device, step: int) -> torch.Generator:
        """The generator for ``device``, seeded for ``step``."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device].manual_seed((self.seed * 1_000_003 + step) % 2**63)

    def update(self, model: GPT, step: int) -> None:
        std = self.std(step)
        generators: dict[torch.device, torch.Generator] = {}
        for p in model.parameters():
            if p.grad is None:
                continue
            if p.grad.device not in generators:
                generators[p.grad.device] = self.generator(p.grad.device, step)
            noise = torch.randn(
                p.grad.shape, generator=generators[p.grad.device], device=p.grad.device
            )
            p.grad.add_(noise.to(p.grad.dtype), alpha=std)
        if self.logging:
            self.metrics["std"] = std


class SignUpdate(UpdateHook):
    """Replaces each gradient by its sign: signSGD (Bernstein et al. 2018, "signSGD:
    Compressed Optimisation for Non-Convex Problems"); with ``optimizer=sgd`` and
    momentum it is their Signum. Logs ``mean_abs_grad``, the gradient scale the sign drops.
    """

    name = "sign_update"

    def update(self, model: GPT, step: int) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if self.logging and grads:
            total = torch.stack([g.abs().sum() for g in grads]).sum()
            self.metrics["mean_abs_grad"] = total / sum(g.numel() for g in grads)
        for g in grads:
            g.sign_()
