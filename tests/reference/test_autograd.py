"""The scalar engine (lm.reference) against PyTorch float64 autograd and hand computations."""

import gc
import itertools
import math
import random
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lm import cli
from lm.reference import classify
from lm.reference.autograd import Value
from lm.reference.nn import MLP, Neuron

# One step of a random expression: fn(x, y, c, e, k) on two earlier nodes x, y, a constant
# c in [0.5, 2], a real exponent e and an integer exponent k. Written with Python operators
# and methods that Value and torch.Tensor share, so the same code builds both graphs.
# Where an operation has a domain edge, its operand is shifted into a safe domain
# (x * x + c >= 0.5); the edges themselves are tested against PyTorch separately below.
OPS = {
    "add": lambda x, y, c, e, k: x + y,
    "sub": lambda x, y, c, e, k: x - y,
    "mul": lambda x, y, c, e, k: x * y,
    "truediv": lambda x, y, c, e, k: x / (y * y + c),
    "add_number": lambda x, y, c, e, k: x + c,
    "sub_number": lambda x, y, c, e, k: x - c,
    "mul_number": lambda x, y, c, e, k: x * c,
    "truediv_number": lambda x, y, c, e, k: x / c,
    "radd": lambda x, y, c, e, k: c + x,
    "rsub": lambda x, y, c, e, k: c - x,
    "rmul": lambda x, y, c, e, k: c * x,
    "rtruediv": lambda x, y, c, e, k: c / (x * x + c),
    "pow_int": lambda x, y, c, e, k: x**k,
    "pow_real": lambda x, y, c, e, k: (x * x + c) ** e,
    "neg": lambda x, y, c, e, k: -x,
    "relu": lambda x, y, c, e, k: x.relu(),
    "tanh": lambda x, y, c, e, k: x.tanh(),
    "exp": lambda x, y, c, e, k: x.exp(),
    "log": lambda x, y, c, e, k: (x * x + c).log(),
}

steps = st.tuples(
    st.sampled_from(sorted(OPS)),
    st.integers(0, 2**16),  # index of x among the earlier nodes (taken modulo their count)
    st.integers(0, 2**16),  # index of y
    st.floats(0.5, 2.0),  # c
    st.sampled_from([-2.0, -1.5, -1.0, -0.5, 0.5, 1.5, 2.0, 3.0]),  # e
    st.integers(0, 3),  # k
)
programs = st.tuples(
    st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=4),  # leaf values
    st.lists(steps, min_size=1, max_size=10),
)


def run_program(leaves, program):
    """Apply ``program`` to the list of ``leaves``; return every node (leaves first)."""
    nodes = list(leaves)
    for op, i, j, c, e, k in program:
        x, y = nodes[i % len(nodes)], nodes[j % len(nodes)]
        nodes.append(OPS[op](x, y, c, e, k))
    return nodes


def relu_inputs(nodes, program, n_leaves):
    """The values that the program's relu steps were applied to."""
    return [nodes[i % (n_leaves + s)].data for s, (op, i, *_) in enumerate(program) if op == "relu"]


def torch_leaf(x):
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def torch_grad(t):
    return 0.0 if t.grad is None else t.grad.item()


def assert_close(actual, expected, tol=1e-9):
    assert math.isclose(actual, expected, rel_tol=tol, abs_tol=tol), (actual, expected)


def assert_same_float(actual, expected):
    """Equal as PyTorch float64 reports it: nan to nan, inf to inf of the same sign."""
    if math.isnan(expected):
        assert math.isnan(actual), (actual, expected)
    elif math.isinf(expected):
        assert actual == expected, (actual, expected)
    else:
        assert_close(actual, expected, tol=1e-12)


def check_against_torch(leaf_values, program):
    leaves = [Value(v) for v in leaf_values]
    nodes = run_program(leaves, program)
    nodes[-1].backward()
    t_leaves = [torch_leaf(v) for v in leaf_values]
    t_out = run_program(t_leaves, program)[-1]
    t_out.backward()
    assert_close(nodes[-1].data, t_out.item())
    for leaf, t_leaf in zip(leaves, t_leaves, strict=True):
        assert_close(leaf.grad, torch_grad(t_leaf))


