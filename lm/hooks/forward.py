"""Forward hooks: see or replace activations at hook points."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lm.hook_points import HookPoint
from lm.hooks.base import ForwardHook, Hook
from lm.model import GPT
from lm.tokenizers import token_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
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
    """Logs attention patterns as an image at each validation (``hooks/<name>/pattern``,
    TensorBoard's Images tab): a grid, one row per layer and one column per head, for
    the first sequence of the first validation batch cut to ``max_tokens``. In each
    panel row i is query position i and column j is key position j, coloured by the
    attention weight (0..1, one colour bar for all panels); tokens label the axes when
    there are 40 or fewer, positions otherwise. It runs its own forward
    (``GPT.run_with_cache``), so training stays on the fused attention path.

    Args:
        log_attention: false turns the images off.
        layers: layer indices. heads: head indices (None: all).
        max_tokens: sequence length shown, >= 1 (labels need about 40 or fewer).
    """

    name = "attention_images"
    max_labels = 40  # more token labels than this overlap at a readable font size

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
        if not self.log_attention or batch is None or not hasattr(experiment, "add_image"):
            return
        idx = batch[0][:1, : self.max_tokens]  # (1, T)
        with torch.no_grad():
            _, cache = module.model.run_with_cache(idx, self.patterns)
        tokenizer = module.tokenizer
        labels = None if tokenizer is None else token_labels(tokenizer, idx[0])
        figure = self.figure(cache, labels, title=f"attention weights at step {module.global_step}, "
                             "first validation sequence")
        experiment.add_image(f"hooks/{self.name}/pattern", self.image(figure),
                             module.global_step, dataformats="HWC")

    def figure(
        self, cache: Mapping[str, torch.Tensor], labels: Sequence[str] | None = None,
        title: str = "attention weights",
    ) -> Figure:
        """The grid of patterns: a row per hook point of ``cache``, a column per head.

        Args:
            cache: ``blocks.{i}.attn.hook_pattern`` -> (1, H, T, T) weights in [0, 1]
                (``run_with_cache``), rows summing to 1.
            labels: the T token labels (`token_labels`: axis ticks when T <= 40), or None:
                positions.
            title: the figure's title, above the grid.

        Returns:
            a matplotlib ``Figure`` on an Agg canvas (no pyplot, no display); draw it
            with ``image``. Axes: y = query position (row), x = key position (column).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n_head, T = next(iter(cache.values())).shape[1:3]
        heads = self.heads if self.heads is not None else list(range(n_head))
        labelled = labels is not None and len(labels) <= self.max_labels
        side = max(2.4, 0.1 * T) if labelled else 2.4  # inches per panel: ~10 px per token
        rows, cols = len(cache), len(heads)  # + room for ticks, names, titles, colour bar
        fig = Figure(figsize=(cols * (side + 0.2) + 2.0, rows * (side + 0.4) + 1.2), dpi=100,
                     layout="constrained")
        FigureCanvasAgg(fig)  # Agg whatever pyplot's backend is
        axes = fig.subplots(rows, cols, squeeze=False)
        for row, (name, pattern) in enumerate(cache.items()):  # pattern (1, H, T, T)
            for col, head in enumerate(heads):
                ax = axes[row][col]
                image = ax.imshow(pattern[0, head].float().cpu().numpy(), vmin=0.0, vmax=1.0,
                                  cmap="viridis", interpolation="nearest", aspect="auto")
                ax.set_title(f"{name.removesuffix('.hook_pattern')} head {head}", fontsize=9)
                self._label_axes(ax, T, labels if labelled else None,
                                 left=col == 0, bottom=row == rows - 1)
        bar = fig.colorbar(image, ax=axes, fraction=0.15 / cols, pad=0.01)
        bar.set_label("attention weight", fontsize=9)
        bar.set_ticks([0.0, 0.25, 0.5, 0.75, 1.0])
        bar.ax.tick_params(labelsize=7)
        fig.suptitle(title, fontsize=10)
        return fig

    @staticmethod
    def _label_axes(
        ax: Axes, T: int, labels: Sequence[str] | None, left: bool, bottom: bool
    ) -> None:
        """Ticks on every panel: each token, or about 8 positions; their text and the
        axis names on the left column and the bottom row only."""
        if labels is None:
            ticks = list(range(0, T, -(-T // 8)))  # positions 0, step, ...: at most 8
            shown = [str(i) for i in ticks]
        else:
            ticks = list(range(T))
            shown = list(labels)
        ax.set_xticks(ticks, shown, fontsize=7, rotation=90 if labels is not None else 0)
        ax.set_yticks(ticks, shown, fontsize=7)
        ax.tick_params(labelleft=left, labelbottom=bottom)
        if left:
            ax.set_ylabel("query position (row)", fontsize=9)
        if bottom:
            ax.set_xlabel("key position (column)", fontsize=9)

    @staticmethod
    def image(figure: Figure) -> np.ndarray:
        """``figure`` drawn by Agg: (H, W, 3) uint8 RGB, H x W = its size in inches x dpi.

        Lays the figure out once before drawing: a single ``canvas.draw()`` of a fresh
        constrained-layout figure (what ``SummaryWriter.add_figure`` does) can place the
        panels with stale text sizes; with square panels in one row that put the titles
        above the image's top edge.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        figure.draw_without_rendering()
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()  # (H, W, 3)
