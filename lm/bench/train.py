"""Benchmark: the harness (Lightning Trainer, TensorBoard on) against a plain PyTorch loop.

Both train ``model=small`` with the same model, optimizer, schedule, gradient
clipping and batches; runs alternate so drift in the machine's speed hits both.
Tokens/s is measured over the steady state (steps ``skip`` to ``steps``), so
start-up and the final validation are left out. Prints each run, the medians and
their ratio (harness / plain; we aim for >= 0.95).

With ``compare=data``, the harness instead trains from an ``lm prepare`` dataset
(``data=prepared``): the Shakespeare documents of ``lm bench prepare`` (its settings,
with ``prepare=[...]``'s overrides, name the corpus, the BPE and ``work_dir``), prepared
once in shards of ``shard_tokens`` tokens, so that windows cross shard ends, against the
in-memory path: the same text as one file through ``data=text_file``'s token cache, with
the same BPE (``data/tokenizer=gpt2_files``). Same model and vocabulary; the only
difference is where the windows come from (tokens/s ratio prepared/in-memory; we aim for
>= 0.97). Then the peak memory of a whole ``lm train`` process
(``lm.bench.memory.run_measured``) on the ``size_mb`` dataset of ``lm bench prepare``
(kept by it in ``work_dir``, else prepared here) against on the Shakespeare shards:
memory should not grow with the dataset (we aim for within 200 MB).

    lm bench train [steps=300] [skip=20] [repeats=5] [model=small]   (conf/bench_train.yaml)
    lm bench train compare=data ['prepare=["size_mb=1000"]'] [shard_tokens=250000]
"""

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hydra
import lightning as L
import torch

from lm.atomic import atomic_file
from lm.bench import BenchPrepareConfig, BenchTrainConfig
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
    """``lm bench train``: print tokens/s of each run, the medians and their ratios
    (``compare=harness``), or the data comparison (``compare=data``: ``bench_data``).

    Raises:
        ValueError: ``skip`` not in [0, steps), ``repeats`` < 1, ``compare`` not harness
            or data, ``shard_tokens`` < 1, or a bad ``prepare`` override (one line).
    """
    if not 0 <= cfg.skip < cfg.steps:
        raise ValueError(f"skip={cfg.skip} is invalid: must be in [0, steps={cfg.steps})")
    if cfg.repeats < 1:
        raise ValueError(f"repeats={cfg.repeats} is invalid: must be an integer >= 1")
    if cfg.compare not in ("harness", "data"):
        raise ValueError(f"compare={cfg.compare} is invalid: must be harness or data")
    overrides = [
        f"model={cfg.model}", f"trainer.max_steps={cfg.steps}",
        f"trainer.val_check_interval={cfg.steps}", "tracking.min_val_points=null",  # once, at the end
        "sample.max_new_tokens=0",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    ]
    if cfg.compare == "data":
        return bench_data(cfg, overrides)
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


def data_settings(cfg: BenchTrainConfig) -> BenchPrepareConfig:
    """``lm bench prepare``'s settings with ``cfg.prepare``'s overrides, checked."""
    from lm.bench.prepare import check_settings
    from lm.config.schema import typed

    if cfg.shard_tokens < 1:
        raise ValueError(f"shard_tokens={cfg.shard_tokens} is invalid: must be an integer >= 1")
    prepare = typed(compose_config(list(cfg.prepare), config_name="bench_prepare"),
                    BenchPrepareConfig)
    check_settings(prepare)
    return prepare


