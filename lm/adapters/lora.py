"""LoRA: a frozen Linear layer plus a trainable low-rank update (Hu et al. 2021).

A target layer ``y = W x + b`` with W (out, in) frozen becomes

    y = W x + b + (alpha / r) * B A dropout(x),    A (r, in), B (out, r),

with A Kaiming-uniform and B zero, so the adapted model starts equal to the base
model and only A and B (``r * (in + out)`` numbers per layer) train. After training
the update folds into the weight, ``W' = W + (alpha / r) B A``, and the model is a
plain GPT again (``merge_lora``).

Layers are named as users see them (``GPT.named_layers()``: ``blocks.0.attn.c_attn``,
``lm_head``); a wrapped layer keeps its name, so hook points, per-layer metrics and
target globs do not change. The base may be an ``nn.Linear`` or a frozen 4-bit layer
(``NF4Linear``, QLoRA) with ``in_features``, ``out_features``, ``dequantize()`` and a
forward.

Sources:
    Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", section 4.1.
    peft's ``lora.Linear`` (``peft/tuners/lora/layer.py``): init, scaling, dropout on
    the adapter's input only; tests/test_lora.py checks logits and gradients against it.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

ADAPTER_TENSORS = ("lora_A", "lora_B")


def check_lora_settings(r: int, alpha: float, dropout: float) -> None:
    """Raise ``ValueError`` (one line: key, value, rule) for a bad rank, alpha or dropout."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"adapter.r={r} is invalid: must be an integer >= 1 (the LoRA rank)")
    if not alpha > 0:
        raise ValueError(f"adapter.alpha={alpha} is invalid: must be > 0 (scale alpha / r)")
    if not 0 <= dropout < 1:
        raise ValueError(f"adapter.dropout={dropout} is invalid: must be in [0, 1)")


class LoRALinear(nn.Module):
    """A frozen Linear-like ``base`` plus the low-rank update (alpha / r) * B A.

    ``forward(x)``: x (..., in) -> base(x) + dropout(x) A^T B^T * alpha / r, (..., out).
    The dropout acts on the adapter's input only, and only in training mode.

    Args:
        base: an ``nn.Linear``, or any module with ``in_features``, ``out_features`` and
            a forward (a 4-bit ``NF4Linear``: ``dequantize()`` gives its (out, in) float32
            weight, ``bias`` its bias or None). Its parameters are frozen.
        r: rank of the update, integer >= 1.
        alpha: the update is scaled by ``scaling = alpha / r`` (> 0), so changing r
            keeps the size of the initial updates about the same (Hu et al., 4.1).
        dropout: probability in [0, 1) of zeroing an adapter input.

    Attributes:
        lora_A: (r, in) Parameter, Kaiming-uniform with a = sqrt(5) (the ``nn.Linear``
            default, as peft): U(-1/sqrt(in), 1/sqrt(in)); the base's device, and its
            dtype for a float base, else float32.
        lora_B: (out, r) Parameter, zeros: the adapted layer starts equal to ``base``.
        merged: True while the update is folded into ``base.weight`` (``merge()``); the
            forward then skips the adapter path, so A and B get no gradient.

    Raises:
        ValueError: a bad ``r``, ``alpha`` or ``dropout`` (one line, ``adapter.<key>``).

    Source: Hu et al. 2021, section 4.1; peft's ``lora.Linear``.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        check_lora_settings(r, alpha, dropout)
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        place = {"device": _device_of(base), "dtype": _float_dtype_of(base)}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **place))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **place))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        if self.merged:  # the update is already in base.weight
            return y
        h = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.T  # (..., r)
        return y + (h @ self.lora_B.T * self.scaling).to(y.dtype)  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        """The update as a weight, (alpha / r) * B A: (out, in), dtype of A and B."""
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, in)

    def base_weight(self) -> torch.Tensor:
        """The base's (out, in) weight, detached; dequantised (float32) for a 4-bit base.
        Includes the update while ``merged``."""
        if hasattr(self.base, "dequantize"):
            return self.base.dequantize()  # (out, in)
        return self.base.weight.detach()  # (out, in)

    def merge(self) -> None:
        """Fold the update into ``base.weight`` in place (W += (alpha / r) B A); a no-op
        when already merged. A base weight tied to another layer changes there too
        (``apply_lora`` refuses such targets).

        Raises:
            TypeError: the base has no float ``weight`` Parameter (a 4-bit base).
        """
        weight = self._float_base_weight()
        if self.merged:
            return
        with torch.no_grad():
            weight += self.delta_weight().to(weight.dtype)  # (out, in)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the update from ``base.weight`` again (exact up to float rounding);
        a no-op when not merged."""
        if not self.merged:
            return
        weight = self._float_base_weight()
        with torch.no_grad():
            weight -= self.delta_weight().to(weight.dtype)  # (out, in)
        self.merged = False

    def merged_linear(self) -> nn.Linear:
        """A new float ``nn.Linear`` equal to this layer without dropout: weight = base
        weight (dequantised for a 4-bit base) + (alpha / r) B A, bias = the base's bias.
        Its parameters require grad, as any new Linear's; this layer is left as it is."""
        weight = self.base_weight()  # (out, in)
        if not self.merged:
            weight = weight + self.delta_weight().to(weight.dtype)  # (out, in)
        return float_linear(weight, getattr(self.base, "bias", None))

    def _float_base_weight(self) -> nn.Parameter:
        """``base.weight``, or ``TypeError`` (one line) for a base without one."""
        weight = getattr(self.base, "weight", None)
        if not isinstance(weight, nn.Parameter):
            raise TypeError(
                f"LoRALinear.merge(): the base {type(self.base).__name__} has no float weight "
                "Parameter to merge into (merging into a 4-bit weight would re-quantise it); "
                "use merged_linear() for a float nn.Linear")
        return weight

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling}, merged={self.merged}"


