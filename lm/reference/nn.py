"""Neurons, layers and a multi-layer perceptron over the scalar ``Value`` engine.

Reference design: micrograd ``micrograd/nn.py`` (Karpathy). Names follow
``torch.nn`` where the meaning is the same: ``Module.parameters``,
``Module.zero_grad``, ``forward`` called through ``__call__``, and ``weight`` /
``bias`` for a neuron's parameters (one row of ``torch.nn.Linear``).
Initialisation is micrograd's, not PyTorch's: weights ~ U(-1, 1), bias 0, drawn
from an explicit ``random.Random`` so that runs are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from lm.reference.autograd import Number, Value


class Module:
    """Base class: a module owns ``Value`` parameters and is called like a function."""

    def parameters(self) -> list[Value]:
        return []

    def zero_grad(self) -> None:
        """Set every parameter's ``grad`` to 0.0 (gradients accumulate across ``backward``)."""
        for p in self.parameters():
            p.grad = 0.0

    def __call__(self, *args):
        return self.forward(*args)

    def forward(self, *args):
        raise NotImplementedError


class Neuron(Module):
    """One unit: ``relu(w . x + b)``, or the affine ``w . x + b`` when ``nonlin=False``.

    Args:
        nin: number of inputs.
        nonlin: apply ReLU to the output.
        rng: source of the initial weights, ``weight[i] ~ U(-1, 1)``; ``bias = 0``.
    """

    def __init__(self, nin: int, nonlin: bool = True, *, rng: random.Random):
        self.weight = [Value(rng.uniform(-1.0, 1.0)) for _ in range(nin)]
        self.bias = Value(0.0)
        self.nonlin = nonlin

    def forward(self, x: Sequence[Value | Number]) -> Value:
        """x: ``nin`` inputs -> one output."""
        act = sum((wi * xi for wi, xi in zip(self.weight, x, strict=True)), self.bias)
        return act.relu() if self.nonlin else act

    def parameters(self) -> list[Value]:
        return [*self.weight, self.bias]

    def __repr__(self) -> str:
        return f"{'ReLU' if self.nonlin else 'Linear'}Neuron({len(self.weight)})"


class Layer(Module):
    """``nout`` independent neurons on the same inputs: ``torch.nn.Linear`` (+ ReLU) in scalars."""

    def __init__(self, nin: int, nout: int, nonlin: bool = True, *, rng: random.Random):
        self.neurons = [Neuron(nin, nonlin, rng=rng) for _ in range(nout)]

    def forward(self, x: Sequence[Value | Number]) -> list[Value]:
        """x: ``nin`` inputs -> ``nout`` outputs."""
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """A stack of ``Layer``: ReLU after every layer but the last, which stays affine.

    ``MLP(2, [16, 16, 1])`` is micrograd's two-moons classifier, 337 parameters.

    Args:
        nin: number of inputs.
        nouts: width of each layer in order; the last is the output size.
        seed: seeds the ``random.Random`` that initialises every weight.

    Raises:
        ValueError: if ``nouts`` is empty.
    """

    def __init__(self, nin: int, nouts: Sequence[int], seed: int = 0):
        if not nouts:
            raise ValueError(f"nouts={nouts!r}: an MLP needs at least one layer")
        rng = random.Random(seed)
        sizes = [nin, *nouts]
        self.layers = [
            Layer(sizes[i], sizes[i + 1], nonlin=i != len(nouts) - 1, rng=rng)
            for i in range(len(nouts))
        ]

    def forward(self, x: Sequence[Value | Number]) -> Value | list[Value]:
        """x: ``nin`` inputs -> the last layer's outputs, unwrapped to one ``Value`` if size 1."""
        for layer in self.layers:
            x = layer(x)
        return x[0] if len(x) == 1 else x

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"