def data_sets(p: BenchPrepareConfig, shard_tokens: int) -> dict[str, Path]:
    """What ``compare=data`` trains on, made once in ``p.work_dir``, all with ``lm bench
    prepare``'s BPE: the corpus prepared in shards of ``shard_tokens`` tokens
    ("prepared"), ``p.size_mb`` of it prepared ("large"), the corpus as one text file
    ("text", for the in-memory path) and the BPE's GPT-2 files ("tokenizer")."""
    from lm.bench.prepare import (
        bench_inputs,
        corpus_file,
        dataset_dir,
        prepared_dataset,
        tokenizer_files,
    )

    work = Path(p.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    text, name = bench_inputs(p)
    tokenizer = tokenizer_files(text, name, work, p.vocab_size, p.tokenizer_sample_mb)
    once, _ = corpus_file(text, name, work, None)
    large, _ = corpus_file(text, name, work, p.size_mb)
    plain = work / f"{name}.txt"
    if not plain.is_file() or plain.read_text(encoding="utf-8") != text:
        with atomic_file(plain) as tmp:
            tmp.write_text(text, encoding="utf-8")
    plan = {"prepared": (once, shard_tokens), "large": (large, p.shard_tokens)}
    sets = {key: prepared_dataset(corpus, tokenizer, dataset_dir(work, corpus, tokenizer, n), n,
                                  p.val_fraction)
            for key, (corpus, n) in plan.items()}
    return {**sets, "text": plain, "tokenizer": tokenizer}


def peak_train_memory(overrides: list[str], data: Path) -> tuple[int | None, int | None]:
    """Peak (RSS, PSS) in bytes, each summed over the process tree, of ``python -m lm
    train`` with ``overrides`` on the prepared dataset ``data``, in a fresh process. PSS
    counts a page shared by k processes 1/k: a child forked for a moment (``git`` for the
    code version) shares all its parent's pages, which a sum of RSS counts twice."""
    from lm.bench.memory import run_measured

    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "lm", "train", *overrides, "data=prepared",
                   f"data.path={data.resolve()}", f"tracking.registry_dir={tmp}",
                   f"hydra.run.dir={tmp}/run"]
        measured = run_measured(command, Path(tmp) / "train.log")
        return measured.peak_rss, measured.peak_pss


def bench_data(cfg: BenchTrainConfig, overrides: list[str]) -> int:
    """``compare=data``: tokens/s of the harness on the prepared dataset (memory-mapped
    nothing: ``TokenStream`` reads) against the in-memory corpus path (the same text and
    BPE through ``data=text_file``'s token cache), alternating; then lm train's peak RSS
    on the large prepared dataset against the small."""
    from lm.data.shards import read_manifest

    sets = data_sets(data_settings(cfg), cfg.shard_tokens)
    shards = len(read_manifest(sets["prepared"])["shards"]["train"])
    work = sets["text"].parent
    variants = {
        "prepared": ["data=prepared", f"data.path={sets['prepared'].resolve()}"],
        "in-memory": ["data=text_file", f"data.path={sets['text'].resolve()}",
                      "data/tokenizer=gpt2_files", f"data.tokenizer.path={sets['tokenizer'].resolve()}",
                      f"paths.data_dir={(work / 'cache').resolve()}"],
    }
    print(f"benchmark: model={cfg.model}, {cfg.steps} steps, timed after step {cfg.skip}, "
          f"{cfg.repeats} alternating repeats, {torch.get_num_threads()} torch threads; "
          f"{sets['prepared']} ({shards} train shards) against {sets['text']} in memory, "
          "the same BPE")
    speed: dict[str, list[float]] = {key: [] for key in variants}
    for i in range(cfg.repeats):
        for key, runs in speed.items():
            runs.append(bench_harness([*overrides, *variants[key]], cfg.skip))
            print(f"  repeat {i + 1}: {key:<9} {runs[-1]:9.0f} tokens/s", flush=True)
    prepared, memory = statistics.median(speed["prepared"]), statistics.median(speed["in-memory"])
    print(f"prepared  (median): {prepared:9.0f} tokens/s")
    print(f"in-memory (median): {memory:9.0f} tokens/s")
    print(f"ratio prepared/in-memory: {prepared / memory:.3f} (target >= 0.97)")
    memory = {key: peak_train_memory(overrides, sets[key]) for key in ("prepared", "large")}
    if None in memory["prepared"]:
        print("peak memory of lm train: n/a (no /proc on this system)")
        return 0
    tokens = {key: sum(shard["tokens"] for shard in read_manifest(sets[key])["shards"]["train"])
              for key in memory}
    print("peak memory of lm train (process tree): "
          + ", ".join(f"{key} ({tokens[key]:,} train tokens) RSS {rss / 1e6:.0f} MB, "
                      f"PSS {pss / 1e6:.0f} MB" for key, (rss, pss) in memory.items())
          + f"; large - prepared: PSS {(memory['large'][1] - memory['prepared'][1]) / 1e6:+.0f} MB"
          " (target within 200 MB)")
    return 0
