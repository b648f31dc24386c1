"""Sample text from a checkpoint: ``python lm/generate.py ckpt=<path> [key=value ...]``.

Example:
    python lm/generate.py ckpt=outputs/runs/<date>/<run>/checkpoints/best.ckpt \\
        prompt="ROMEO:" max_new_tokens=300 temperature=0.8 top_k=40 seed=0

Keys (typed; an unknown key or a bad value ends with one line and exit code 2):
    ckpt            a .ckpt written by lm/train.py (required)
    prompt          text to continue (default a newline)
    prompt_file     read the prompt from this UTF-8 file instead
    num_samples     independent samples to print (default 1)
    max_new_tokens  tokens to generate per sample (default 500)
    temperature     softmax temperature, 0 = greedy (default 0.8)
    top_k           sample from the k most likely tokens; null = all (default 40)
    seed            seeds the sampler: same seed, same text (default 1337)
    device          cpu | cuda (default cpu)
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not lm/*.py as top level
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from dataclasses import dataclass

import torch
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lm.checkpoint import CheckpointError, load_checkpoint
from lm.sampling import generate


@dataclass
class GenerateConfig:
    ckpt: str = MISSING
    prompt: str = "\n"
    prompt_file: str | None = None
    num_samples: int = 1
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int | None = 40
    seed: int = 1337
    device: str = "cpu"


TEXT_KEYS = ("ckpt", "prompt", "prompt_file", "device")  # taken verbatim, never parsed as YAML


def parse_args(argv: list[str]) -> GenerateConfig:
    """``key=value`` arguments onto ``GenerateConfig`` (ValueError: one line).

    Text keys keep their value as typed (``prompt=ROMEO:`` is the string "ROMEO:", not
    YAML); the others are parsed like Hydra overrides (``top_k=null``, ``seed=3``).
    """
    text, parsed = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"{arg!r} is not key=value (keys: {', '.join(GenerateConfig.__annotations__)})")
        if key in TEXT_KEYS:
            text[key] = value
        else:
            parsed.append(arg)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(GenerateConfig), OmegaConf.from_dotlist(parsed), text)
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ValueError(f"{key}: " * bool(key) + str(err).splitlines()[0]) from None


def read_prompt(cfg: GenerateConfig) -> str:
    if cfg.prompt_file is None:
        return cfg.prompt
    path = Path(cfg.prompt_file)
    if not path.is_file():
        raise ValueError(f"prompt_file={path} does not exist")
    return path.read_text(encoding="utf-8")


def sample_texts(cfg: GenerateConfig) -> list[str]:
    """``num_samples`` continuations of the prompt (prompt included), reproducible from ``seed``."""
    if cfg.num_samples < 1:
        raise ValueError(f"num_samples={cfg.num_samples} must be >= 1")
    model, tokenizer, _ = load_checkpoint(cfg.ckpt, cfg.device)
    ids = tokenizer.encode(read_prompt(cfg)) or [tokenizer.eos_id]
    block_size = model.config.block_size
    if len(ids) > block_size:
        print(f"note: the prompt has {len(ids)} tokens; the model sees its last {block_size}",
              file=sys.stderr)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=cfg.device)  # (N, T)
    out = generate(model, idx, cfg.max_new_tokens, temperature=cfg.temperature,
                   top_k=cfg.top_k, generator=generator)  # (N, T + max_new_tokens)
    return [tokenizer.decode(row.tolist()) for row in out]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_args(argv)
        if cfg.ckpt == MISSING or not cfg.ckpt:
            raise ValueError("ckpt=<path to a .ckpt> is required")
        texts = sample_texts(cfg)
    except (ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
