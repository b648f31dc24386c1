"""Benchmark: greedy generation tokens/s with and without the KV cache.

``model=small`` (conf/model/small.yaml, with GPT-2's gelu_tanh) with random weights and vocab 65 (Shakespeare
characters), one prompt of ``prompt_tokens`` tokens, ``new_tokens`` new tokens, greedy.
Two context lengths: the config's block_size 64, shorter than 256 new tokens, so
once the window is full the cache is rebuilt every step (as costly as no cache);
and block_size 512, where all new tokens fit in the cache. If ``transformers``
is importable, Hugging Face's ``GPT2LMHeadModel.generate`` (do_sample=False,
use_cache=True) on the same weights (exported with ``lm.interop.hf``) is timed for
reference, and its greedy tokens are checked against ours. Each
variant runs once to warm up, then reports the best of ``repeats`` runs.

    lm bench generate [new_tokens=256] [prompt_tokens=16] [repeats=3] [device=cpu]
    (conf/bench_generate.yaml)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

import torch
from omegaconf import OmegaConf

from lm.bench import BenchGenerateConfig
from lm.config.compose import compose_config
from lm.model import GPT, GPTConfig
from lm.sampling import generate

VOCAB = 65


def small_config(**overrides) -> GPTConfig:
    """``model=small`` (composed as ``lm train`` composes it) as a GPTConfig, vocab 65,
    with ``overrides``."""
    cfg = compose_config(["model=small", f"paths.output_dir={tempfile.gettempdir()}"])
    return GPTConfig(**OmegaConf.to_container(cfg.model) | {"vocab_size": VOCAB} | overrides)


def best_tokens_per_sec(run: Callable[[], torch.Tensor], n_new: int, repeats: int) -> float:
    """New tokens per second of the fastest of ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        if out.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return n_new / min(times)


def build(config: GPTConfig, device: str) -> GPT:
    """Our model, seeded, in eval mode."""
    torch.manual_seed(0)
    return GPT(config).to(device).eval()


def ours(model: GPT, prompt: torch.Tensor, n_new: int, use_cache: bool):
    return lambda: generate(model, prompt, n_new, temperature=0, use_cache=use_cache)


def hugging_face(model: GPT, prompt: torch.Tensor, n_new: int, device: str):
    """``GPT2LMHeadModel.generate`` on our model's weights (exported with ``lm.interop.hf``),
    or None without ``transformers``."""
    try:
        import transformers
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None
    transformers.utils.logging.disable_progress_bar()
    from lm.interop.hf import export_hf_gpt2

    with tempfile.TemporaryDirectory() as directory:
        export_hf_gpt2(model, directory)
        hf = GPT2LMHeadModel.from_pretrained(directory).to(device).eval()
    mask = torch.ones_like(prompt)

    def run():
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=mask, max_new_tokens=n_new,
                               do_sample=False, use_cache=True, pad_token_id=0,
                               eos_token_id=None)  # no eos: all n_new tokens

    return run



def bench_generate(cfg: BenchGenerateConfig) -> int:
    """``lm bench generate``: print greedy tokens/s per context length, with and without
    the KV cache (and Hugging Face's, when ``transformers`` is installed).

    Raises:
        ValueError: a count below 1 (one line).
    """
    for key in ("new_tokens", "prompt_tokens", "repeats"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} is invalid: must be an integer >= 1")
    n_new, n_prompt = cfg.new_tokens, cfg.prompt_tokens
    prompt = torch.randint(0, VOCAB, (1, n_prompt), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(cfg.device)  # (1, T)
    print(f"greedy, model=small (4 layers, 4 heads, 128 wide, gelu_tanh), vocab {VOCAB}, "
          f"prompt {n_prompt}, {n_new} new tokens, device {cfg.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for block_size in (64, 512):
        model = build(small_config(block_size=block_size, activation="gelu_tanh"), cfg.device)
        for use_cache in (False, True):
            rate = best_tokens_per_sec(ours(model, prompt, n_new, use_cache), n_new, cfg.repeats)
            cache = "KV cache" if use_cache else "no cache"
            print(f"lm       block_size={block_size:<4} {cache:9} {rate:8.1f} tokens/s")
        run = hugging_face(model, prompt, n_new, cfg.device)
        if run is None:
            print("hf GPT2LMHeadModel: transformers is not installed")
        elif block_size >= n_prompt + n_new:  # HF has no sliding window past n_positions
            rate = best_tokens_per_sec(run, n_new, cfg.repeats)
            same = torch.equal(run(), ours(model, prompt, n_new, True)())
            print(f"hf GPT2  block_size={block_size:<4} {'KV cache':9} {rate:8.1f} tokens/s "
                  f"(same weights; same greedy tokens as lm: {same})")
    return 0