def _device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (cpu if it has none)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _float_dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype of a float ``weight``; float32 for a quantised (or weightless) module."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.dtype
    return torch.float32


def _is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear``, a ``LoRALinear``, or a Linear-like leaf such as ``NF4Linear``
    (``in_features`` and ``out_features``, no submodules), found by duck typing so this
    file does not depend on ``nf4.py``."""
    if isinstance(module, (nn.Linear, LoRALinear)):
        return True
    has_shape = hasattr(module, "in_features") and hasattr(module, "out_features")
    return has_shape and next(module.children(), None) is None


def _user_names(model: nn.Module) -> dict[str, nn.Module]:
    """``model.named_layers()`` for an lm ``GPT``; module paths for any other model."""
    if hasattr(model, "named_layers"):
        return model.named_layers()
    return dict(model.named_modules())


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's Linear layers (``nn.Linear``, ``NF4Linear``, ``LoRALinear``) by the
    names users see (``blocks.0.attn.c_attn``, ..., ``lm_head``), in model order.

    A ``LoRALinear`` is listed under its own name; its ``.base`` is not listed.
    """
    layers: dict[str, nn.Module] = {}
    wrapped: list[str] = []  # names of LoRALinear layers, whose insides are skipped
    for name, module in _user_names(model).items():
        if any(name.startswith(prefix + ".") for prefix in wrapped):
            continue
        if isinstance(module, LoRALinear):
            wrapped.append(name)
        if _is_linear(module):
            layers[name] = module
    return layers


def match_layers(model: nn.Module, patterns: Sequence[str],
                 key: str = "adapter.targets") -> list[str]:
    """Names of the model's Linear layers (``linear_layers``) that match any of the
    fnmatch globs ``patterns`` (``blocks.*.attn.c_attn``), in model order.

    Raises:
        ValueError: ``patterns`` is empty, or one of them matches no Linear layer; one
            line naming ``key``, the pattern and a few of the model's Linear layers.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError(f"{key}=[] is invalid: must list at least one fnmatch glob over "
                         "the model's Linear layers (e.g. blocks.*.attn.c_attn)")
    names = list(linear_layers(model))
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ValueError(
                f"{key}: {pattern!r} matches no Linear layer of the model; its Linear layers "
                f"are {shown or '(none)'} (fnmatch globs, e.g. blocks.*.attn.c_attn)")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def replace_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the layer a user calls ``name`` (``blocks.0.attn.c_attn``,
    from ``named_layers()``), in place.

    The module is found by identity among ``model.named_modules()`` to get its real path
    (``transformer.h.0.attn.c_attn``); ``new`` is set on its parent under the same name.

    Raises:
        ValueError: the model has no layer ``name``.
    """
    old = _user_names(model).get(name)
    if old is None:
        raise ValueError(f"replace_layer: the model has no layer named {name!r}")
    path = next(p for p, m in model.named_modules() if m is old)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new)


