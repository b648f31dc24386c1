"""Named identity modules that activations pass through, TransformerLens style.

An activation anyone may want to observe or edit goes through a ``HookPoint``.
With nothing attached it returns its input unchanged; a PyTorch forward hook
registered on it sees the activation and may return a replacement tensor.
``add_hooks`` and ``hooks_attached`` register hook functions by name or glob
pattern on a name -> HookPoint table (``GPT.hook_dict``).

Source: TransformerLens ``hook_points.py`` (Nanda & Bloom, 2022).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class HookPoint(nn.Module):
    """Identity module marking a named activation.

    Attributes:
        name: dotted name in the model's ``hook_dict`` (e.g.
            ``"blocks.0.attn.hook_pattern"``); set by the model that owns it,
            ``None`` until then.
        layer: index of the block it sits in (``blocks.{layer}``), set by that block;
            ``None`` outside the blocks (``hook_embed``, ``hook_logits``).

    ``forward(x)`` returns ``x`` unchanged (any shape). Forward hooks registered
    with ``register_forward_hook`` observe (return ``None``) or edit (return a
    tensor) the activation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self.layer: int | None = None

    @property
    def has_hooks(self) -> bool:
        """True when at least one forward hook is registered on this point."""
        return bool(self._forward_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


# A hook function, TransformerLens style: (activation, hook point) -> None to observe,
# or a tensor of the same shape to replace the activation.
HookFn = Callable[[torch.Tensor, HookPoint], "torch.Tensor | None"]


def match_names(patterns: str | Sequence[str], names: Sequence[str]) -> list[str]:
    """The names matching any of the glob ``patterns``, in the order of ``names``.

    Globs are ``fnmatch`` patterns, case-sensitive; ``*`` also matches dots
    (``blocks.*.hook_resid_post``, ``*hook_z``). An exact name is its own pattern.

    Raises:
        ValueError: one line naming the first pattern that matches no name and the
            closest names (``difflib``).
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            closest = difflib.get_close_matches(pattern, names, n=3, cutoff=0.0)
            raise ValueError(
                f"pattern {pattern!r} matches no hook point (closest: {', '.join(closest)})"
            )
    return [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def add_hooks(
    points: dict[str, HookPoint], hooks: Sequence[tuple[str | Sequence[str], HookFn]]
) -> list[RemovableHandle]:
    """Register each ``(pattern, fn)`` on every matching point, in the order given.

    All patterns are checked before anything is registered, so a bad one leaves
    the points untouched. Hooks on one point run in registration order, each
    seeing the previous one's output. Returns the handles; ``handle.remove()``
    detaches.

    Raises:
        ValueError: a pattern matches no hook point (see ``match_names``).
    """
    names = list(points)
    targets = [(match_names(pattern, names), fn) for pattern, fn in hooks]
    return [
        points[name].register_forward_hook(partial(_call_hook_fn, fn))
        for matched, fn in targets
        for name in matched
    ]


def _call_hook_fn(fn: HookFn, point: HookPoint, inputs: tuple, output: torch.Tensor):
    return fn(output, point)


def remove_hooks(handles: Iterable[RemovableHandle]) -> None:
    """Detach every hook in ``handles``."""
    for handle in handles:
        handle.remove()


@contextmanager
def hooks_attached(
    points: dict[str, HookPoint], hooks: Sequence[tuple[str | Sequence[str], HookFn]]
) -> Iterator[None]:
    """Attach ``hooks`` (see ``add_hooks``) for the ``with`` block; removed on exit,
    exceptions included (PyTorch hooks are global state)."""
    handles = add_hooks(points, hooks)
    try:
        yield
    finally:
        remove_hooks(handles)
