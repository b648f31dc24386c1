"""Adapters from the config: ``apply_adapter(model, cfg.adapter)`` and what an adapter run saves.

``conf/adapter/<name>.yaml`` gives ``name`` (``none``, ``lora`` or ``qlora``) and its
settings. ``lora`` wraps each target Linear layer in a ``LoRALinear`` (``lora.py``);
``qlora`` first swaps each Linear layer matching ``quantize`` for a frozen 4-bit
``NF4Linear`` (``nf4.py``), then wraps the targets. Either way the base model is
frozen and only the adapters' ``lora_A`` and ``lora_B`` train.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lm.adapters.lora import (
    ADAPTER_TENSORS,
    apply_lora,
    check_lora_settings,
    match_layers,
    replace_layer,
)
from lm.adapters.nf4 import NF4Linear, check_quant_block_size

ADAPTERS = ("none", "lora", "qlora")


def adapter_name(cfg: Mapping[str, Any] | None) -> str:
    """``cfg["name"]``, ``"none"`` for a missing node (a config from before adapters)."""
    return "none" if cfg is None else str(cfg.get("name", "none"))


def is_adapter_key(key: str) -> bool:
    """Whether a state_dict key names an adapter tensor (``...c_attn.lora_A``)."""
    return key.rpartition(".")[2] in ADAPTER_TENSORS


def check_adapter(cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (one line naming the key, value and rule) for a bad
    ``adapter`` setting that needs no model: the name, ``r``, ``alpha``, ``dropout``,
    ``quant_block_size``. Target globs are checked against a model by ``apply_adapter``."""
    name = adapter_name(cfg)
    if name not in ADAPTERS:
        raise ValueError(f"adapter.name={name} is invalid: must be one of {', '.join(ADAPTERS)}")
    if name == "none":
        return
    alpha, dropout = cfg.get("alpha"), cfg.get("dropout")
    check_lora_settings(cfg.get("r"), float("nan") if alpha is None else alpha,
                        float("nan") if dropout is None else dropout)
    if name == "qlora":
        check_quant_block_size(quant_block_size(cfg))


def quant_block_size(cfg: Mapping[str, Any]) -> Any:
    """``cfg["quant_block_size"]`` of a ``qlora`` config: weights per NF4 absmax scale (not
    the context length ``model.block_size``). An adapter config saved before the key had
    that name (an older QLoRA checkpoint's) calls it ``block_size``; None if neither."""
    return cfg.get("quant_block_size", cfg.get("block_size"))


def check_adapter_layers(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (one line) if a ``quantize`` or ``targets`` glob of ``cfg``
    matches no Linear layer of ``model`` (a model on the meta device will do)."""
    if adapter_name(cfg) == "qlora":
        match_layers(model, list(cfg["quantize"]), key="adapter.quantize")
    match_layers(model, list(cfg["targets"]), key="adapter.targets")


def apply_adapter(model: nn.Module, cfg: Mapping[str, Any] | None) -> list[str]:
    """Give ``model`` (a ``GPT``) the adapter ``cfg`` describes, in place; return the
    names of the adapted layers (``[]`` for ``none``).

    Raises:
        ValueError: a bad setting, or a ``targets`` / ``quantize`` glob that matches no
            Linear layer (one line).
    """
    name = adapter_name(cfg)
    if name == "none":
        return []
    check_adapter(cfg)
    if name == "qlora":
        for layer in match_layers(model, list(cfg["quantize"]), key="adapter.quantize"):
            linear = model.named_layers()[layer]
            replace_layer(model, layer, NF4Linear.from_linear(
                linear, quant_block_size=quant_block_size(cfg),
                double_quant=bool(cfg["double_quant"])))
    targets = match_layers(model, list(cfg["targets"]), key="adapter.targets")
    return apply_lora(model, targets, r=cfg["r"], alpha=float(cfg["alpha"]),
                      dropout=float(cfg["dropout"]))


def adapter_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter tensors of a state_dict (keys as they are there)."""
    return {k: v for k, v in state_dict.items() if is_adapter_key(k)}


def describe_params(trainable: int, total: int) -> str:
    """``trainable params: 24,576 of 832,896 (2.95%)``."""
    return f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
