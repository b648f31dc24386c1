"""Hugging Face GPT-2 directories <-> our ``GPT``: import, export, fine-tune init.

A Hugging Face GPT-2 directory holds ``config.json``, the weights
(``model.safetensors`` or ``pytorch_model.bin``) and, optionally, the tokenizer
(``vocab.json`` + ``merges.txt``). An export also writes ``lm_tokenizer.json``, our
tokenizer's ``to_dict()`` (as a checkpoint stores it): GPT-2's files hold only a
byte-level BPE, so without it a char or byte model could not come back; an import
prefers it. This module reads and writes the files; ``lm/interop/mapping.py`` maps
GPT-2's config and weights to ours and back, and ``lm convert``
(``lm/commands/convert.py``) is the command line.

Export refuses, in one line, a model GPT-2 cannot compute; an import is a GPT-2. So
export then import gives back the same weights, config and tokenizer for a model at
GPT-2's options (an lm default model). A damaged file is one ``ValueError`` line naming
it and what it should hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lm.errors import first_line
from lm.interop.mapping import (
    gpt_config_from_hf,
    hf_config_from_gpt,
    hf_state_dict,
    load_state,
    state_dict_from_hf,
)
from lm.model import GPT
from lm.tokenizers import BPETokenizer, Tokenizer, tokenizer_from_dict
from lm.tokenizers.gpt2_files import FileContentError, read_json_object

# what each file of a GPT-2 directory holds, for the error lines (the tokenizer's:
# lm/tokenizers/gpt2_files.py)
CONFIG_HOLDS = "a GPT-2 config object (config.json of GPT2LMHeadModel)"
LM_TOKENIZER_HOLDS = "an lm tokenizer object (written by lm convert direction=export)"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LM_TOKENIZER_FILE = "lm_tokenizer.json"  # our tokenizer's to_dict(), beside GPT-2's files
HF_TOKENIZER_FILES = ("vocab.json", "merges.txt")


# --- reading a Hugging Face directory -------------------------------------------------


def read_hf_config(directory: Path) -> dict:
    """``config.json`` of ``directory`` as a dict.

    Raises:
        ValueError: one line: the directory or its config.json is missing, or
            config.json is empty, not UTF-8, not JSON or not a JSON object.
    """
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory (expected a Hugging Face GPT-2 dir)")
    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist (a Hugging Face GPT-2 dir needs config.json)")
    return read_json_object(path, CONFIG_HOLDS)


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The raw tensors of ``model.safetensors`` (preferred) or ``pytorch_model.bin``.

    Raises:
        ValueError: neither file is there, or it cannot be read, or it holds something
            other than parameter name -> tensor.
    """
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                weights = load_file(path)
            else:
                weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any read failure means the same to a user
            raise ValueError(f"{path} could not be read: {first_line(err)}") from None
        check_state_dict(weights, path)
        return weights
    raise ValueError(f"{directory} has no weights (expected one of {', '.join(WEIGHT_FILES)})")


def check_state_dict(weights: object, path: Path) -> None:
    """Raise unless ``weights`` maps parameter names to tensors.

    Raises:
        FileContentError: one line naming ``path`` and the first entry that is not a tensor.
    """
    if not isinstance(weights, dict):
        raise FileContentError(f"{path} holds a {type(weights).__name__}, not a state dict "
                               "(parameter name -> tensor)")
    for key, value in weights.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise FileContentError(f"{path} entry {key!r} is not a tensor (it is "
                                   f"{type(value).__name__}; a state dict maps names to tensors)")


def read_lm_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer whose ``to_dict()`` ``path`` holds as JSON (``lm_tokenizer.json``).

    Raises:
        ValueError: one line naming ``path``: empty, not UTF-8, not a JSON object
            (``read_json_object``), or not a tokenizer we can rebuild.
    """
    tokenizer = read_json_object(path, LM_TOKENIZER_HOLDS)
    try:
        return tokenizer_from_dict(tokenizer)
    except KeyError as err:
        raise ValueError(f"{path} is not an lm tokenizer: it has no key {err}") from None
    except (ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{path} is not an lm tokenizer: {first_line(err)}") from None


def tokenizer_source(directory: Path) -> str | None:
    """The tokenizer file(s) of a GPT-2 directory that ``load_hf_tokenizer`` reads:
    ``lm_tokenizer.json`` when present, else ``vocab.json + merges.txt``, else None."""
    if (directory / LM_TOKENIZER_FILE).is_file():
        return LM_TOKENIZER_FILE
    if all((directory / name).is_file() for name in HF_TOKENIZER_FILES):
        return " + ".join(HF_TOKENIZER_FILES)
    return None


def load_hf_tokenizer(directory: Path) -> Tokenizer | None:
    """The tokenizer of a GPT-2 directory: ``lm_tokenizer.json`` when present (any of our
    tokenizers, exactly as exported), else GPT-2's BPE from ``vocab.json`` + ``merges.txt``,
    else None (``tokenizer_source``).

    Raises:
        ValueError: one line: a file that cannot be read, or an ``lm_tokenizer.json`` BPE
            whose merges or specials differ from ``vocab.json`` + ``merges.txt`` beside it
            (one of them was replaced after the export).
    """
    source = tokenizer_source(directory)
    has_hf = all((directory / name).is_file() for name in HF_TOKENIZER_FILES)
    hf = BPETokenizer.load_gpt2(directory) if has_hf else None
    if source != LM_TOKENIZER_FILE:
        return hf
    ours = read_lm_tokenizer(directory / LM_TOKENIZER_FILE)
    if isinstance(ours, BPETokenizer) and hf is not None and _without_pattern(ours) != _without_pattern(hf):
        raise ValueError(f"{directory / LM_TOKENIZER_FILE} and {' + '.join(HF_TOKENIZER_FILES)} "
                         "hold different tokenizers: delete the stale one")
    return ours


def _without_pattern(tokenizer: BPETokenizer) -> dict:
    """``to_dict()`` less the split pattern, which GPT-2's files do not store."""
    return {k: v for k, v in tokenizer.to_dict().items() if k != "pattern"}


