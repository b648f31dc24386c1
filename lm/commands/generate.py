"""Sample text from a checkpoint: ``python lm/generate.py ckpt=<path> [key=value ...]``.

Examples:
    python lm/generate.py ckpt=outputs/runs/<date>/<run>/checkpoints/best.ckpt \\
        prompt="ROMEO:" max_new_tokens=300 temperature=0.8 top_k=40 seed=0
    python lm/generate.py ckpt=<ckpt> prompt="ROMEO:" strategy=top_p top_p=0.9 num_samples=3
    python lm/generate.py ckpt=<ckpt> prompt="ROMEO:" strategy=beam beam_width=4 stop="\\n\\n"

Keys (typed; an unknown key or a bad value ends with one line and exit code 2; a value
out of range is an error whatever the strategy, and a key given for a strategy other
than the chosen one is a warning line on stderr):
    ckpt            a .ckpt written by lm/train.py (required)
    prompt          text to continue (default a newline); empty: the model starts from
                    the eos token, which is not printed
    prompt_file     read the prompt from this UTF-8 file instead
    num_samples     independent samples to print, >= 1 (default 1)
    max_new_tokens  tokens to generate per sample, >= 0 (default 500)
    strategy        greedy | sample | top_k | top_p | beam (default top_k):
                      greedy  argmax at every step (temperature, top_k, top_p unused)
                      sample  temperature sampling from the whole distribution
                      top_k   temperature, then only the top_k most likely tokens
                      top_p   temperature, then the nucleus of mass top_p (Holtzman et al. 2020)
                      beam    beam search, beam_width beams, GNMT length penalty; prints one text
    temperature     softmax temperature, a finite number >= 0; 0 = greedy (default 0.8)
    top_k           k >= 1 for strategy=top_k; null = all (default 40)
    top_p           nucleus mass in (0, 1] for strategy=top_p (default 0.9)
    beam_width      beams for strategy=beam, >= 1 (default 4)
    length_penalty  GNMT alpha >= 0 for strategy=beam: score / ((5 + n) / 6)^alpha (default 0.6)
    stop            end each text before this string, in the generated part (default none);
                    written in the shell as typed, with \\n and \\t read as newline and tab
    use_cache       decode with the KV cache; same tokens, faster (default true)
    seed            seeds the sampler: same seed, same text (default 1337)
    device          cpu | cuda (default cpu)

A prompt longer than the model's block_size is cropped from the left (a note on stderr).
With a char tokenizer, prompt characters it has no token for are read as <unk> (a
warning naming them); a prompt with no character it knows is an error.
"""

import sys
from pathlib import Path


from dataclasses import dataclass

import torch
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lm.training.checkpoint import CheckpointError, load_checkpoint
from lm.sampling import beam_search, check_decoding_args, cut_at_stop, generate
from lm.tokenizers.char import CharTokenizer

