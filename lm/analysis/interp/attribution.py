"""Direct logit attribution (DLA): how much each head, MLP and embedding writes the logit
of a target token directly, through the final norm and the unembedding.

The residual stream entering ``ln_f`` at one position is a sum of components: the token
embedding, the position embedding (learned or sinusoidal; RoPE adds none), every head's
output (its slice of ``z`` through its columns of ``attn.c_proj``), each attention
layer's ``c_proj`` bias and each MLP's output. ``ln_f`` is not linear, so as in
TransformerLens the norm's scale is frozen at its value for the whole residual (the
cached scale) and applied to each component:

- LayerNorm: ``(c - mean(c)) / sqrt(var(resid) + eps) * weight``; its bias is one more
  component (``ln_f bias``), written by no layer;
- RMSNorm: ``c / sqrt(mean(resid^2) + eps) * weight`` (no centring, no bias).

Each normalised component is unembedded (``lm_head``, which has no bias) and read at the
target token, or at the target minus a contrast token. The attributions then sum exactly
to the model's logit (difference) before the soft-cap: with ``logit_softcap`` set, the
attributed quantity is the raw logit, the cap's input. A post-norm model normalises
inside every block, so the stream is no sum of layer outputs: DLA refuses it.

Source: Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits";
TransformerLens ``ActivationCache.decompose_resid``, ``stack_head_results``,
``apply_ln_to_stack`` and ``logit_attrs``, which the tests compare against.
"""

from dataclasses import dataclass

import torch
from torch import nn

from lm.model import GPT, RMSNorm


@dataclass
class Attribution:
    """Direct logit attribution at one position.

    Attributes:
        labels: component names, in data order: ``embed``, ``pos_embed``,
            ``blocks.{i}.attn.head{h}``, ``blocks.{i}.attn.bias``, ``blocks.{i}.mlp``,
            ``ln_f.bias`` (each only where the model has it).
        values: (n_components,) float32, in logit units (nats of the pre-softmax score).
        logit: the attributed quantity itself (the logit, or the logit difference): the
            sum of ``values``, equal to the model's pre-cap output.
    """

    labels: list[str]
    values: torch.Tensor
    logit: float


def head_outputs(c_proj: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's write to the residual stream and the projection's bias.

    ``c_proj`` is any module linear in its input plus a bias (``nn.Linear``, a LoRA or NF4
    layer), so a head's output is ``c_proj`` of its slice of ``z`` with the other heads
    zeroed, minus ``c_proj(0)``.

    Args:
        c_proj: the attention output projection, (..., C) -> (..., C).
        z: (T, H, Dh), ``hook_z`` of one sequence.

    Returns:
        (H, T, C) per-head outputs and the (C,) bias (zeros without one).
    """
    T, H, Dh = z.shape
    masked = torch.zeros(H, T, H, Dh, dtype=z.dtype, device=z.device)  # (H, T, H, Dh)
    heads = torch.arange(H)
    masked[heads, :, heads] = z.transpose(0, 1)  # row h keeps head h only
    bias = c_proj(torch.zeros(1, H * Dh, dtype=z.dtype, device=z.device))[0]  # (C,)
    return c_proj(masked.reshape(H, T, H * Dh)) - bias, bias  # (H, T, C), (C,)


def residual_components(model: GPT, ids: torch.Tensor, pos: int) -> tuple[list[str], torch.Tensor]:
    """The components of the residual stream entering ``ln_f`` at position ``pos``.

    Args:
        ids: (T,) int64; pos: an index into it (negative counts from the end).

    Returns:
        labels and (n_components, C) float32 vectors whose sum is the final residual
        (``ln_f.bias`` not included; see ``normalise``).
    """
    with torch.no_grad():
        names = [n for n in ("hook_embed", "hook_pos_embed") if n in model.hook_dict]  # rope: none
        names += ["*hook_z"] + (["*hook_mlp_out"] if model.config.mlp else [])
        _, cache = model.run_with_cache(ids[None], names)
        labels, parts = ["embed"], [cache["hook_embed"][0, pos]]
        if "hook_pos_embed" in cache:
            labels.append("pos_embed")
            parts.append(cache["hook_pos_embed"][0, pos])
        for block in model.transformer.h:
            prefix = f"blocks.{block.layer}"
            per_head, bias = head_outputs(block.attn.c_proj, cache[f"{prefix}.attn.hook_z"][0])
            labels += [f"{prefix}.attn.head{h}" for h in range(per_head.size(0))]
            parts += list(per_head[:, pos])
            if getattr(block.attn.c_proj, "bias", None) is not None:
                labels.append(f"{prefix}.attn.bias")
                parts.append(bias)
            if f"{prefix}.hook_mlp_out" in cache:
                labels.append(f"{prefix}.mlp")
                parts.append(cache[f"{prefix}.hook_mlp_out"][0, pos])
    return labels, torch.stack(parts).float()  # (n, C)


def normalise(norm: nn.Module, resid: torch.Tensor, parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply ``norm`` with the scale of the whole residual to each component.

    Args:
        norm: ``ln_f``, an ``nn.LayerNorm`` or ``RMSNorm``.
        resid: (C,) the residual the scale is taken from; parts: (n, C) its components.

    Returns:
        (n, C) normalised components and the norm's bias (C,) or None.
    """
    with torch.no_grad():
        if isinstance(norm, RMSNorm):
            scale = torch.sqrt(resid.pow(2).mean() + norm.eps)
            return parts / scale * (1 if norm.weight is None else norm.weight), None
        assert isinstance(norm, nn.LayerNorm), type(norm)
        scale = torch.sqrt(resid.var(unbiased=False) + norm.eps)
        centred = parts - parts.mean(dim=-1, keepdim=True)  # (n, C)
        weight = 1 if norm.weight is None else norm.weight
        return centred / scale * weight, norm.bias


def direct_logit_attribution(model: GPT, ids: torch.Tensor, target: int,
                             contrast: int | None = None, pos: int = -1) -> Attribution:
    """Each component's direct contribution to logit[target] (minus logit[contrast]).

    Args:
        model: a pre-norm ``GPT`` in eval mode.
        ids: (T,) int64 token ids, T <= block_size.
        target, contrast: token ids; pos: the position read (default: the last).

    Raises:
        ValueError: the model is post-norm (no ``ln_f`` to attribute through).
    """
    if "ln_f" not in model.transformer:
        raise ValueError("kind=dla needs a pre-norm model (model.norm_position=pre): a "
                         "post-norm model normalises inside every block, so its output is "
                         "no sum of layer outputs")
    labels, parts = residual_components(model, ids, pos)  # (n, C)
    normed, bias = normalise(model.transformer.ln_f, parts.sum(0), parts)  # (n, C)
    if bias is not None:
        labels, normed = labels + ["ln_f.bias"], torch.cat([normed, bias[None]])
    with torch.no_grad():
        logits = model.lm_head(normed)  # (n, V)
    values = logits[:, target] - (0 if contrast is None else logits[:, contrast])  # (n,)
    return Attribution(labels, values.float(), float(values.sum()))