def load_hf_gpt2(directory: str | Path) -> tuple[GPT, Tokenizer | None]:
    """Our ``GPT`` (eval mode, float32) and tokenizer from a Hugging Face GPT-2 directory.

    Args:
        directory: holds ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
            and optionally the tokenizer: ``lm_tokenizer.json`` (preferred) or
            ``vocab.json`` + ``merges.txt`` (``load_hf_tokenizer``).

    Returns:
        (model, tokenizer); tokenizer is None without tokenizer files.

    Raises:
        ValueError: one line: a missing directory or file, a config our model does not
            implement, weights that do not fit the config, a tokenizer file that cannot
            be read, or a tokenizer with more ids than the model's vocab_size.
    """
    directory = Path(directory)
    config = gpt_config_from_hf(read_hf_config(directory))
    state = state_dict_from_hf(read_hf_weights(directory), config.tie_weights)
    model = GPT(config)
    load_state(model, {k: v.float() for k, v in state.items()}, directory)
    tokenizer = load_hf_tokenizer(directory)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{directory}: its tokenizer has {tokenizer.vocab_size} tokens but "
                         f"config.json vocab_size={config.vocab_size}")
    return model.eval(), tokenizer


def init_from_hf(module_or_model: nn.Module, directory: str | Path) -> GPT:
    """Copy a Hugging Face GPT-2 directory's weights into an existing ``GPT`` (for
    fine-tuning: ``init_from=<dir>``); returns that GPT.

    ``module_or_model`` is a ``GPT`` or anything with a ``.model`` GPT (``LMModule``).

    Raises:
        ValueError: the directory cannot be read, an option of the two configs differs
            (activation, epsilon, tying, positions, biases, norm, norm position, MLP, QK-norm,
            soft-capping),
            or a weight's shape differs (named, with both shapes).
    """
    model = getattr(module_or_model, "model", module_or_model)
    if not isinstance(model, GPT):
        raise TypeError(f"init_from_hf needs a GPT or a module with .model, got {type(model).__name__}")
    directory = Path(directory)
    hf_config = gpt_config_from_hf(read_hf_config(directory))
    for key in ("activation", "layer_norm_epsilon", "tie_weights", "pos_encoding", "bias",
                "norm", "norm_position", "mlp", "qk_norm", "logit_softcap"):
        ours, theirs = getattr(model.config, key), getattr(hf_config, key)
        if ours != theirs:
            raise ValueError(f"init_from={directory}: model.{key}={ours} but the checkpoint has {theirs}")
    state = state_dict_from_hf(read_hf_weights(directory), hf_config.tie_weights)
    param = next(model.parameters())
    state = {k: v.to(dtype=param.dtype, device=param.device) for k, v in state.items()}
    with torch.no_grad():
        load_state(model, state, f"init_from={directory}")
    return model


# --- writing a Hugging Face directory ---------------------------------------------------


def save_hf_tokenizer(tokenizer: BPETokenizer, directory: Path) -> None:
    """``vocab.json`` + ``merges.txt`` (GPT-2's encoder.json + vocab.bpe, HF's names)."""
    tokenizer.save_gpt2(directory)
    (directory / "encoder.json").replace(directory / "vocab.json")
    (directory / "vocab.bpe").replace(directory / "merges.txt")


def save_lm_tokenizer(tokenizer: Tokenizer, directory: Path) -> Path:
    """Write ``tokenizer.to_dict()`` as ``directory/lm_tokenizer.json``; return that path."""
    path = directory / LM_TOKENIZER_FILE
    path.write_text(json.dumps(tokenizer.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def export_hf_gpt2(model: GPT, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 directory (``config.json`` +
    ``model.safetensors``, float32). With a ``tokenizer``, also ``lm_tokenizer.json``
    (its ``to_dict()``, which ``load_hf_gpt2`` reads back: any of our tokenizers) and,
    for a ``BPETokenizer``, ``vocab.json`` + ``merges.txt`` (GPT-2's files hold only a
    byte-level BPE). ``GPT2LMHeadModel.from_pretrained(directory)`` computes the same
    logits. Returns the directory.

    Raises:
        ValueError: one line, before anything is written, for options GPT-2 cannot hold
            (rope, rmsnorm, post-norm, no mlp, qk_norm, relu2/swiglu, logit_softcap;
            ``check_gpt2_exportable``).
    """
    from safetensors.torch import save_file

    config = hf_config_from_gpt(model.config, tokenizer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(hf_state_dict(model), directory / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        save_lm_tokenizer(tokenizer, directory)
    if isinstance(tokenizer, BPETokenizer):
        save_hf_tokenizer(tokenizer, directory)
    return directory