@settings(max_examples=300, deadline=None)
@given(programs)
def test_random_expressions_match_torch(program_and_leaves):
    leaf_values, program = program_and_leaves
    nodes = run_program([Value(v) for v in leaf_values], program)
    assume(all(abs(n.data) < 1e6 for n in nodes))  # no overflow, little cancellation
    # relu has a kink at 0; stay off it so a last-ulp difference cannot flip the gradient
    assume(all(abs(x) > 1e-6 for x in relu_inputs(nodes, program, len(leaf_values))))
    check_against_torch(leaf_values, program)


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_operation_matches_torch(op):
    # every operation on both of two leaves, off relu's kink (x = 0.7, y = -1.3)
    program = [(op, 0, 1, 0.75, 1.5, 3), (op, 1, 2, 0.75, 1.5, 3), ("mul", 2, 3, 1, 1, 1)]
    check_against_torch([0.7, -1.3], program)


def test_node_used_several_times_accumulates_gradient():
    a = Value(3.0)
    y = a * a + a
    y.backward()
    t = torch_leaf(3.0)
    (t * t + t).backward()
    assert (y.data, a.grad) == (12.0, 7.0)  # by hand: a^2 + a, 2a + 1
    assert a.grad == t.grad.item()


def test_repeated_backward_accumulates_into_leaves_only_as_torch():
    a = Value(3.0)
    y = (a * a).tanh() * a
    y.backward()
    y.backward()
    t = torch_leaf(3.0)
    t_y = (t * t).tanh() * t
    t_y.backward(retain_graph=True)
    t_y.backward()
    assert_close(a.grad, t.grad.item(), tol=1e-15)


def test_backward_through_100_000_node_chain():
    x = Value(2.0)
    y = x
    for _ in range(100_000):
        y = y + x  # a chain 100,000 deep: recursion would hit Python's limit
    y.backward()
    assert y.data == 200_002.0
    assert x.grad == 100_001.0


def test_graph_has_no_reference_cycles():
    gc.collect()
    gc.disable()
    try:
        leaves = [Value(0.7), Value(-1.3)]
        program = [(op, s, s + 1, 0.75, 1.5, 2) for s, op in enumerate(sorted(OPS))]
        run_program(leaves, program)[-1].backward()
        del leaves
        assert gc.collect() == 0  # freed by reference counting, nothing left for the collector
    finally:
        gc.enable()


inf, nan = math.inf, math.nan
EDGES = [  # (function of leaves, leaf values): division, log, pow, exp at their domain edges
    (lambda a, b: a / b, (1.0, 0.0)),
    (lambda a, b: a / b, (-1.0, 0.0)),
    (lambda a, b: a / b, (0.0, 0.0)),
    (lambda a, b: a / b, (1.0, -0.0)),
    (lambda a, b: a / b, (1.0, 1e-300)),  # finite value, d/db overflows to -inf
    (lambda a, b: a / b, (1e300, 1e-300)),  # value overflows
    (lambda a: a / 0, (1.0,)),
    (lambda a: a / 0.0, (0.0,)),
    (lambda a: 2.0 / a, (0.0,)),
    (lambda a: 2.0 / a, (-0.0,)),
    (lambda a: 0.0 / a, (0.0,)),
    (lambda a: a.log(), (0.0,)),
    (lambda a: a.log(), (-0.0,)),
    (lambda a: a.log(), (-1.0,)),  # value nan, gradient 1/x = -1
    (lambda a: a.log(), (1e-310,)),  # subnormal: finite value, gradient overflows
    (lambda a: a.log(), (inf,)),
    (lambda a: a.log(), (nan,)),
    (lambda a: a**-1, (0.0,)),
    (lambda a: a**-1, (-0.0,)),
    (lambda a: a**-2, (-0.0,)),
    (lambda a: a**0.5, (0.0,)),
    (lambda a: a**0.5, (-1.0,)),
    (lambda a: a ** (1 / 3), (-8.0,)),
    (lambda a: a**0, (0.0,)),
    (lambda a: a**0, (nan,)),
    (lambda a: a**400, (10.0,)),
    (lambda a: a**401, (-10.0,)),
    (lambda a: a.exp(), (1000.0,)),
    (lambda a: a.exp(), (-1000.0,)),
    (lambda a: a.relu(), (0.0,)),
    (lambda a: a.relu(), (nan,)),
    (lambda a: a.tanh(), (inf,)),
]