def _is_tied(model: nn.Module, layer: nn.Module) -> bool:
    """Whether the layer's ``weight`` is also another module's parameter (weight tying)."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, nn.Parameter):
        return False
    owners = [p for _, p in model.named_parameters(remove_duplicate=False) if p is weight]
    return len(owners) > 1


def apply_lora(model: nn.Module, targets: Sequence[str], r: int, alpha: float,
               dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of ``model`` and wrap each Linear layer matching the globs
    ``targets`` (an ``NF4Linear`` too) in a ``LoRALinear``, in place; afterwards only
    the adapters' ``lora_A`` and ``lora_B`` require grad. Returns the wrapped names.

    Raises:
        ValueError: bad ``r``, ``alpha`` or ``dropout``; a glob that matches nothing; a
            target that already has an adapter, or whose weight is tied to another
            layer's (``lm_head`` with ``model.tie_weights=true``: its update could not
            be merged without changing the embedding). One line each.

    Source: Hu et al. 2021, section 4.2 (which weights to adapt).
    """
    check_lora_settings(r, alpha, dropout)
    names = match_layers(model, targets)
    layers = linear_layers(model)
    adapted = [name for name in names if isinstance(layers[name], LoRALinear)]
    if adapted:
        raise ValueError(f"adapter.targets: {', '.join(adapted)} already have a LoRA adapter")
    for name in names:
        if _is_tied(model, layers[name]):
            raise ValueError(
                f"adapter.targets: {name} shares its weight with another layer (tied "
                "embeddings), so its update could not be merged; leave it out of the "
                "targets or untie it (model.tie_weights=false)")
    model.requires_grad_(False)
    for name in names:
        replace_layer(model, name, LoRALinear(layers[name], r, alpha, dropout))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's ``LoRALinear`` layers by their user-facing names, in model order."""
    return {n: m for n, m in linear_layers(model).items() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by its ``merged_linear()`` in place and return the
    model: a plain model whose ``state_dict`` has the keys of the unadapted one (for a
    GPT, ``GPT(config).load_state_dict`` takes it) and whose outputs equal the adapted
    model's (eval mode, float rounding). The 4-bit layers of a QLoRA base that no adapter
    wraps become float ``nn.Linear`` layers of their dequantised weights."""
    for name, layer in lora_layers(model).items():
        replace_layer(model, name, layer.merged_linear())
    for name, layer in linear_layers(model).items():  # a QLoRA base's 4-bit layers left
        if hasattr(layer, "dequantize"):
            replace_layer(model, name, dequantized_linear(layer))
    return model


def dequantized_linear(layer: nn.Module) -> nn.Linear:
    """A float ``nn.Linear`` with the weight ``layer.dequantize()`` (out, in) and the bias
    of a 4-bit layer: what a merged QLoRA model holds where no adapter was."""
    return float_linear(layer.dequantize(), getattr(layer, "bias", None))


def float_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new ``nn.Linear`` holding copies of ``weight`` (out, in) and ``bias`` (out,) or None."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors, detached copies, keyed as in ``model.state_dict()``
    (``transformer.h.0.attn.c_attn.lora_A``: (r, in); ``...lora_B``: (out, r))."""
    return {f"{path}.{tensor}": getattr(module, tensor).detach().clone()
            for path, module in model.named_modules() if isinstance(module, LoRALinear)
            for tensor in ADAPTER_TENSORS}


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements, a shared parameter once.

    A 4-bit base layer (``NF4Linear``) holds its weight in buffers, not parameters; it
    is counted by its logical size, out * in weights (plus its bias), not by bytes, so
    "trainable / total" means the same for a 4-bit base as for a float one.
    """
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    for module in model.modules():
        if _is_linear(module) and not isinstance(module, LoRALinear) \
                and not isinstance(getattr(module, "weight", None), nn.Parameter):
            bias = getattr(module, "bias", None)
            total += module.out_features * module.in_features
            total += 0 if bias is None or isinstance(bias, nn.Parameter) else bias.numel()
    return trainable, total
