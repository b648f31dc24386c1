"""Benchmark: training throughput and MFU of GPT shapes on a GPU, bf16 and compiled.

Trains each of ``models`` (conf/model options: by default ``medium``, nanoGPT's
shakespeare_char GPU recipe, and ``gpt2``, GPT-2 124M at block_size 1024) on random
tokens of the right shape, the way ``trainer=gpu`` does: ``torch.compile``, bf16
autocast, fused AdamW (nanoGPT's lr, betas, weight decay), gradient clipping at 1.0.
Times steps ``skip`` to ``steps`` (compilation happens before), with the device
synchronised at both ends, and prints tokens/s, achieved TFLOP/s and MFU against the
device's peak (``lm/training/mfu.py``). Models alternate when ``repeats`` > 1.

    lm bench gpu                                   (conf/bench_gpu.yaml)
    lm bench gpu models=[gpt2] batch_size.gpt2=32 steps=100
    lm bench gpu device=cpu models=[tiny] steps=3 skip=1 precision=32 compile=false   # a check
"""

import statistics
import time

import torch

from lm.bench import BenchGpuConfig
from lm.config.compose import compose_config
from lm.config.validate import validate
from lm.model import GPT, GPTConfig
from lm.training.mfu import device_peak_tflops, flops_per_token, matmul_params, mfu
from lm.training.module import param_groups


def model_config(name: str, vocab_size: int) -> GPTConfig:
    """The ``conf/model/<name>.yaml`` network with ``vocab_size`` tokens (no dropout:
    throughput, not generalisation)."""
    cfg = compose_config([f"model={name}", "paths.output_dir=."])
    config = validate(cfg).model_config
    config.vocab_size, config.dropout = vocab_size, 0.0
    return config


def steps_per_second(model: GPT, optimizer: torch.optim.Optimizer, batch: int, steps: int,
                     skip: int, device: torch.device, dtype: torch.dtype | None) -> float:
    """Optimizer steps per second over steps (skip, steps] on random (batch, block_size)
    tokens, drawn on the device once per step (data loading is not what is measured)."""
    config = model.config
    generator = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    start = None
    for step in range(steps):
        if step == skip:
            synchronize(device)
            start = time.perf_counter()
        idx = torch.randint(config.vocab_size, (batch, config.block_size + 1), device=device,
                            generator=generator)  # (B, T + 1)
        with autocast:
            _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return (steps - skip) / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name: str, cfg: BenchGpuConfig, device: torch.device) -> dict:
    """Train ``model=name`` for ``cfg.steps`` steps; its shape, tokens/s, FLOPs per token
    and the device's peak TFLOP/s (None if unknown)."""
    config = model_config(name, cfg.vocab_size.get(name, 50304))
    torch.manual_seed(0)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    if cfg.compile:
        model.compile()
    batch = cfg.batch_size.get(name, 8)
    dtype = {"bf16": torch.bfloat16, "32": None}[str(cfg.precision)]
    tokens_per_sec = batch * config.block_size * steps_per_second(
        model, optimizer, batch, cfg.steps, cfg.skip, device, dtype)
    return {"model": name, "params_m": matmul_params(model) / 1e6, "batch": batch,
            "block_size": config.block_size, "tokens_per_sec": tokens_per_sec,
            "flops_per_token": flops_per_token(config, matmul_params(model)),
            "peak": device_peak_tflops(device, cfg.peak_tflops)}


def bench_gpu(cfg: BenchGpuConfig) -> int:
    """``lm bench gpu``: print tokens/s, TFLOP/s and MFU of each model.

    Raises:
        ValueError: no CUDA device for ``device=cuda``, a bad count or precision (one line).
    """
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("lm bench gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "device=cpu runs it on the CPU for a check")
    if not 0 <= cfg.skip < cfg.steps:
        raise ValueError(f"skip={cfg.skip} is invalid: must be in [0, steps={cfg.steps})")
    if cfg.repeats < 1:
        raise ValueError(f"repeats={cfg.repeats} is invalid: must be an integer >= 1")
    if str(cfg.precision) not in ("bf16", "32"):
        raise ValueError(f"precision={cfg.precision} is invalid: must be bf16 or 32")
    device = torch.device(cfg.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"benchmark: {name}, precision {cfg.precision}, compile {cfg.compile}, "
          f"{cfg.steps} steps timed after step {cfg.skip}, {cfg.repeats} repeat(s)", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in cfg.models}
    for _ in range(cfg.repeats):
        for model in cfg.models:  # alternating
            results[model].append(bench_model(model, cfg, device))
            print_row(results[model][-1])
    if cfg.repeats > 1:
        print("median of the repeats:")
        for runs in results.values():
            print_row(dict(runs[0], tokens_per_sec=statistics.median(r["tokens_per_sec"] for r in runs)))
    return 0


def print_row(r: dict, prefix: str = "") -> None:
    """One model's line: shape, tokens/s, TFLOP/s, MFU and the peak it is measured against."""
    tflops = r["tokens_per_sec"] * r["flops_per_token"] / 1e12
    mfu_text = (f"MFU {100 * mfu(r['tokens_per_sec'], r['flops_per_token'], r['peak']):5.1f}% "
                f"of {r['peak']:.0f} TFLOP/s" if r["peak"] is not None
                else "MFU n/a: unknown peak; pass peak_tflops=<TFLOP/s of one device>")
    print(f"{prefix}{r['model']:<8} {r['params_m']:7.1f}M params  batch {r['batch']}x{r['block_size']}"
          f"  {r['tokens_per_sec']:12,.0f} tokens/s  {tflops:8.2f} TFLOP/s  {mfu_text}", flush=True)