@pytest.mark.parametrize(("fn", "values"), EDGES, ids=[f"edge{i}" for i in range(len(EDGES))])
def test_domain_edges_match_torch(fn, values):
    leaves = [Value(v) for v in values]
    y = fn(*leaves)  # must not raise ZeroDivisionError, ValueError or OverflowError
    y.backward()
    t_leaves = [torch_leaf(v) for v in values]
    t_y = fn(*t_leaves)
    t_y.backward()
    assert_same_float(y.data, t_y.item())
    for leaf, t_leaf in zip(leaves, t_leaves, strict=True):
        assert_same_float(leaf.grad, torch_grad(t_leaf))


def test_value_exponent_is_a_type_error():
    with pytest.raises(TypeError, match="exponent"):
        Value(2.0) ** Value(3.0)


# --- nn ---


@pytest.mark.parametrize(("nin", "nouts"), [(2, [16, 16, 1]), (3, [4, 4, 2]), (5, [1])])
def test_mlp_parameter_count(nin, nouts):
    sizes = [nin, *nouts]
    by_hand = sum((a + 1) * b for a, b in itertools.pairwise(sizes))  # weights + bias per layer
    assert len(MLP(nin, nouts).parameters()) == by_hand
    assert len(MLP(2, [16, 16, 1]).parameters()) == 337  # micrograd's demo model


@pytest.mark.parametrize("nonlin", [True, False])
@pytest.mark.parametrize("sign", [1.0, -1.0])  # pre-activation > 0 or < 0
def test_neuron_matches_torch_linear(nonlin, sign):
    neuron = Neuron(3, nonlin, rng=random.Random(1))
    neuron.bias.data = 0.25 * sign
    w = [p.data for p in neuron.weight]
    x_values = [sign * math.copysign(0.5 * (i + 1), wi) for i, wi in enumerate(w)]
    x = [Value(v) for v in x_values]
    y = neuron(x)
    y.backward()

    t_w = torch.tensor([w], dtype=torch.float64, requires_grad=True)  # (1, 3)
    t_b = torch.tensor([neuron.bias.data], dtype=torch.float64, requires_grad=True)  # (1,)
    t_x = torch.tensor(x_values, dtype=torch.float64, requires_grad=True)  # (3,)
    t_y = torch.nn.functional.linear(t_x, t_w, t_b)  # (1,)
    t_y = torch.relu(t_y) if nonlin else t_y
    t_y.sum().backward()

    assert_close(y.data, t_y.item())
    assert [p.grad for p in neuron.weight] == pytest.approx(t_w.grad[0].tolist(), abs=1e-12)
    assert_close(neuron.bias.grad, t_b.grad.item())
    assert [v.grad for v in x] == pytest.approx(t_x.grad.tolist(), abs=1e-12)
    if nonlin and sign < 0:
        assert y.data == 0.0 and neuron.bias.grad == 0.0  # relu closed


