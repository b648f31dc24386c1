"""A scalar reverse-mode autograd engine, written from first principles.

Reference design: Andrej Karpathy's micrograd, ``micrograd/engine.py``
(https://github.com/karpathy/micrograd). As there, every operation reads as one
idea: compute the output ``out``, attach the closure ``out._backward`` that
applies the local derivative (chain rule) to the operands' ``grad``, return
``out``. Gradients accumulate (``+=``), so a node used several times receives the
sum of its contributions, as in PyTorch.

Departures from micrograd:

* ``_backward`` receives ``out.grad`` as its argument and closes over the output's
  float value, never over ``out`` itself. micrograd's closure refers to ``out``, a
  reference cycle (``out -> _backward -> out``) per node, so every graph waits for
  Python's cyclic garbage collector. Without the cycle, a graph is freed by
  reference counting as soon as its root is dropped, and a training loop may pause
  the collector, whose scans of the live graph were most of the two-moons demo's
  run time (``lm.reference.classify.cyclic_gc_paused``).
* ``/`` is an operation of its own (micrograd: ``a * b**-1``), with PyTorch's gradients.
* ``backward`` orders the graph with an iterative depth-first search, not a
  recursive one, so a chain of 100,000 nodes does not hit Python's recursion
  limit.
* Calling ``backward`` again accumulates into the leaves only, as PyTorch does.
* Domain edges follow IEEE 754 as PyTorch float64 does, instead of raising
  Python's ``ZeroDivisionError``/``ValueError``/``OverflowError``:
  ``1/0 -> inf``, ``-1/0 -> -inf``, ``0/0 -> nan``, ``log(0) -> -inf``,
  ``log(x<0) -> nan``, ``0 ** -1 -> inf``, ``(-8) ** (1/3) -> nan``,
  ``exp(1000) -> inf``. Each backward uses the same formula as PyTorch's
  ``derivatives.yaml``, so the gradients at those edges agree too (for example
  d log(x)/dx at ``x = -1`` is ``-1.0``, although the value is ``nan``).
"""

from __future__ import annotations

import math

Number = int | float


def _div(a: float, b: float) -> float:
    """``a / b`` in IEEE 754 arithmetic: ``x/±0 -> ±inf`` (sign of ``x*b``), ``0/0 -> nan``.

    Python raises ``ZeroDivisionError`` for a zero divisor; PyTorch float64 does not.
    """
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _is_odd_integer(n: float) -> bool:
    return math.isfinite(n) and float(n).is_integer() and int(n) % 2 == 1


def _pow(x: float, n: float) -> float:
    """``x ** n`` as C's ``pow`` (and PyTorch float64) gives it, never raising.

    Zero to a negative power is a pole, ``±inf`` (``-inf`` only for ``-0.0`` and an
    odd ``n``); a negative base to a non-integer power is ``nan`` (Python would
    return a complex number); overflow is ``±inf``.
    """
    try:
        return math.pow(x, n)
    except OverflowError:
        return -math.inf if x < 0 and _is_odd_integer(n) else math.inf
    except ValueError:  # math.pow's "domain error": 0 ** negative, or negative ** non-integer
        if x == 0.0:
            return math.copysign(math.inf, x) if _is_odd_integer(n) else math.inf
        return math.nan


