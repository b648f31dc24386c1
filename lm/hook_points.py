"""Named identity modules that activations pass through, TransformerLens style.

An activation anyone may want to observe or edit goes through a ``HookPoint``.
With nothing attached it returns its input unchanged; a PyTorch forward hook
registered on it sees the activation and may return a replacement tensor.

Source: TransformerLens ``hook_points.py`` (Nanda & Bloom, 2022).
"""

from __future__ import annotations

import torch
from torch import nn


class HookPoint(nn.Module):
    """Identity module marking a named activation.

    Attributes:
        name: dotted name in the model's ``hook_dict`` (e.g.
            ``"blocks.0.attn.hook_pattern"``); set by the model that owns it,
            ``None`` until then.

    ``forward(x)`` returns ``x`` unchanged (any shape). Forward hooks registered
    with ``register_forward_hook`` observe (return ``None``) or edit (return a
    tensor) the activation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None

    @property
    def has_hooks(self) -> bool:
        """True when at least one forward hook is registered on this point."""
        return bool(self._forward_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
