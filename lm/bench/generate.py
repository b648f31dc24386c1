"""Benchmark: greedy generation tokens/s with and without the KV cache.

``model=small`` (conf/model/small.yaml, with GPT-2's gelu_tanh) with random weights and vocab 65 (Shakespeare
characters), one prompt of ``--prompt`` tokens, ``--new`` new tokens, greedy.
Two context lengths: the config's block_size 64, shorter than 256 new tokens, so
once the window is full the cache is rebuilt every step (as costly as no cache);
and block_size 512, where all new tokens fit in the cache. If ``transformers``
is importable, Hugging Face's ``GPT2LMHeadModel.generate`` (do_sample=False,
use_cache=True) on the same weights (exported with ``lm.interop.hf``) is timed for
reference, and its greedy tokens are checked against ours. Each
variant runs once to warm up, then reports the best of ``--repeats`` runs.

    python -m lm.bench.generate [--new 256] [--prompt 16] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lm.model import GPT, GPTConfig
from lm.sampling import generate

VOCAB = 65
SMALL = Path(__file__).resolve().parents[2] / "conf" / "model" / "small.yaml"


def small_config(**overrides) -> GPTConfig:
    """conf/model/small.yaml as a GPTConfig, vocab 65, with ``overrides``."""
    fields = OmegaConf.to_container(OmegaConf.load(SMALL)) | {"vocab_size": VOCAB} | overrides
    return GPTConfig(**fields)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=256, help="new tokens per run")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    prompt = torch.randint(0, VOCAB, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(args.device)  # (1, T)
    print(f"greedy, model=small (4 layers, 4 heads, 128 wide, gelu_tanh), vocab {VOCAB}, "
          f"prompt {args.prompt}, {args.new} new tokens, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for block_size in (64, 512):
        model = build(small_config(block_size=block_size, activation="gelu_tanh"), args.device)
        for use_cache in (False, True):
            rate = best_tokens_per_sec(ours(model, prompt, args.new, use_cache),
                                       args.new, args.repeats)
            cache = "KV cache" if use_cache else "no cache"
            print(f"lm       block_size={block_size:<4} {cache:9} {rate:8.1f} tokens/s")
        run = hugging_face(model, prompt, args.new, args.device)
        if run is None:
            print("hf GPT2LMHeadModel: transformers is not installed")
        elif block_size >= args.prompt + args.new:  # HF has no sliding window past n_positions
            rate = best_tokens_per_sec(run, args.new, args.repeats)
            same = torch.equal(run(), ours(model, prompt, args.new, True)())
            print(f"hf GPT2  block_size={block_size:<4} {'KV cache':9} {rate:8.1f} tokens/s "
                  f"(same weights; same greedy tokens as lm: {same})")

if __name__ == "__main__":
    main()
