"""Activation patching: which activations carry the difference between two prompts.

The model runs on a corrupted prompt while one activation is replaced by its value on the
clean prompt (same length). The score of a run is the logit difference
``logit[target] - logit[contrast]`` at the last position, so a patch that restores the
clean behaviour moves the score from the corrupted run's value to the clean one's.

Two sweeps:
- ``resid_pre``: the residual stream entering each block, one (layer, position) at a time
  (``blocks.{i}.hook_resid_pre``, TransformerLens's ``get_act_patch_resid_pre``);
- ``heads``: each head's output at every position at once (its slice of
  ``blocks.{i}.attn.hook_z``, TransformerLens's ``get_act_patch_attn_head_out_all_pos``).

All patches of one layer run as one batch (one row per patch), each through the model's
own hook points.

Source: Meng et al. (2022), "Locating and Editing Factual Associations in GPT" (causal
tracing); Wang et al. (2022), "Interpretability in the Wild" (logit difference);
TransformerLens ``patching.py``, which the tests compare against.
"""

from dataclasses import dataclass

import torch

from lm.hook_points import HookPoint
from lm.model import GPT


@dataclass
class Patching:
    """Scores of every patch, in logit-difference units (nats).

    Attributes:
        resid_pre: (L, T): the score with ``blocks.{i}.hook_resid_pre`` at position t clean.
        heads: (L, H): the score with head h of block i clean at every position.
        clean, corrupt: the scores of the unpatched clean and corrupted runs.
    """

    resid_pre: torch.Tensor
    heads: torch.Tensor
    clean: float
    corrupt: float

    def recovered(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` as the fraction of the clean - corrupt difference they restore
        (0: as corrupted, 1: as clean); NaN where clean == corrupt."""
        gap = self.clean - self.corrupt
        return (scores - self.corrupt) / gap if gap else torch.full_like(scores, float("nan"))


def logit_difference(logits: torch.Tensor, target: int, contrast: int) -> torch.Tensor:
    """(B,) ``logits[:, -1, target] - logits[:, -1, contrast]`` of logits (B, T, V)."""
    return logits[:, -1, target] - logits[:, -1, contrast]


def _patched_scores(model: GPT, corrupt: torch.Tensor, name: str, n_rows: int, patch,
                    target: int, contrast: int) -> torch.Tensor:
    """(n_rows,) scores of the corrupted prompt (T,) run n_rows times, hook point ``name``
    edited by ``patch(activation) -> activation`` (row r carries patch r)."""

    def edit(x: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return patch(x.clone())

    with torch.no_grad(), model.hooks([(name, edit)]):
        logits, _ = model(corrupt.expand(n_rows, -1))  # (n_rows, T, V)
    return logit_difference(logits, target, contrast).float()


def activation_patching(model: GPT, clean: torch.Tensor, corrupt: torch.Tensor,
                        target: int, contrast: int) -> Patching:
    """Both sweeps for a clean and a corrupted prompt.

    Args:
        model: a ``GPT`` in eval mode.
        clean, corrupt: (T,) int64 each, the same length T <= block_size.
        target, contrast: token ids; the score is logit[target] - logit[contrast] at the
            last position.

    Raises:
        ValueError: the prompts differ in length.
    """
    if clean.shape != corrupt.shape:
        raise ValueError(f"prompt and prompt_corrupt must be the same number of tokens for "
                         f"patching; they are {clean.numel()} and {corrupt.numel()}")
    T, L = clean.numel(), model.config.n_layer
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean[None], ["*hook_resid_pre", "*hook_z"])
        corrupt_logits, _ = model(corrupt[None])
    resid = torch.stack([
        _patched_scores(model, corrupt, f"blocks.{i}.hook_resid_pre", T,
                        _position_patch(cache[f"blocks.{i}.hook_resid_pre"][0]), target, contrast)
        for i in range(L)])  # (L, T)
    heads = torch.stack([
        _patched_scores(model, corrupt, f"blocks.{i}.attn.hook_z", model.config.n_head,
                        _head_patch(cache[f"blocks.{i}.attn.hook_z"][0]), target, contrast)
        for i in range(L)])  # (L, H)
    return Patching(resid, heads, float(logit_difference(clean_logits, target, contrast)),
                    float(logit_difference(corrupt_logits, target, contrast)))


def _position_patch(clean: torch.Tensor):
    """The edit of a batch x (T, T, C) of corrupted runs that gives row t the clean
    residual (T, C) at position t."""
    rows = torch.arange(clean.size(0))

    def patch(x: torch.Tensor) -> torch.Tensor:
        x[rows, rows] = clean
        return x

    return patch


def _head_patch(clean_z: torch.Tensor):
    """The edit of a batch x (H, T, H, Dh) of corrupted runs that gives row h the clean
    output of head h, clean_z (T, H, Dh), at every position."""
    heads = torch.arange(clean_z.size(1))

    def patch(x: torch.Tensor) -> torch.Tensor:
        x[heads, :, heads] = clean_z.transpose(0, 1)  # (H, T, Dh)
        return x

    return patch
