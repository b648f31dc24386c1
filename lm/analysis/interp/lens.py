"""The logit lens: what each layer's residual stream would predict if the model ended there.

The residual stream entering block 0 (the embeddings) and leaving each block
(``blocks.{i}.hook_resid_post``) is read through the model's own head, ``GPT.unembed``:
``ln_f`` with its statistics recomputed from that residual, the unembedding and, if the
model has one, the logit soft-cap. The last row is the model's output. A post-norm model
has no ``ln_f``: its blocks' outputs are normalised already and are unembedded as they
are (the embedding row is then read unnormalised).

Source: nostalgebraist (2020), "interpreting GPT: the logit lens"; TransformerLens
``ActivationCache.accumulated_resid(apply_ln=True)`` (its ``recompute_ln`` path), which
the tests compare against.
"""

from dataclasses import dataclass

import torch

from lm.model import GPT


@dataclass
class LensRows:
    """Logit-lens readings of one sequence.

    Attributes:
        labels: one name per row: ``embed``, then ``blocks.0`` ... ``blocks.{L-1}``.
        logits: (L + 1, T, V) float32: row r, position t read through the model's head.
    """

    labels: list[str]
    logits: torch.Tensor

    def log_probs(self) -> torch.Tensor:
        """(L + 1, T, V) log-softmax over the vocabulary."""
        return torch.log_softmax(self.logits, dim=-1)

    def rank(self, targets: torch.Tensor) -> torch.Tensor:
        """(L + 1, T) int64: the 0-based rank of ``targets[t]`` (T,) at each row and
        position (0 = the top token)."""
        target_logit = self.logits.gather(-1, targets.expand(self.logits.size(0), -1)[..., None])
        return (self.logits > target_logit).sum(-1)  # (L + 1, T)


def residual_stack(model: GPT, ids: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """(row labels, the residual stream (L + 1, T, C)) of one sequence ``ids`` (T,): the
    input of block 0, then the output of every block."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post"
                                           for i in range(model.config.n_layer)]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], names)
    labels = ["embed"] + [f"blocks.{i}" for i in range(model.config.n_layer)]
    return labels, torch.stack([cache[name][0] for name in names])  # (L + 1, T, C)


def logit_lens(model: GPT, ids: torch.Tensor) -> LensRows:
    """The logit lens of ``ids`` (T,) int64, T <= block_size; the model in eval mode.

    Returns:
        ``LensRows`` with logits (L + 1, T, V): the residual after each layer through
        ``ln_f`` (recomputed per row) and ``GPT.unembed``.
    """
    labels, resid = residual_stack(model, ids)  # (L + 1, T, C)
    with torch.no_grad():
        return LensRows(labels, model.unembed(model.final_norm(resid)).float())
