"""Model FLOPs utilisation (MFU): the FLOP/s a run's model needs at the throughput it
reached, as a fraction of what the devices could do at their peak.

FLOPs per token follow the PaLM paper (Chowdhery et al. 2022, appendix B) and nanoGPT's
``GPT.estimate_mfu``: 6N for the forward and backward matmuls of N parameters (2N
forward, 4N backward), plus 12 * n_layer * n_head * head_dim * T for attention's
scores and weighted sums over a context of T tokens. Rematerialisation (activation
checkpointing) and frozen weights (LoRA) are not counted apart: MFU is a model's
measure, not the hardware's (that would be HFU).
"""

from pathlib import Path

import torch

from lm.model import GPT, GPTConfig

# Dense bf16 tensor-core peaks in TFLOP/s, by a part of the name CUDA gives the device,
# most specific first (NVIDIA datasheets: A100 312; H100 SXM 989, PCIe 756, NVL 835;
# H200 SXM 989). Sparse peaks (twice these) are not reachable by dense training.
PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
}


def matmul_params(model: GPT) -> int:
    """N of the 6N term: the parameters that take part in matmuls, i.e. all but the
    learned position table and an untied token table (lookups: no FLOPs); tied, the
    token table is also the output layer and counts (``GPT.num_params``, as nanoGPT)."""
    return model.num_params(non_embedding=True)


def flops_per_token(config: GPTConfig, n_matmul_params: int, seq_len: int | None = None) -> float:
    """Forward and backward FLOPs of one token: 6N + 12 * n_layer * n_head * head_dim * T.

    Args:
        config: the model's shape (n_layer, n_head, n_embd, block_size).
        n_matmul_params: N (``matmul_params``).
        seq_len: T, the context trained on (default ``config.block_size``).
    Source: PaLM (Chowdhery et al. 2022), appendix B; nanoGPT ``estimate_mfu``.
    """
    head_dim = config.n_embd // config.n_head
    t = config.block_size if seq_len is None else seq_len
    return 6 * n_matmul_params + 12 * config.n_layer * config.n_head * head_dim * t


def peak_for_name(name: str) -> float | None:
    """The ``PEAK_TFLOPS`` entry whose key is in CUDA device name ``name`` (first match,
    most specific first), or None."""
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def device_peak_tflops(device: torch.device | str, configured: float | None = None) -> float | None:
    """One device's peak TFLOP/s: ``configured`` (``trainer.peak_tflops``) if set; else,
    on CUDA, the bf16 peak of a known GPU; else None (CPU, MPS, an unknown GPU: no MFU).

    Raises:
        ValueError: ``configured`` <= 0.
    """
    if configured is not None:
        if configured <= 0:
            raise ValueError(f"trainer.peak_tflops={configured} is invalid: must be null or > 0")
        return float(configured)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def mfu(tokens_per_sec: float, flops_per_token: float, peak_tflops: float, n_devices: int = 1) -> float:
    """The fraction of ``n_devices`` devices' peak that training at ``tokens_per_sec``
    (all devices together) uses: tokens/s * FLOPs/token / (peak * 1e12 * n_devices)."""
    return tokens_per_sec * flops_per_token / (peak_tflops * 1e12 * n_devices)


def attention_bytes(config: GPTConfig, batch_size: int) -> int:
    """Bytes of the attention weights of one batch if materialised (float32 scores and
    softmax for every layer, kept for the backward): 2 * n_layer * B * n_head * T^2 * 4.
    The fused kernels avoid most of it; a hook on ``hook_scores`` / ``hook_pattern``,
    or a kernel that falls back to the plain path, does not."""
    t = config.block_size
    return 2 * config.n_layer * batch_size * config.n_head * t * t * 4


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory free for a run on ``device``: the CUDA device's free memory, or on the CPU
    Linux's ``MemAvailable``; None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0]
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    found = [int(x.split()[1]) * 1024 for x in lines if x.startswith("MemAvailable:")]
    return found[0] if found else None


def size_report(config: GPTConfig, model: GPT, batch_size: int,
                device: torch.device | str = "cpu") -> tuple[str, str | None]:
    """(one line saying how big a step is: parameters, FLOPs per step, attention memory
    per batch; a warning line when that attention would not fit in ``available_bytes``,
    else None). ``batch_size``: sequences per step on one device."""
    n, n_matmul = model.num_params(non_embedding=False), matmul_params(model)
    tokens = batch_size * config.block_size
    gflop = flops_per_token(config, n_matmul) * tokens / 1e9
    attention = attention_bytes(config, batch_size)
    line = (f"model: {n:,} parameters; a step of {batch_size} x {config.block_size} tokens: "
            f"~{gflop:,.1f} GFLOP, attention weights ~{attention / 2**20:,.0f} MiB if materialised")
    free = available_bytes(device)
    if free is None or attention <= free:
        return line, None
    return line, (f"warning: one batch's attention weights would take ~{attention / 2**30:,.1f} GiB "
                  f"but {free / 2**30:,.1f} GiB is free: a step may take very long or run out of "
                  "memory; lower model.block_size or data.batch_size")
