"""The figures of ``lm analyze``: matplotlib ``Figure`` objects on an Agg canvas (no
pyplot, no display), each with named axes, token labels and a colour bar.
Attention patterns are drawn by the ``attention_images`` hook's figure
(``lm.hooks.forward.AttentionImages.figure``), one layer per figure.
"""

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LABELS = 64  # token labels on an axis beyond this overlap at a readable size
MAX_ANNOTATED = 64  # positions whose cells carry text (logit lens top tokens)
INCH_PER_TOKEN = 0.24  # a position's width: a label or a one-character cell at 6-7 pt
MAX_BARS = 30  # DLA components shown (largest |attribution| first)


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of width x height inches, laid out by constrained layout."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _position_ticks(ax: Axes, labels: Sequence[str], axis: str = "x") -> None:
    """Tick every position with its token label (about 8 position numbers when there are
    more than ``MAX_LABELS``)."""
    T = len(labels)
    if T <= MAX_LABELS:
        ticks, shown = list(range(T)), [f"{t}" for t in labels]
    else:
        ticks = list(range(0, T, -(-T // 8)))
        shown = [str(i) for i in ticks]
    if axis == "x":
        ax.set_xticks(ticks, shown, fontsize=7, rotation=90 if T <= MAX_LABELS else 0)
    else:
        ax.set_yticks(ticks, shown, fontsize=7)


def heatmap(ax: Axes, values: torch.Tensor, cmap: str = "viridis", vmin=None, vmax=None,
            centred: bool = False):
    """Draw values (rows, cols) on ``ax``; ``centred``: a diverging map symmetric about 0."""
    data = values.detach().float().cpu().numpy()
    if centred:
        finite = np.abs(data[np.isfinite(data)])
        limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        vmin, vmax, cmap = -limit, limit, "RdBu_r"
    return ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                     aspect="auto")


def lens_figure(probs: torch.Tensor, top: list[list[str]], rows: Sequence[str],
                labels: Sequence[str], title: str) -> Figure:
    """The logit lens: probability of each position's target token per layer.

    Args:
        probs: (L + 1, T) probability in [0, 1] of the token scored at each position.
        top: (L + 1) x T labels of each row's top token, written in the cells when
            T <= ``MAX_ANNOTATED``.
        rows: the L + 1 row names (``embed``, ``blocks.0``, ...); labels: T input tokens.
    """
    T = probs.size(1)
    fig = new_figure(max(6.0, INCH_PER_TOKEN * min(T, MAX_LABELS) + 2.5), 0.45 * len(rows) + 2.2)
    ax = fig.subplots()
    image = heatmap(ax, probs, vmin=0.0, vmax=1.0)
    if T <= MAX_ANNOTATED:
        for r in range(len(rows)):
            for t in range(T):
                color = "black" if probs[r, t] > 0.6 else "white"
                ax.text(t, r, top[r][t], ha="center", va="center", fontsize=5, color=color)
    _position_ticks(ax, labels)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("input token (position)", fontsize=9)
    ax.set_ylabel("residual stream after", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05).set_label("p(target token)", fontsize=9)
    ax.set_title(title, fontsize=10)
    return fig


def patching_figure(resid: torch.Tensor, heads: torch.Tensor, labels: Sequence[str],
                    title: str, scale: str) -> Figure:
    """Two heatmaps: resid_pre patched per (layer, position) and each head's output.

    Args:
        resid: (L, T); heads: (L, H), in the units ``scale`` names (the colour bars' label).
        labels: the T tokens of the corrupted prompt.
    """
    L, T = resid.shape
    fig = new_figure(max(6.0, INCH_PER_TOKEN * min(T, MAX_LABELS) + 0.4 * heads.size(1) + 4.0),
                     0.45 * L + 2.4)
    left, right = fig.subplots(1, 2, width_ratios=[max(T, 4), max(heads.size(1), 4)])
    for ax, values, name in ((left, resid, "hook_resid_pre\n(one layer, one position)"),
                             (right, heads, "attn.hook_z, one head\n(all positions)")):
        image = heatmap(ax, values, centred=True)
        ax.set_yticks(range(L), [f"blocks.{i}" for i in range(L)], fontsize=8)
        ax.set_title(f"patched: {name}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.08).set_label(scale, fontsize=8)
    _position_ticks(left, labels)
    left.set_xlabel("position (corrupted prompt token)", fontsize=9)
    right.set_xticks(range(heads.size(1)), [str(h) for h in range(heads.size(1))], fontsize=8)
    right.set_xlabel("head", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def dla_figure(labels: Sequence[str], values: torch.Tensor, title: str) -> Figure:
    """Horizontal bars of the ``MAX_BARS`` largest |attributions|, largest at the top."""
    order = values.abs().argsort(descending=True)[:MAX_BARS].tolist()[::-1]
    fig = new_figure(7.0, 0.25 * len(order) + 1.6)
    ax = fig.subplots()
    shown = values[order].tolist()
    ax.barh(range(len(order)), shown, color=["C3" if v < 0 else "C0" for v in shown])
    ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=7)
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_xlabel("direct logit attribution (logit units)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return fig


def head_scores_figure(scores: dict[str, torch.Tensor], title: str) -> Figure:
    """One (L, H) heatmap per kind of score in [0, 1], each cell annotated."""
    kinds = list(scores)
    L, H = next(iter(scores.values())).shape
    fig = new_figure(len(kinds) * (0.5 * H + 1.6) + 1.0, 0.45 * L + 1.8)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        image = heatmap(ax, scores[kind], vmin=0.0, vmax=1.0)
        for i in range(L):
            for h in range(H):
                value = float(scores[kind][i, h])
                ax.text(h, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if value > 0.6 else "white")
        ax.set_title(kind.replace("_", " ") + " score", fontsize=9)
        ax.set_xticks(range(H), [str(h) for h in range(H)], fontsize=8)
        ax.set_yticks(range(L), [f"blocks.{i}" for i in range(L)], fontsize=8)
        ax.set_xlabel("head", fontsize=9)
    fig.colorbar(image, ax=axes, fraction=0.04).set_label("share of attention", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig
