"""MFU: FLOPs per token against hand arithmetic (PaLM appendix B, nanoGPT estimate_mfu),
device peaks, the wallclock/mfu scalar of a run, and ``lm bench gpu`` (checked on the CPU)."""

import pytest
import torch

from lm.cli import main as lm
from lm.model import GPT, GPTConfig
from lm.training.mfu import device_peak_tflops, flops_per_token, matmul_params, mfu, peak_for_name
from tests.conftest import curves


def test_matmul_params_leave_out_lookup_tables():
    # n_layer 2, n_embd 8, vocab 11, block 5, bias: per block 2 LayerNorms (2*16) +
    # c_attn (8*24+24) + attn c_proj (8*8+8) + c_fc (8*32+32) + mlp c_proj (32*8+8) = 864.
    per_block = 2 * 16 + (8 * 24 + 24) + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8)
    blocks_and_final_norm = 2 * per_block + 16
    shape = {"n_layer": 2, "n_head": 2, "n_embd": 8, "block_size": 5, "vocab_size": 11}
    tied = GPT(GPTConfig(**shape))  # wte is also the output layer: counted; wpe: a lookup
    assert matmul_params(tied) == blocks_and_final_norm + 11 * 8
    untied = GPT(GPTConfig(**shape, tie_weights=False))  # lm_head counted, wte a lookup
    assert matmul_params(untied) == blocks_and_final_norm + 11 * 8
    assert sum(p.numel() for p in untied.parameters()) == blocks_and_final_norm + 2 * 11 * 8 + 5 * 8
    rope = GPT(GPTConfig(**shape, pos_encoding="rope"))  # no position table at all
    assert matmul_params(rope) == blocks_and_final_norm + 11 * 8


def test_flops_per_token_is_6n_plus_attention():
    config = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=5, vocab_size=11)
    assert flops_per_token(config, 1000) == 6 * 1000 + 12 * 2 * 2 * 4 * 5  # 6N + 12 L H Q T
    assert flops_per_token(config, 1000, seq_len=3) == 6 * 1000 + 12 * 2 * 2 * 4 * 3


def test_gpt2_shape_as_nanogpt_estimates_it():
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257,
                       activation="gelu_tanh")
    with torch.device("meta"):  # shapes only: no memory, no init time
        n = matmul_params(GPT(config))
    # nanoGPT: 85.0M in the blocks + 38.6M tied wte (124.4M - 0.8M wpe), by hand:
    per_block = 2 * 2 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768)
    assert n == 12 * per_block + 2 * 768 + 50257 * 768 == 124_439_808 - 1024 * 768
    assert flops_per_token(config, n) == 6 * n + 12 * 12 * 12 * 64 * 1024
    # nanoGPT's A100 example: 6N+attn per token, 312 TFLOP/s peak.
    assert mfu(100_000, flops_per_token(config, n), 312) == pytest.approx(
        100_000 * (6 * n + 12 * 12 * 12 * 64 * 1024) / 312e12)


def test_mfu_divides_by_every_device():
    assert mfu(2e5, 1e9, 100) == pytest.approx(2e5 * 1e9 / 100e12)
    assert mfu(2e5, 1e9, 100, n_devices=4) == pytest.approx(2e5 * 1e9 / 400e12)


def test_device_peaks():
    assert peak_for_name("NVIDIA H100 80GB HBM3") == 989
    assert peak_for_name("NVIDIA H100 PCIe") == 756
    assert peak_for_name("NVIDIA H200") == 989
    assert peak_for_name("NVIDIA A100-SXM4-80GB") == 312
    assert peak_for_name("NVIDIA GeForce RTX 4090") is None
    assert device_peak_tflops("cpu") is None
    assert device_peak_tflops("cpu", 2.5) == 2.5
    with pytest.raises(ValueError, match=r"trainer.peak_tflops=0 is invalid: must be null or > 0"):
        device_peak_tflops("cpu", 0)


def test_a_run_logs_mfu_against_the_configured_peak(make_cfg, tmp_path):
    from lm.training.run import run

    record = run(make_cfg("trainer.peak_tflops=0.5", "logger=tensorboard"))
    ckpt = torch.load(record["checkpoints"]["last"], weights_only=False)
    config = GPTConfig(**ckpt["model_config"])
    per_token = flops_per_token(config, matmul_params(GPT(config)))
    logged = curves(tmp_path / "run", tags=("wallclock/mfu", "wallclock/tokens_per_sec"))
    assert sorted(logged["wallclock/mfu"]) == sorted(logged["wallclock/tokens_per_sec"]) == [1, 2, 3, 4, 5]
    for step, value in logged["wallclock/mfu"].items():
        expected = logged["wallclock/tokens_per_sec"][step] * per_token / 0.5e12
        assert value == pytest.approx(expected, rel=1e-5)


def test_bench_gpu_runs_on_the_cpu_as_a_check_and_needs_cuda_otherwise(capsys):
    code = lm(["bench", "gpu", "device=cpu", "models=[tiny]", "steps=3", "skip=1", "precision=32",
               "compile=false", "peak_tflops=1"])
    out = capsys.readouterr().out
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("tiny"))
    tokens_per_sec = float(line.split("tokens/s")[0].split()[-1].replace(",", ""))
    mfu_percent = float(line.split("MFU")[1].split("%")[0])
    per_token = flops_per_token(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=65),
                                matmul_params(GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64,
                                                            block_size=64, vocab_size=65))))
    assert mfu_percent == pytest.approx(100 * tokens_per_sec * per_token / 1e12, abs=0.06)
    if not torch.cuda.is_available():
        assert lm(["bench", "gpu"]) == 2
        assert capsys.readouterr().err.strip() == (
            "error: lm bench gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
            "device=cpu runs it on the CPU for a check")


def test_size_report_warns_when_attention_would_not_fit(monkeypatch):
    from lm.training import mfu as mfu_module

    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=65)
    model = GPT(config)
    # by hand: 2 (scores, softmax) * 2 layers * 3 sequences * 4 heads * 64^2 * 4 bytes
    assert mfu_module.attention_bytes(config, 3) == 2 * 2 * 3 * 4 * 64 * 64 * 4
    monkeypatch.setattr(mfu_module, "available_bytes", lambda device="cpu": 10**12)
    line, warning = mfu_module.size_report(config, model, 3)
    assert line.startswith(f"model: {model.num_params(non_embedding=False):,} parameters; a step of 3 x 64")
    assert warning is None
    monkeypatch.setattr(mfu_module, "available_bytes", lambda device="cpu": 1000)
    _, warning = mfu_module.size_report(config, model, 3)
    assert warning.startswith("warning: one batch's attention weights") and "model.block_size" in warning
