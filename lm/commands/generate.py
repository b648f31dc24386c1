"""Sample text from a checkpoint: ``lm generate ckpt=<path> [key=value ...]``.

Examples:
    lm generate ckpt=outputs/runs/<date>/<run>/checkpoints/best.ckpt \\
        prompt="ROMEO:" max_new_tokens=300 temperature=0.8 top_k=40 seed=0
    lm generate ckpt=<ckpt> prompt="ROMEO:" strategy=top_p top_p=0.9 num_samples=3
    lm generate ckpt=<ckpt> prompt="ROMEO:" strategy=beam beam_width=4 stop="\\n\\n"
    lm generate ckpt=<ckpt> prompt="ROMEO:" strategy=greedy backend=numpy

The keys, their defaults and ranges are in ``conf/generate.yaml`` (``lm generate
--help`` lists them). ``prompt`` and ``stop`` are free text, taken as typed. A value
out of range is an error whatever the strategy (one line, exit code 2); a key given
for a strategy other than the chosen one is a warning line on stderr.

A prompt longer than the model's block_size is cropped from the left (a note on stderr).
With a char tokenizer, prompt characters it has no token for are read as <unk> (a
warning naming them); a prompt with no character it knows is an error.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lm.checkpoint import load_checkpoint
from lm.sampling import beam_search, check_decoding_args, cut_at_stop, generate, prompt_ids
from lm.tokenizers import CharTokenizer, Tokenizer

STRATEGIES = ("greedy", "sample", "top_k", "top_p", "beam")
BACKENDS = ("torch", "numpy")
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
    """The settings of ``lm generate``: their types. Defaults, meaning and ranges:
    ``conf/generate.yaml``; compose one with ``lm.cli.settings("generate", ...)``."""

    ckpt: str
    prompt: str
    prompt_file: str | None
    num_samples: int
    max_new_tokens: int
    strategy: str
    temperature: float
    top_k: int | None
    top_p: float
    beam_width: int
    length_penalty: float
    stop: str | None
    use_cache: bool
    seed: int
    device: str
    backend: str


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
    """Raise ``ValueError`` (one line) for a strategy, a backend or a numeric value out of
    range, whatever the strategy: a value the chosen strategy does not read is still checked."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy={cfg.strategy!r} must be one of {list(STRATEGIES)}")
    if cfg.backend not in BACKENDS:
        raise ValueError(f"backend={cfg.backend!r} must be one of {list(BACKENDS)}")
    if cfg.backend == "numpy" and cfg.strategy != "greedy":
        raise ValueError(f"backend=numpy is invalid with strategy={cfg.strategy}: the NumPy "
                         "reference decodes greedily only (add strategy=greedy)")
    if cfg.num_samples < 1:
        raise ValueError(f"num_samples={cfg.num_samples} is invalid: must be an integer >= 1")
    if not -(2**63) <= cfg.seed < 2**64:
        raise ValueError(f"seed={cfg.seed} is invalid: must be an integer in [-2**63, 2**64)")
    check_decoding_args(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                        cfg.beam_width, cfg.length_penalty)


def unused_key_warnings(cfg: GenerateConfig, given: set[str]) -> list[str]:
    """One ``warning:`` line per key in ``given`` that ``cfg.strategy`` does not read."""
    return [f"warning: {key}={getattr(cfg, key)} is unused with strategy={cfg.strategy}; "
            f"it is used by strategy={' | '.join(users)}"
            for key, users in USED_BY.items() if key in given and cfg.strategy not in users]


def check_prompt_chars(prompt: str, tokenizer: Tokenizer) -> None:
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
    prompt = read_prompt(cfg)
    check_prompt_chars(prompt, tokenizer)
    ids = prompt_ids(prompt, tokenizer)
    skip = 0 if prompt else len(ids)  # the eos an empty prompt starts from is not printed
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
    """Run ``cfg.strategy`` on ``cfg.backend`` for prompts idx (N, T) -> (N, T + n) token ids."""
    if cfg.backend == "numpy":
        from lm.adapters.lora import merge_lora
        from lm.reference.numpy_gpt import generate_greedy, numpy_state_dict

        merge_lora(model)  # an adapter checkpoint's LoRA layers: plain weights for NumPy
        out = generate_greedy(idx.cpu().numpy(), numpy_state_dict(model), model.config,
                              cfg.max_new_tokens)  # (N, T + n)
        return torch.from_numpy(out)
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


def given_keys() -> set[str]:
    """The keys set on the command line of this Hydra job (none outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.lstrip("+~").partition("=")[0] for o in HydraConfig.get().overrides.task}


def generate_command(cfg: GenerateConfig) -> int:
    """``lm generate``: print the samples (``--- sample i ---`` between several).

    Raises:
        ValueError: one line (a bad value, prompt or checkpoint).
    """
    check_config(cfg)
    for warning in unused_key_warnings(cfg, given_keys()):
        print(warning, file=sys.stderr)
    texts = sample_texts(cfg)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0