def _exp(x: float) -> float:
    """``e ** x``; ``inf`` where ``math.exp`` would raise ``OverflowError`` (x > ~709.78)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _log(x: float) -> float:
    """Natural log: ``log(±0) = -inf``, ``log(x < 0) = nan``, ``log(nan) = nan``."""
    if x == 0.0:
        return -math.inf
    if x < 0.0:
        return math.nan
    return math.log(x)


class Value:
    """A scalar node of a computation graph: its value ``data`` and ``grad`` = d(root)/d(self).

    ``grad`` starts at 0.0 and is accumulated by ``backward``; reset it between
    backward passes (``lm.reference.nn.Module.zero_grad`` does so for parameters).
    Operands may be ``Value`` or plain ``int``/``float`` on either side.

    Source: micrograd ``engine.Value`` (Karpathy), extended with ``/`` as its own
    operation, ``exp``/``log`` and IEEE domain edges (see the module docstring).
    """

    __slots__ = ("_backward", "_op", "_prev", "data", "grad")

    def __init__(self, data: Number, _children: tuple[Value, ...] = (), _op: str = ""):
        self.data = float(data)
        self.grad = 0.0
        self._backward = lambda grad: None  # leaves have nothing to pass on
        self._prev = _children
        self._op = _op  # the operation that produced this node, for debugging

    def __add__(self, other: Value | Number) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward(grad: float):
            self.grad += grad
            other.grad += grad

        out._backward = _backward
        return out

    def __sub__(self, other: Value | Number) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data - other.data, (self, other), "-")

        def _backward(grad: float):
            self.grad += grad
            other.grad -= grad

        out._backward = _backward
        return out

    def __mul__(self, other: Value | Number) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward(grad: float):
            self.grad += other.data * grad
            other.grad += self.data * grad

        out._backward = _backward
        return out

    def __truediv__(self, other: Value | Number) -> Value:
        """``self / other``; a zero divisor gives ``±inf`` or ``nan`` (see ``_div``), never raises.

        Backward as PyTorch's ``div``: d/da = 1/b, d/db = -(a/b)/b.
        """
        other = other if isinstance(other, Value) else Value(other)
        out = Value(_div(self.data, other.data), (self, other), "/")

        def _backward(grad: float):
            self.grad += _div(grad, other.data)
            other.grad += -grad * _div(_div(self.data, other.data), other.data)

        out._backward = _backward
        return out

    def __pow__(self, exponent: Number) -> Value:
        """``self ** exponent`` for a number ``exponent``; domain edges as ``_pow``.

        Backward as PyTorch's ``pow_backward``: n * x ** (n-1), and exactly 0 for n = 0
        (so ``0 ** 0`` and ``nan ** 0`` have gradient 0, not nan).

        Raises:
            TypeError: if ``exponent`` is not an int or float (a ``Value`` exponent is
                not supported).
        """
        if not isinstance(exponent, int | float):
            raise TypeError(
                f"exponent={exponent!r}: Value ** exponent needs an int or float exponent"
            )
        out = Value(_pow(self.data, exponent), (self,), f"**{exponent}")

        def _backward(grad: float):
            if exponent != 0:
                self.grad += grad * (exponent * _pow(self.data, exponent - 1))

        out._backward = _backward
        return out

    def __neg__(self) -> Value:
        out = Value(-self.data, (self,), "neg")

        def _backward(grad: float):
            self.grad -= grad

        out._backward = _backward
        return out

    def relu(self) -> Value:
        """max(0, x); ``nan`` passes through. Gradient 0 where the output is <= 0 (so 0 at x = 0)
        and 1 elsewhere, including at ``nan``, as PyTorch's ``threshold_backward``."""
        y = max(self.data, 0.0)  # max keeps its first argument unless 0.0 is larger: nan stays nan
        out = Value(y, (self,), "relu")

        def _backward(grad: float):
            self.grad += 0.0 if y <= 0.0 else grad

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        y = math.tanh(self.data)
        out = Value(y, (self,), "tanh")

        def _backward(grad: float):
            self.grad += grad * (1.0 - y * y)

        out._backward = _backward
        return out

    def exp(self) -> Value:
        """e ** x, ``inf`` on overflow (x > ~709.78) rather than ``OverflowError``."""
        y = _exp(self.data)
        out = Value(y, (self,), "exp")

        def _backward(grad: float):
            self.grad += grad * y

        out._backward = _backward
        return out

    def log(self) -> Value:
        """Natural log: ``log(0) = -inf``, ``log(x < 0) = nan`` (no ``ValueError``).

        Backward as PyTorch's: grad / x, so d/dx is ``inf`` at ``+0.0``, ``-inf`` at ``-0.0``
        and the finite ``1/x`` at negative x, where the value itself is ``nan``.
        """
        out = Value(_log(self.data), (self,), "log")

        def _backward(grad: float):
            self.grad += _div(grad, self.data)

        out._backward = _backward
        return out

    def backward(self) -> None:
        """Accumulate d(self)/d(node) into ``node.grad`` for every node ``self`` depends on.

        Calls each node's ``_backward`` in reverse topological order, so a node passes
        on its gradient only once it has received every contribution. The order comes
        from an iterative depth-first search: a node is appended after all its
        children, whatever the depth of the graph.

        As in PyTorch, leaves (parameters, inputs) accumulate over repeated calls
        while interior nodes start each call from 0.0; micrograd keeps interior
        gradients, so its second ``backward`` double-counts.
        """
        topo: list[Value] = []
        visited: set[Value] = set()
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                topo.append(node)
                continue
            if node in visited:
                continue
            visited.add(node)
            stack.append((node, True))  # revisited once everything pushed above it is done
            stack.extend((child, False) for child in node._prev if child not in visited)

        for node in topo:
            if node._prev:
                node.grad = 0.0
        self.grad += 1.0  # d(self)/d(self)
        for node in reversed(topo):
            node._backward(node.grad)

    # a plain number on the left: 2 + v, 2 - v, 2 * v, 2 / v
    def __radd__(self, other: Number) -> Value:
        return self + other

    def __rsub__(self, other: Number) -> Value:
        return Value(other) - self

    def __rmul__(self, other: Number) -> Value:
        return self * other

    def __rtruediv__(self, other: Number) -> Value:
        return Value(other) / self

    def __repr__(self) -> str:
        return f"Value(data={self.data}, grad={self.grad})"
