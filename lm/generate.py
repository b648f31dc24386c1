"""Sample text from a checkpoint: ``python lm/generate.py ckpt=<path> [key=value ...]``.

Examples:
    python lm/generate.py ckpt=outputs/runs/<date>/<run>/checkpoints/best.ckpt \\
        prompt="ROMEO:" max_new_tokens=300 temperature=0.8 top_k=40 seed=0
    python lm/generate.py ckpt=<ckpt> prompt="ROMEO:" strategy=top_p top_p=0.9 num_samples=3
    python lm/generate.py ckpt=<ckpt> prompt="ROMEO:" strategy=beam beam_width=4 stop="\\n\\n"

Keys (typed; an unknown key or a bad value ends with one line and exit code 2):
    ckpt            a .ckpt written by lm/train.py (required)
    prompt          text to continue (default a newline)
    prompt_file     read the prompt from this UTF-8 file instead
    num_samples     independent samples to print (default 1)
    max_new_tokens  tokens to generate per sample (default 500)
    strategy        greedy | sample | top_k | top_p | beam (default top_k):
                      greedy  argmax at every step (temperature, top_k, top_p unused)
                      sample  temperature sampling from the whole distribution
                      top_k   temperature, then only the top_k most likely tokens
                      top_p   temperature, then the nucleus of mass top_p (Holtzman et al. 2020)
                      beam    beam search, beam_width beams, GNMT length penalty; prints one text
    temperature     softmax temperature, 0 = greedy (default 0.8)
    top_k           k for strategy=top_k; null = all (default 40)
    top_p           nucleus mass in (0, 1] for strategy=top_p (default 0.9)
    beam_width      beams for strategy=beam (default 4)
    length_penalty  GNMT alpha >= 0 for strategy=beam: score / ((5 + n) / 6)^alpha (default 0.6)
    stop            end each text before this string, in the generated part (default none);
                    written in the shell as typed, with \\n and \\t read as newline and tab
    use_cache       decode with the KV cache; same tokens, faster (default true)
    seed            seeds the sampler: same seed, same text (default 1337)
    device          cpu | cuda (default cpu)

A prompt longer than the model's block_size is cropped from the left (a note on stderr).
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
from lm.sampling import beam_search, cut_at_stop, generate

STRATEGIES = ("greedy", "sample", "top_k", "top_p", "beam")


@dataclass
class GenerateConfig:
    ckpt: str = MISSING
    prompt: str = "\n"
    prompt_file: str | None = None
    num_samples: int = 1
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int | None = 40
    strategy: str = "top_k"
    top_p: float = 0.9
    beam_width: int = 4
    length_penalty: float = 0.6
    stop: str | None = None
    use_cache: bool = True
    seed: int = 1337
    device: str = "cpu"


TEXT_KEYS = ("ckpt", "prompt", "prompt_file", "device", "strategy", "stop")  # taken verbatim, never parsed as YAML


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
    """``num_samples`` continuations of the prompt (prompt included), reproducible from ``seed``.

    ``strategy=beam`` gives one text. With ``stop`` each text ends before the first
    occurrence of the stop string in its generated part.
    """
    if cfg.num_samples < 1:
        raise ValueError(f"num_samples={cfg.num_samples} must be >= 1")
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy={cfg.strategy!r} must be one of {list(STRATEGIES)}")
    model, tokenizer, _ = load_checkpoint(cfg.ckpt, cfg.device)
    ids = tokenizer.encode(read_prompt(cfg)) or [tokenizer.eos_id]
    block_size = model.config.block_size
    if len(ids) > block_size:
        print(f"note: the prompt has {len(ids)} tokens; the model sees its last {block_size}",
              file=sys.stderr)
    n = 1 if cfg.strategy == "beam" else cfg.num_samples
    idx = torch.tensor([ids] * n, dtype=torch.long, device=cfg.device)  # (N, T)
    out = decode_ids(model, idx, cfg, stop_decode=tokenizer.decode)  # (N, T + n_new)
    stop = [stop_string(cfg.stop)] if cfg.stop else []
    if not stop:
        return [tokenizer.decode(row.tolist()) for row in out]
    return [tokenizer.decode(row[: len(ids)].tolist())
            + cut_at_stop(tokenizer.decode(row[len(ids) :].tolist()), stop)[0] for row in out]


def stop_string(text: str) -> str:
    """The stop key as typed, with the escapes ``\\n`` and ``\\t`` read as newline and tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def decode_ids(model, idx: torch.Tensor, cfg: GenerateConfig, stop_decode) -> torch.Tensor:
    """Run ``cfg.strategy`` on prompts idx (N, T) -> (N, T + n) token ids."""
    if cfg.strategy == "beam":
        return beam_search(model, idx, cfg.max_new_tokens, cfg.beam_width,
                           length_penalty=cfg.length_penalty, use_cache=cfg.use_cache)
    temperature = 0.0 if cfg.strategy == "greedy" else cfg.temperature
    top_k = cfg.top_k if cfg.strategy == "top_k" else None
    top_p = cfg.top_p if cfg.strategy == "top_p" else None
    stop = [stop_string(cfg.stop)] if cfg.stop else None
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    return generate(model, idx, cfg.max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, generator=generator, use_cache=cfg.use_cache,
                    stop_strings=stop, decode=stop_decode)


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
