"""Two-moons binary classification with the scalar engine: micrograd's demo.

    lm classify [steps=100] [seed=0] [out=outputs/reference/moons.png]   (conf/classify.yaml)

runs ``demo`` (the command: ``lm/commands/classify.py``).

Reference: micrograd ``demo.ipynb`` (Karpathy): an ``MLP(2, [16, 16, 1])`` trained
full batch on 100 noisy two-moons points with the SVM max-margin loss
``mean(relu(1 - y * score))`` plus L2 regularisation ``1e-4 * sum(p ** 2)``, by
SGD with learning rate ``1.0 - 0.9 * k / steps``. The data set follows
scikit-learn's ``make_moons``, written here with NumPy.
"""

from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path

import numpy as np

from lm.reference.autograd import Value
from lm.reference.nn import MLP

DATA_SEED = 1337  # the data set is fixed; the seed key only changes the network's initialisation
ALPHA = 1e-4  # L2 regularisation strength (micrograd's demo)


@contextlib.contextmanager
def cyclic_gc_paused():
    """Pause Python's cyclic garbage collector inside the block, restoring its state after.

    ``Value`` graphs hold no reference cycles and are freed by reference counting
    (see ``lm.reference.autograd``), so the collector finds nothing in them; yet each
    training step allocates ~400k tracked objects, which trigger about three full
    collections a step that re-scan the live graph and take most of the run time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def make_moons(n_samples: int = 100, noise: float = 0.1, seed: int = DATA_SEED):
    """Two interleaving half circles with Gaussian noise, labelled -1 (upper) and +1 (lower).

    Source: ``sklearn.datasets.make_moons`` (same construction, without shuffling).

    Returns:
        X: (n_samples, 2) float64 points, roughly in [-1, 2] x [-0.5, 1].
        y: (n_samples,) float64 labels in {-1.0, +1.0}.
    """
    n_out = n_samples // 2
    n_in = n_samples - n_out
    t_out = np.linspace(0.0, np.pi, n_out)
    t_in = np.linspace(0.0, np.pi, n_in)
    upper = np.stack([np.cos(t_out), np.sin(t_out)], axis=1)  # (n_out, 2)
    lower = np.stack([1.0 - np.cos(t_in), 0.5 - np.sin(t_in)], axis=1)  # (n_in, 2)
    X = np.concatenate([upper, lower])  # (n_samples, 2)
    X += np.random.default_rng(seed).normal(scale=noise, size=X.shape)
    y = np.concatenate([-np.ones(n_out), np.ones(n_in)])  # (n_samples,)
    return X, y


def svm_loss(model: MLP, X: list[list[float]], y: list[float]) -> tuple[Value, float]:
    """Max-margin loss ``mean(relu(1 - y * score)) + ALPHA * sum(p ** 2)`` over the full batch.

    Returns:
        the loss as a ``Value`` (ready for ``backward``) and the accuracy in [0, 1],
        counting ``score > 0`` as the prediction +1.
    """
    scores = [model(x) for x in X]
    margins = [(1 - yi * score).relu() for yi, score in zip(y, scores, strict=True)]
    data_loss = sum(margins) * (1.0 / len(margins))
    reg_loss = ALPHA * sum(p * p for p in model.parameters())
    correct = [(yi > 0) == (score.data > 0) for yi, score in zip(y, scores, strict=True)]
    return data_loss + reg_loss, sum(correct) / len(correct)


def train(model: MLP, X: list[list[float]], y: list[float], steps: int) -> int | None:
    """Full-batch SGD for ``steps`` steps, printing loss and accuracy at each.

    Returns:
        the first step whose forward pass classified every point correctly, or None.
    """
    reached = None
    for k in range(steps):
        loss, accuracy = svm_loss(model, X, y)
        model.zero_grad()
        loss.backward()
        lr = 1.0 - 0.9 * k / steps  # micrograd's linear decay from 1.0 to 0.1
        for p in model.parameters():
            p.data -= lr * p.grad
        print(f"step {k} loss {loss.data:.4f} accuracy {accuracy * 100:.1f}%")
        if accuracy == 1.0 and reached is None:
            reached = k
    return reached


def plot_decision_boundary(model: MLP, X: np.ndarray, y: np.ndarray, out: Path, h: float = 0.1):
    """Write the sign of ``model``'s score on an ``h``-spaced grid, with the data, to PNG ``out``.

    Every grid point is a forward pass through a scalar graph, so ``h`` stays coarse.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: render to file only
    import matplotlib.pyplot as plt

    x_min, x_max = X[:, 0].min() - 1, X[:, 0].max() + 1
    y_min, y_max = X[:, 1].min() - 1, X[:, 1].max() + 1
    xx, yy = np.meshgrid(np.arange(x_min, x_max, h), np.arange(y_min, y_max, h))  # (H, W) each
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1).tolist()  # (H*W, 2)
    zz = np.array([model(point).data > 0 for point in grid]).reshape(xx.shape)  # (H, W)

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.contourf(xx, yy, zz, cmap=plt.cm.Spectral, alpha=0.8)
    ax.scatter(X[:, 0], X[:, 1], c=y, s=40, cmap=plt.cm.Spectral, edgecolors="k")
    ax.set(xlim=(xx.min(), xx.max()), ylim=(yy.min(), yy.max()), title="MLP(2, [16, 16, 1])")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def demo(steps: int, seed: int, out: str | Path) -> int | None:
    """Train an ``MLP(2, [16, 16, 1])`` (initialised from ``seed``) on two moons for
    ``steps`` steps, printing each, and plot its decision boundary to the PNG ``out``;
    return the step 100% accuracy was reached, or None.

    Raises:
        ValueError: ``steps`` < 1 (one line).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} is invalid: must be an integer >= 1")
    start = time.perf_counter()
    X, y = make_moons()
    model = MLP(2, [16, 16, 1], seed=seed)
    with cyclic_gc_paused():
        reached = train(model, X.tolist(), y.tolist(), steps)
        if reached is None:
            print(f"did not reach 100% accuracy in {steps} steps")
        else:
            print(f"reached 100% accuracy at step {reached}")
        plot_decision_boundary(model, X, y, Path(out))
    print(f"wrote {out} ({time.perf_counter() - start:.1f} s)")
    return reached
