"""Backward hooks: a forward value through a ``torch.autograd.Function`` whose
backward is a chosen gradient, not (necessarily) the true one."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lm.hooks.base import BackwardHook


class ScaleGradFunction(torch.autograd.Function):
    """y = x; dL/dx = alpha * dL/dy. alpha = -1 is the gradient reversal layer
    (Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x.view_as(x)  # a view: autograd needs an output distinct from the input

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.alpha, None


class StraightThroughClampFunction(torch.autograd.Function):
    """y = clamp(x, low, high); dL/dx = dL/dy everywhere, also where the clamp is flat
    (the straight-through estimator, Bengio et al. 2013, "Estimating or Propagating
    Gradients Through Stochastic Neurons")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


class GradScale(BackwardHook):
    """Identity forward; scales the gradient flowing back through matching hook points
    by ``alpha`` (-1: gradient reversal, 0: stop-gradient, 0.5: half).

    Args:
        alpha: any float. pattern: hook points (default every ``hook_attn_out``, so
            only the attention sublayers see the scaled gradient, not the skip path).
    """

    name = "grad_scale"
    function = ScaleGradFunction

    def __init__(self, alpha: float = 0.5, pattern: str | Sequence[str] = "blocks.*.hook_attn_out"):
        super().__init__(pattern)
        self.alpha = float(alpha)

    def function_args(self) -> tuple:
        return (self.alpha,)


class StraightThroughClamp(BackwardHook):
    """Clamps activations to [low, high] in the forward pass and passes the gradient
    through unchanged (straight-through), so clamped units keep learning.

    Args:
        low < high. pattern: hook points (default every ``mlp.hook_pre``).
    """

    name = "straight_through_clamp"
    function = StraightThroughClampFunction

    def __init__(
        self, low: float = -4.0, high: float = 4.0,
        pattern: str | Sequence[str] = "blocks.*.mlp.hook_pre",
    ):
        super().__init__(pattern)
        if not low < high:
            raise ValueError(f"low={low}, high={high} is invalid: must have low < high")
        self.low, self.high = float(low), float(high)

    def function_args(self) -> tuple:
        return (self.low, self.high)