def test_mlp_matches_torch_sequential():
    model = MLP(3, [4, 4, 2], seed=7)
    linears = []
    for layer in model.layers:
        nin, nout = len(layer.neurons[0].weight), len(layer.neurons)
        linear = torch.nn.Linear(nin, nout, dtype=torch.float64)
        weight = [[p.data for p in n.weight] for n in layer.neurons]  # neuron i is row i
        bias = [n.bias.data for n in layer.neurons]
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(weight, dtype=torch.float64))
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float64))
        linears.append(linear)
    relu = torch.nn.ReLU()
    t_model = torch.nn.Sequential(linears[0], relu, linears[1], relu, linears[2])
    x = [0.3, -0.8, 1.1]

    out = model(x)
    (out[0] - 2 * out[1]).backward()
    t_out = t_model(torch.tensor(x, dtype=torch.float64))  # (2,)
    (t_out[0] - 2 * t_out[1]).backward()

    assert [o.data for o in out] == pytest.approx(t_out.tolist(), abs=1e-12)
    for layer, linear in zip(model.layers, linears, strict=True):
        weight_grad = [[p.grad for p in n.weight] for n in layer.neurons]  # (nout, nin)
        bias_grad = [n.bias.grad for n in layer.neurons]  # (nout,)
        assert np.allclose(weight_grad, linear.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
        assert np.allclose(bias_grad, linear.bias.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert any(p.grad != 0 for p in model.layers[0].parameters())  # it reached the first layer


def test_mlp_initialisation_is_seeded():
    def weights(seed):
        return [p.data for p in MLP(2, [3, 1], seed=seed).parameters()]

    assert weights(3) == weights(3)
    assert weights(3) != weights(4)


def test_zero_grad_and_empty_mlp():
    model = MLP(2, [2, 1])
    model([1.0, -1.0]).backward()
    assert any(p.grad != 0 for p in model.parameters())
    model.zero_grad()
    assert all(p.grad == 0.0 for p in model.parameters())
    with pytest.raises(ValueError, match="nouts"):
        MLP(2, [])


# --- the two-moons demo ---


def test_make_moons_lies_on_two_half_circles():
    X, y = classify.make_moons(n_samples=100, noise=0.0)
    assert X.shape == (100, 2) and y.shape == (100,)
    upper, lower = X[y == -1], X[y == 1]
    assert len(upper) == len(lower) == 50
    # by hand: unit circle around (0, 0), upper half; around (1, 0.5), lower half
    assert np.allclose(np.hypot(upper[:, 0], upper[:, 1]), 1.0) and (upper[:, 1] >= 0).all()
    assert np.allclose(np.hypot(lower[:, 0] - 1, lower[:, 1] - 0.5), 1.0)
    assert (lower[:, 1] <= 0.5).all()
    noisy, _ = classify.make_moons()
    assert np.array_equal(noisy, classify.make_moons()[0])  # fixed seed
    assert 0.05 < np.std(noisy - X) < 0.15  # noise ~ 0.1


def test_svm_loss_of_a_zero_model_by_hand():
    model = MLP(2, [4, 1])
    for p in model.parameters():
        p.data = 0.0
    X, y = classify.make_moons()
    loss, accuracy = classify.svm_loss(model, X.tolist(), y.tolist())
    # every score is 0: margin relu(1 - y * 0) = 1 for every point, no L2; all predicted -1
    assert loss.data == 1.0
    assert accuracy == 0.5


def test_classify_demo_writes_png(tmp_path, capsys):
    out = tmp_path / "sub" / "moons.png"
    reached = classify.demo(**asdict(cli.settings("classify", "steps=2", "seed=0", f"out={out}")))
    lines = capsys.readouterr().out.splitlines()
    assert reached is None  # two steps from random weights are not enough
    assert all(re.fullmatch(r"step \d+ loss \d+\.\d{4} accuracy \d+\.\d%", s) for s in lines[:2])
    assert lines[2] == "did not reach 100% accuracy in 2 steps"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_classify_demo_reaches_full_accuracy(tmp_path, capsys):
    out = tmp_path / "moons.png"
    reached = classify.demo(**asdict(cli.settings("classify", f"out={out}")))
    assert reached is not None and 0 <= reached < 100
    assert f"reached 100% accuracy at step {reached}" in capsys.readouterr().out
    assert out.exists()
