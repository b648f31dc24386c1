"""Benchmark: the harness (Lightning Trainer, TensorBoard on) against a plain PyTorch loop.

Both train ``model=small`` with the same model, optimizer, schedule, gradient
clipping and batches; runs alternate so drift in the machine's speed hits both.
Tokens/s is measured over the steady state (steps ``skip`` to ``steps``), so
start-up and the final validation are left out. Prints each run, the medians and
their ratio (harness / plain; we aim for >= 0.95).

    lm bench train [steps=300] [skip=20] [repeats=5] [model=small]   (conf/bench_train.yaml)
"""

import contextlib
import statistics
import tempfile
import time

import hydra
import lightning as L
import torch

from lm.bench import BenchTrainConfig
from lm.config.compose import compose_config
from lm.config.validate import validate
from lm.hook_points import HookPoint
from lm.model import GPT
from lm.training.module import param_groups


class StepTimer(L.Callback):
    """Wall time from the end of step ``skip`` to the end of the last step."""

    def __init__(self, skip: int):
        self.skip = skip
        self.start = self.end = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.skip:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def bench_harness(overrides: list[str], skip: int) -> float:
    """Tokens/s of ``lm.training.run.run`` with ``overrides`` over steps (skip, max_steps]."""
    from lm.training.run import run

    with tempfile.TemporaryDirectory() as out:  # its own registry: never skipped, nothing left
        cfg = compose_config([*overrides, f"paths.output_dir={out}", f"tracking.registry_dir={out}"])
        timer = StepTimer(skip)
        run(cfg, extra_callbacks=[timer])
    steps = cfg.trainer.max_steps - skip
    return steps * cfg.data.batch_size * cfg.model.block_size / (timer.end - timer.start)


def bench_plain(overrides: list[str], skip: int) -> float:
    """Tokens/s of a plain PyTorch loop doing the same work as the harness."""
    from lm.data.datamodule import build_datamodule

    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config([*overrides, f"paths.output_dir={out}"])
    model_config = validate(cfg).model_config
    dm = build_datamodule(cfg)
    model_config.vocab_size = dm.tokenizer.vocab_size
    torch.manual_seed(cfg.seed)
    model = GPT(model_config)
    optimizer = hydra.utils.instantiate(cfg.optimizer)(
        param_groups(model, cfg.optimizer.weight_decay)
    )
    scheduler = hydra.utils.instantiate(cfg.scheduler)(optimizer)
    loader = iter(dm.train_dataloader())
    model.train()
    for step in range(cfg.trainer.max_steps):
        if step == skip:
            start = time.perf_counter()
        x, y = next(loader)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        if step % cfg.trainer.log_every_n_steps == 0:
            loss.item()  # what a loop that prints its loss pays
    elapsed = time.perf_counter() - start
    steps = cfg.trainer.max_steps - skip
    return steps * cfg.data.batch_size * cfg.model.block_size / elapsed


@contextlib.contextmanager
def without_hook_points():
    """Within this block every ``HookPoint`` is a bare function call (``x -> x``), not a
    module call: the model as if it had no hook points at all."""
    original = HookPoint.__call__
    HookPoint.__call__ = lambda self, x: x
    try:
        yield
    finally:
        HookPoint.__call__ = original


def bench_hook_points(overrides: list[str], skip: int, repeats: int) -> tuple[float, float]:
    """Median tokens/s of the plain loop with hook points (nothing attached, as with
    ``hooks=none``) and without them, alternating."""
    with_points, without = [], []
    for i in range(repeats):
        with_points.append(bench_plain(overrides, skip))
        with without_hook_points():
            without.append(bench_plain(overrides, skip))
        print(f"  repeat {i + 1}: hook points {with_points[-1]:9.0f} tokens/s, "
              f"none {without[-1]:9.0f} tokens/s", flush=True)
    return statistics.median(with_points), statistics.median(without)



def bench_train(cfg: BenchTrainConfig) -> int:
    """``lm bench train``: print tokens/s of each run, the medians and their ratios.

    Raises:
        ValueError: ``skip`` not in [0, steps) or ``repeats`` < 1 (one line).
    """
    if not 0 <= cfg.skip < cfg.steps:
        raise ValueError(f"skip={cfg.skip} is invalid: must be in [0, steps={cfg.steps})")
    if cfg.repeats < 1:
        raise ValueError(f"repeats={cfg.repeats} is invalid: must be an integer >= 1")
    overrides = [
        f"model={cfg.model}", f"trainer.max_steps={cfg.steps}",
        f"trainer.val_check_interval={cfg.steps}", "tracking.min_val_points=null",  # once, at the end
        "sample.max_new_tokens=0",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    ]
    print(f"benchmark: model={cfg.model}, {cfg.steps} steps, timed after step {cfg.skip}, "
          f"{cfg.repeats} alternating repeats, {torch.get_num_threads()} torch threads")
    harness, plain = [], []
    for i in range(cfg.repeats):
        plain.append(bench_plain(overrides, cfg.skip))
        print(f"  repeat {i + 1}: plain loop {plain[-1]:9.0f} tokens/s", flush=True)
        harness.append(bench_harness(overrides, cfg.skip))
        print(f"  repeat {i + 1}: harness    {harness[-1]:9.0f} tokens/s", flush=True)
    h, p = statistics.median(harness), statistics.median(plain)
    print(f"plain loop (median): {p:9.0f} tokens/s")
    print(f"harness    (median): {h:9.0f} tokens/s")
    print(f"ratio harness/plain: {h / p:.3f} (target >= 0.95)")
    print("hook points: hooks=none against the same model without hook points (plain loop)")
    with_points, without = bench_hook_points(overrides, cfg.skip, cfg.repeats)
    print(f"with hook points (median):    {with_points:9.0f} tokens/s")
    print(f"without hook points (median): {without:9.0f} tokens/s")
    print(f"ratio with/without: {with_points / without:.3f}")
    return 0
