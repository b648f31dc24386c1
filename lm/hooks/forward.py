"""Forward hooks: see or replace activations at hook points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from lm.hook_points import HookPoint
from lm.hooks.base import ForwardHook, Hook
from lm.model import GPT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lm.training.module import LMModule


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().pow(2).mean().sqrt()


class HeadAblation(ForwardHook):
    """Zeroes chosen heads' outputs at ``blocks.{layer}.attn.hook_z`` (B, T, H, Dh).

    Equivalent to zeroing the matching input columns of that layer's ``attn.c_proj``
    weight (head h owns columns h*Dh .. (h+1)*Dh - 1). Applies in training,
    validation and samples. Logs ``removed_rms/<point>``, the RMS of what was zeroed.

    Args:
        heads: ``[[layer, head], ...]``, each index from 0.
    """

    name = "head_ablation"

    def __init__(self, heads: Sequence[Sequence[int]]):
        pairs = [tuple(int(i) for i in pair) for pair in heads]
        if not pairs or any(len(p) != 2 or min(p) < 0 for p in pairs):
            raise ValueError(f"heads={list(heads)} is invalid: must be a non-empty list of "
                             "[layer, head] pairs of indices >= 0")
        self.heads: dict[int, list[int]] = {}
        for layer, head in pairs:
            self.heads.setdefault(layer, []).append(head)
        super().__init__([f"blocks.{layer}.attn.hook_z" for layer in sorted(self.heads)])

    def check(self, model: GPT) -> None:
        super().check(model)
        for layer, heads in self.heads.items():
            if max(heads) >= model.config.n_head:
                raise ValueError(f"heads: head {max(heads)} of layer {layer} is out of range "
                                 f"(model.n_head={model.config.n_head})")

    def forward(self, z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        heads = self.heads[hook.layer]
        if self.logging and hook.training:
            self.metrics[f"removed_rms/{hook.name}"] = _rms(z[:, :, heads])
        keep = torch.ones(z.size(2), 1, dtype=z.dtype, device=z.device)  # (H, 1)
        keep[heads] = 0
        return z * keep  # (B, T, H, Dh)


class ResidNoise(ForwardHook):
    """Adds Gaussian noise N(0, std^2) to the residual stream, in training only.

    Draws from the global RNG, as dropout does. Logs ``resid_rms/<point>`` (the RMS of
    the clean activation, to compare with ``std``).

    Args:
        std: >= 0. pattern: hook points (default every ``hook_resid_post``).
    """

    name = "resid_noise"

    def __init__(self, std: float = 0.1, pattern: str | Sequence[str] = "blocks.*.hook_resid_post"):
        super().__init__(pattern)
        if std < 0:
            raise ValueError(f"std={std} is invalid: must be >= 0")
        self.std = std

    def forward(self, x: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
        if not hook.training:
            return None
        if self.logging:
            self.metrics[f"resid_rms/{hook.name}"] = _rms(x)
        return x + self.std * torch.randn_like(x)  # (B, T, C)


class AttnTemperature(ForwardHook):
    """Divides the attention scores (B, H, T, T) by ``temperature`` before the softmax:
    > 1 flattens the pattern, < 1 sharpens it. Attaching to ``hook_scores`` runs those
    layers' explicit attention path. Logs ``max_prob/<point>``, the mean over rows of
    the largest attention weight.

    Args:
        temperature: > 0. pattern: default every layer's ``attn.hook_scores``.
    """

    name = "attn_temperature"

    def __init__(
        self, temperature: float = 2.0, pattern: str | Sequence[str] = "blocks.*.attn.hook_scores"
    ):
        super().__init__(pattern)
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} is invalid: must be > 0")
        self.temperature = temperature

    def forward(self, scores: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        scores = scores / self.temperature  # (B, H, T, T); masked -inf stays -inf
        if self.logging and hook.training:
            pattern = torch.softmax(scores.detach().float(), dim=-1)  # (B, H, T, T)
            self.metrics[f"max_prob/{hook.name}"] = pattern.amax(-1).mean()
        return scores


class AttentionImages(Hook):
    """Logs attention patterns as images at each validation (``hooks/<name>/pattern``):
    a grid, one row per layer and one column per head, for the first sequence of the
    first validation batch cut to ``max_tokens``, tokens on the axes. It runs its own
    forward (``GPT.run_with_cache``), so training stays on the fused attention path.

    Args:
        log_attention: false turns the images off.
        layers: layer indices. heads: head indices (None: all).
        max_tokens: sequence length shown, >= 1 (labels need about 40 or fewer).
    """

    name = "attention_images"

    def __init__(
        self, log_attention: bool = True, layers: Sequence[int] = (0,),
        heads: Sequence[int] | None = None, max_tokens: int = 32,
    ):
        super().__init__()
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} is invalid: must be >= 1")
        if not layers:
            raise ValueError("layers=[] is invalid: give at least one layer index")
        self.log_attention = log_attention
        self.layers = [int(layer) for layer in layers]
        self.heads = None if heads is None else [int(h) for h in heads]
        self.max_tokens = max_tokens

    @property
    def patterns(self) -> list[str]:
        return [f"blocks.{layer}.attn.hook_pattern" for layer in self.layers]

    def check(self, model: GPT) -> None:
        model.hook_names(self.patterns)
        if self.heads is not None and not all(0 <= h < model.config.n_head for h in self.heads):
            raise ValueError(f"heads={self.heads} is invalid: each must be in "
                             f"[0, {model.config.n_head}) (model.n_head)")

    def on_validation_end(self, module: LMModule, batch: Any) -> None:
        experiment = getattr(module.logger, "experiment", None)
        if not self.log_attention or batch is None or not hasattr(experiment, "add_figure"):
            return
        idx = batch[0][:1, : self.max_tokens]  # (1, T)
        with torch.no_grad():
            _, cache = module.model.run_with_cache(idx, self.patterns)
        tokenizer = module.tokenizer
        labels = None if tokenizer is None else [tokenizer.decode([i]) for i in idx[0].tolist()]
        figure = self.figure(cache, labels)
        experiment.add_figure(f"hooks/{self.name}/pattern", figure, module.global_step)

    def figure(self, cache: dict[str, torch.Tensor], labels: list[str] | None) -> Figure:
        """Grid of (T, T) patterns: rows = layers, columns = heads; query on y, key on x."""
        from matplotlib.figure import Figure  # Agg canvas, no pyplot state

        n_head = next(iter(cache.values())).size(1)
        heads = self.heads if self.heads is not None else list(range(n_head))
        fig = Figure(figsize=(3.2 * len(heads), 3.2 * len(cache)), layout="constrained")
        axes = fig.subplots(len(cache), len(heads), squeeze=False)
        for row, (name, pattern) in enumerate(cache.items()):  # pattern (1, H, T, T)
            for col, head in enumerate(heads):
                ax = axes[row][col]
                ax.imshow(pattern[0, head].float().cpu().numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
                ax.set_title(f"{name} head {head}", fontsize=7)
                self._label_axes(ax, labels)
        return fig

    @staticmethod
    def _label_axes(ax: Any, labels: list[str] | None) -> None:
        if labels is None or len(labels) > 40:
            ax.set_xticks([])
            ax.set_yticks([])
            return
        shown = [repr(t)[1:-1] if t.strip() else repr(t) for t in labels]  # '\n', ' ' visible
        ticks = list(range(len(shown)))
        ax.set_xticks(ticks, shown, fontsize=6, rotation=90)
        ax.set_yticks(ticks, shown, fontsize=6)