STRATEGIES = ("greedy", "sample", "top_k", "top_p", "beam")
USED_BY = {  # key -> the strategies that read it; given with another one, it is unused
    "temperature": ("sample", "top_k", "top_p"),
    "top_k": ("top_k",),
    "top_p": ("top_p",),
    "beam_width": ("beam",),
    "length_penalty": ("beam",),
    "num_samples": ("greedy", "sample", "top_k", "top_p"),
}
MAX_LISTED = 10  # unknown prompt characters named in one line


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
    """The prompt: ``cfg.prompt``, or the text of ``cfg.prompt_file`` (ValueError: one line)."""
    if cfg.prompt_file is None:
        return cfg.prompt
    path = Path(cfg.prompt_file)
    if not path.is_file():
        raise ValueError(f"prompt_file={path} does not exist (expected a UTF-8 text file)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"prompt_file={path} is not UTF-8 text ({err.reason} at byte "
                         f"{err.start}); expected a UTF-8 text file") from None
    except OSError as err:
        raise ValueError(f"prompt_file={path} could not be read: {err.strerror}") from None


def check_config(cfg: GenerateConfig) -> None:
    """Raise ``ValueError`` (one line) for a strategy or a numeric value out of range,
    whatever the strategy: a value the chosen strategy does not read is still checked."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy={cfg.strategy!r} must be one of {list(STRATEGIES)}")
    if cfg.num_samples < 1:
        raise ValueError(f"num_samples={cfg.num_samples} is invalid: must be an integer >= 1")
    if not -(2**63) <= cfg.seed < 2**64:
        raise ValueError(f"seed={cfg.seed} is invalid: must be an integer in [-2**63, 2**64)")
    check_decoding_args(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                        cfg.beam_width, cfg.length_penalty)


def given_keys(argv: list[str]) -> set[str]:
    """The keys of ``key=value`` arguments, as typed."""
    return {arg.partition("=")[0] for arg in argv}


def unused_key_warnings(cfg: GenerateConfig, given: set[str]) -> list[str]:
    """One ``warning:`` line per key in ``given`` that ``cfg.strategy`` does not read."""
    return [f"warning: {key}={getattr(cfg, key)} is unused with strategy={cfg.strategy}; "
            f"it is used by strategy={' | '.join(users)}"
            for key, users in USED_BY.items() if key in given and cfg.strategy not in users]


def prompt_ids(prompt: str, tokenizer) -> tuple[list[int], int]:
    """(token ids to condition on, how many leading ids are not the prompt's text).

    An empty prompt is the eos token alone (the model needs a first token); it is
    conditioned on but not printed, so the second value is 1.

    Raises:
        ValueError: a char-tokenizer prompt with no character the tokenizer knows.
    """
    check_prompt_chars(prompt, tokenizer)
    ids = tokenizer.encode(prompt)
    return (ids, 0) if ids else ([tokenizer.eos_id], 1)


def check_prompt_chars(prompt: str, tokenizer) -> None:
    """Warn (one stderr line) about prompt characters a ``CharTokenizer`` has no token for
    (they are read as ``<unk>``); raise ``ValueError`` when it knows none of them."""
    if not isinstance(tokenizer, CharTokenizer):
        return  # byte and BPE tokenizers encode any text
    known = set(tokenizer.chars)
    unknown = list(dict.fromkeys(c for c in prompt if c not in known))  # in order, once each
    if not unknown:
        return
    listed = ", ".join(map(repr, unknown[:MAX_LISTED])) + ", ..." * (len(unknown) > MAX_LISTED)
    if len(unknown) == len(set(prompt)):
        sample = "".join(c for c in tokenizer.chars if c.isprintable())[:40]
        raise ValueError(f"the prompt has no character the tokenizer knows ({listed}); expected "
                         f"characters of its training text, e.g. {sample!r}")
    print(f"warning: the tokenizer has no token for {len(unknown)} prompt character"
          f"{'s' * (len(unknown) > 1)} ({listed}); they are read as <unk>", file=sys.stderr)


def sample_texts(cfg: GenerateConfig) -> list[str]:
    """``num_samples`` continuations of the prompt (prompt included), reproducible from ``seed``.

    ``strategy=beam`` gives one text. With ``stop`` each text ends before the first
    occurrence of the stop string in its generated part. An empty prompt conditions on
    the eos token, which is not part of the text.

    Raises:
        ValueError, CheckpointError: one line (a bad value, prompt or checkpoint).
    """
    check_config(cfg)
    model, tokenizer, _ = load_checkpoint(cfg.ckpt, cfg.device, nonfinite="error")
    ids, skip = prompt_ids(read_prompt(cfg), tokenizer)
    block_size = model.config.block_size
    if len(ids) > block_size:
        print(f"note: the prompt has {len(ids)} tokens; the model sees its last {block_size}",
              file=sys.stderr)
    n = 1 if cfg.strategy == "beam" else cfg.num_samples
    idx = torch.tensor([ids] * n, dtype=torch.long, device=cfg.device)  # (N, T)
    out = decode_ids(model, idx, cfg, stop_decode=tokenizer.decode)  # (N, T + n_new)
    stop = [stop_string(cfg.stop)] if cfg.stop else []
    if not stop:
        return [tokenizer.decode(row[skip:].tolist()) for row in out]
    return [tokenizer.decode(row[skip : len(ids)].tolist())
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
        check_config(cfg)
        for warning in unused_key_warnings(cfg, given_keys(argv)):
            print(warning, file=sys.stderr)
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
