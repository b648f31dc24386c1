"""Hugging Face GPT-2 directories <-> our ``GPT``: import, export, fine-tune init.

A Hugging Face GPT-2 directory holds ``config.json``, the weights
(``model.safetensors`` or ``pytorch_model.bin``) and, optionally, the tokenizer
(``vocab.json`` + ``merges.txt``). An export also writes ``lm_tokenizer.json``, our
tokenizer's ``to_dict()`` (as a checkpoint stores it): GPT-2's files hold only a
byte-level BPE, so without it a char or byte model could not come back; an import
prefers it. Module names are the same on both sides (our ``lm/model.py`` follows
GPT-2's checkpoint), so conversion is a rename table plus one layout change: GPT-2's
``Conv1D`` stores a weight as (in, out), ``nn.Linear`` as (out, in), so ``c_attn``,
``c_proj`` and ``c_fc`` weights are transposed.

Command line (``conf/convert.yaml``):
    lm convert direction=import hf_dir=<dir> ckpt=<out.ckpt>   # a checkpoint lm generate reads
    lm convert direction=export ckpt=<in.ckpt> hf_dir=<dir>    # a directory from_pretrained reads

Export refuses, in one line, a model GPT-2 cannot compute (rotary positions, RMSNorm,
post-norm blocks, QK-norm, ReLU²/SwiGLU, logit soft-capping); an import is a GPT-2:
every option beyond GPT-2 at its default. So export then import gives back the same weights, config and
tokenizer for a model at GPT-2's options (an lm default model); a bias-free,
sinusoidal or zero_init_proj model comes back as the GPT-2 that computes the same
logits (zero biases, a learned ``wpe`` holding the table).

Sources: Radford et al. 2019 (GPT-2); Hugging Face ``transformers``
``models/gpt2/modeling_gpt2.py`` (``Conv1D``, ``GPT2Config``); nanoGPT
``GPT.from_pretrained`` (the transpose table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lm.checkpoint import checkpoint_dict, load_checkpoint, state_problems
from lm.errors import first_line
from lm.model import GPT, GPTConfig
from lm.tokenizers import BPETokenizer, Tokenizer, tokenizer_from_dict

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # GPT-2's causal-mask buffers, not weights
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
EXPORT_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# GPT2Config switches our model does not implement, with the value it must have
UNSUPPORTED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}
# config.json keys we read: GPT2Config's default, the JSON type a value must have
HF_KEYS = {
    "model_type": ("gpt2", str), "activation_function": ("gelu_new", str),
    "vocab_size": (50257, int), "n_positions": (1024, int), "n_layer": (12, int),
    "n_head": (12, int), "n_embd": (768, int), "n_inner": (None, int),  # null: 4 * n_embd
    "embd_pdrop": (0.1, float), "attn_pdrop": (0.1, float), "resid_pdrop": (0.1, float),
    "layer_norm_epsilon": (1e-5, float), "tie_word_embeddings": (True, bool),
}
JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
              float: "number", type(None): "null"}  # the JSON name of a parsed value's type
ALLOWED_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
# what each file of a GPT-2 directory holds, for the error lines
CONFIG_HOLDS = "a GPT-2 config object (config.json of GPT2LMHeadModel)"
LM_TOKENIZER_HOLDS = "an lm tokenizer object (written by lm convert direction=export)"
VOCAB_HOLDS = "GPT-2's vocab object (token string -> integer id)"
MERGES_HOLDS = "GPT-2's merges (a #version line, then one 'left right' token pair per line)"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LM_TOKENIZER_FILE = "lm_tokenizer.json"  # our tokenizer's to_dict(), beside GPT-2's files
HF_TOKENIZER_FILES = ("vocab.json", "merges.txt")
# what GPT-2 holds, for the export error line; zero_init_proj is an init, rope_base unused
GPT2_HOLDS = ("learned or sinusoidal positions, layernorm, pre-norm blocks, gelu/gelu_tanh, "
              "no qk_norm, no logit_softcap")


# --- reading a Hugging Face directory -------------------------------------------------


class HFFileError(ValueError):
    """A file of a Hugging Face GPT-2 directory that is empty, not UTF-8, or not of the
    form GPT-2's file has; the message is one line naming the file and what it should hold."""


def json_type(value: object) -> str:
    """What JSON value ``value`` was parsed from: ``a JSON array``, ``JSON null``."""
    return "JSON null" if value is None else f"a JSON {JSON_TYPES[type(value)]}"


def is_json_type(value: object, kind: type) -> bool:
    """Whether ``value`` is JSON's ``kind``: a bool is no integer, an integer is a number."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def read_text(path: Path, holds: str) -> str:
    """The UTF-8 text of ``path``, a file that should hold ``holds`` (for the error line).

    Raises:
        HFFileError: one line naming ``path``: empty (or only whitespace), or not UTF-8.
        OSError: it cannot be read.
    """
    data = path.read_bytes()
    if not data.strip():
        what = "holds only whitespace" if data else "is empty (0 bytes)"
        raise HFFileError(f"{path} {what}: expected {holds}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HFFileError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                          f"{err.start}): expected {holds}") from None


def read_json_object(path: Path, holds: str) -> dict:
    """The JSON object in ``path``, a file that should hold ``holds`` (for the error line).

    Raises:
        HFFileError: one line naming ``path``: empty, not UTF-8, not JSON, or JSON of
            another type (``config.json holds a JSON array, not a GPT-2 config object``).
        OSError: it cannot be read.
    """
    try:
        value = json.loads(read_text(path, holds))
    except json.JSONDecodeError as err:
        raise HFFileError(f"{path} is not valid JSON ({err}): expected {holds}") from None
    if not isinstance(value, dict):
        raise HFFileError(f"{path} holds {json_type(value)}, not {holds}")
    return value


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


def hf_values(hf: dict) -> dict:
    """The ``HF_KEYS`` values of a ``config.json`` dict, GPT2Config's default for a
    missing key.

    Raises:
        ValueError: one line naming a key whose value is of the wrong JSON type, e.g.
            ``config.json n_layer="two" is invalid: must be an integer``.
    """
    values = {}
    for key, (default, kind) in HF_KEYS.items():
        value = hf.get(key, default)
        if not (is_json_type(value, kind) or (value is None and default is None)):
            allowed = ALLOWED_TYPES[kind] + (" or null" if default is None else "")
            raise ValueError(f"config.json {key}={json.dumps(value)} is invalid: must be {allowed}")
        values[key] = value
    return values


def _dropout(values: dict) -> float:
    """Our single dropout from GPT-2's three (embd, attn, resid), which must agree."""
    rates = {key: values[key] for key in ("embd_pdrop", "attn_pdrop", "resid_pdrop")}
    if len(set(rates.values())) > 1:
        raise ValueError(f"config.json dropouts {rates} must be equal (our model has one dropout)")
    return float(rates["resid_pdrop"])


def gpt_config_from_hf(hf: dict) -> GPTConfig:
    """Our ``GPTConfig`` for a GPT-2 ``config.json`` dict.

    Raises:
        ValueError: one line naming a key whose value is of the wrong type
            (``hf_values``), one our model does not implement (model_type,
            activation_function, n_inner, the attention-scaling switches), or a
            config ``GPTConfig`` refuses (``n_embd`` not divisible by ``n_head``).
    """
    values = hf_values(hf)
    if values["model_type"] != "gpt2":
        raise ValueError(f"config.json model_type={hf['model_type']!r} is not supported (gpt2 only)")
    for key, needed in UNSUPPORTED.items():
        if hf.get(key, needed) != needed:
            raise ValueError(f"config.json {key}={hf[key]} is not supported (must be {needed})")
    activation = values["activation_function"]
    if activation not in HF_ACTIVATIONS:
        raise ValueError(f"config.json activation_function={activation!r} is not supported "
                         f"(one of {list(HF_ACTIVATIONS)})")
    n_embd = values["n_embd"]
    if values["n_inner"] not in (None, 4 * n_embd):
        raise ValueError(f"config.json n_inner={hf['n_inner']} is not supported "
                         f"(must be null or 4 * n_embd = {4 * n_embd})")
    dropout = _dropout(values)
    try:
        return GPTConfig(
            vocab_size=values["vocab_size"], block_size=values["n_positions"],
            n_layer=values["n_layer"], n_head=values["n_head"], n_embd=n_embd,
            dropout=dropout, bias=True, pos_encoding="learned",
            tie_weights=values["tie_word_embeddings"], activation=HF_ACTIVATIONS[activation],
            layer_norm_epsilon=float(values["layer_norm_epsilon"]),
        )
    except ValueError as err:  # GPTConfig names our keys: say where they came from
        raise ValueError(f"config.json is not a model lm can build: {err}") from None


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
        HFFileError: one line naming ``path`` and the first entry that is not a tensor.
    """
    if not isinstance(weights, dict):
        raise HFFileError(f"{path} holds a {type(weights).__name__}, not a state dict "
                          "(parameter name -> tensor)")
    for key, value in weights.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise HFFileError(f"{path} entry {key!r} is not a tensor (it is "
                              f"{type(value).__name__}; a state dict maps names to tensors)")


def state_dict_from_hf(hf_weights: dict[str, torch.Tensor], tie_weights: bool) -> dict:
    """GPT-2 tensors -> our state dict: ``transformer.`` prefix, Conv1D weights transposed
    to (out, in), mask buffers dropped, ``lm_head.weight`` = ``wte`` when tied."""
    state = {}
    for key, tensor in hf_weights.items():
        if key.endswith(IGNORED_BUFFERS):
            continue
        if key != "lm_head.weight" and not key.startswith("transformer."):
            key = f"transformer.{key}"  # a bare GPT2Model file (e.g. the hub's gpt2) has no prefix
        state[key] = tensor.t().contiguous() if key.endswith(CONV1D_WEIGHTS) else tensor
    if "transformer.wte.weight" not in state:
        return state  # load_state names it missing
    if tie_weights or "lm_head.weight" not in state:
        if "lm_head.weight" in state and not torch.equal(
            state["lm_head.weight"], state["transformer.wte.weight"]
        ):
            raise ValueError("lm_head.weight differs from wte but tie_word_embeddings=true")
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def load_state(model: GPT, state: dict[str, torch.Tensor], source: object) -> None:
    """``model.load_state_dict(state)``, raising one ``ValueError`` line naming the
    missing, unexpected and mismatched keys (with both shapes)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = state_problems(expected, state)
    if problems:
        raise ValueError(f"{source} does not fit the model: {problems}")
    model.load_state_dict(state)


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


def read_gpt2_tokenizer(directory: Path) -> BPETokenizer:
    """GPT-2's BPE from ``vocab.json`` + ``merges.txt`` (``BPETokenizer.load_gpt2``), each
    file's form checked first so that a damaged one is a line naming it, not a traceback.

    Raises:
        HFFileError: one line naming the file: empty, not UTF-8, a vocab.json that is not a
            JSON object of token -> integer id, a merges line that is not two tokens, or
            ids that do not follow GPT-2's layout (bytes, then merges, then specials).
    """
    vocab_path, merges_path = (directory / name for name in HF_TOKENIZER_FILES)
    vocab = read_json_object(vocab_path, VOCAB_HOLDS)
    for token, i in vocab.items():
        if not is_json_type(i, int):
            raise HFFileError(f"{vocab_path} maps {token!r} to {json.dumps(i)}: "
                              f"expected {VOCAB_HOLDS}")
    lines = read_text(merges_path, MERGES_HOLDS).splitlines()  # as gpt2_files reads them
    for n, line in enumerate(lines, start=1):
        header = n == 1 and line.startswith("#version")
        if line and not header and len(line.split(" ")) != 2:
            raise HFFileError(f"{merges_path} line {n} {line[:40]!r} is not two tokens "
                              f"separated by one space: expected {MERGES_HOLDS}")
    try:
        return BPETokenizer.load_gpt2(directory)
    except KeyError as err:  # a merge of a token vocab.json lacks
        raise HFFileError(f"{vocab_path} + {merges_path.name} are not GPT-2's tokenizer: "
                          f"a merge names the token {err}, which vocab.json lacks") from None
    except ValueError as err:
        raise HFFileError(f"{vocab_path} + {merges_path.name} are not GPT-2's tokenizer: "
                          f"{first_line(err)}") from None


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
    hf = read_gpt2_tokenizer(directory) if has_hf else None
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
            (activation, epsilon, tying, positions, biases, norm, norm position, QK-norm, soft-capping),
            or a weight's shape differs (named, with both shapes).
    """
    model = getattr(module_or_model, "model", module_or_model)
    if not isinstance(model, GPT):
        raise TypeError(f"init_from_hf needs a GPT or a module with .model, got {type(model).__name__}")
    directory = Path(directory)
    hf_config = gpt_config_from_hf(read_hf_config(directory))
    for key in ("activation", "layer_norm_epsilon", "tie_weights", "pos_encoding", "bias",
                "norm", "norm_position", "qk_norm", "logit_softcap"):
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


def check_gpt2_exportable(config: GPTConfig) -> None:
    """Raise if GPT-2 cannot compute what ``config``'s model computes.

    GPT-2 has learned positions (a sinusoidal table is exported as ``wpe``), LayerNorm,
    pre-norm blocks and a final ``ln_f`` (a post-norm model has none), GELU (exact or
    tanh), no QK-norm and no logit soft-capping. ``zero_init_proj`` is an init only, so
    it is allowed; ``rope_base`` is unused without rope.

    Raises:
        ValueError: one line naming every key and value GPT-2 cannot hold, e.g.
            ``cannot export to GPT-2: model.pos_encoding=rope, model.norm=rmsnorm (...)``.
    """
    blocked = {
        "pos_encoding": config.pos_encoding not in ("learned", "sinusoidal"),
        "norm": config.norm != "layernorm",
        "norm_position": config.norm_position != "pre",
        "qk_norm": config.qk_norm,
        "activation": config.activation not in EXPORT_ACTIVATIONS,
        "logit_softcap": config.logit_softcap is not None,
    }
    values = {key: getattr(config, key) for key, bad in blocked.items() if bad}
    keys = [f"model.{key}={str(v).lower() if isinstance(v, bool) else v}"  # as typed: true
            for key, v in values.items()]
    if keys:
        raise ValueError(f"cannot export to GPT-2: {', '.join(keys)} (GPT-2 holds {GPT2_HOLDS})")


def hf_config_from_gpt(config: GPTConfig, tokenizer: Tokenizer | None = None) -> dict:
    """The ``config.json`` dict of GPT2LMHeadModel for our ``config``.

    Raises:
        ValueError: one line, for options GPT-2 cannot hold (``check_gpt2_exportable``).
    """
    check_gpt2_exportable(config)
    eos = None if tokenizer is None else tokenizer.eos_id
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size,
        "n_ctx": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
        "n_head": config.n_head, "n_inner": None,
        "activation_function": EXPORT_ACTIVATIONS[config.activation],
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_epsilon, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "use_cache": True,
        "tie_word_embeddings": config.tie_weights, "torch_dtype": "float32",
        "bos_token_id": eos, "eos_token_id": eos,
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights in GPT2LMHeadModel's layout: Conv1D weights (in, out), contiguous.

    GPT-2 always has biases and learned positions; a model without biases gets zero
    biases and a sinusoidal one gets its fixed table as ``wpe``: the same function.
    A tied ``lm_head.weight`` is left out (safetensors stores no shared tensors;
    ``from_pretrained`` ties it again).

    Raises:
        ValueError: one line, for options GPT-2 cannot hold (``check_gpt2_exportable``).
    """
    check_gpt2_exportable(model.config)
    state = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    if model.config.tie_weights:
        del state["lm_head.weight"]
    if model.config.pos_encoding == "sinusoidal":
        state["transformer.wpe.weight"] = model.sinusoidal_pe.detach().cpu().float()
    if not model.config.bias:
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and name != "lm_head":
                state[f"{name}.bias"] = torch.zeros(module.weight.shape[0])
    return {k: (v.t() if k.endswith(CONV1D_WEIGHTS) else v).contiguous() for k, v in state.items()}


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
            (rope, rmsnorm, qk_norm, relu2/swiglu, logit_softcap; ``check_gpt2_exportable``).
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


# --- checkpoints and the command line -----------------------------------------------------


def import_command(hf_dir: str, out: str) -> str:
    """Write the checkpoint ``out`` from the GPT-2 directory ``hf_dir``; return the line to print.

    Raises:
        ValueError: one line: as ``load_hf_gpt2``, or ``hf_dir`` has no tokenizer files.
    """
    model, tokenizer = load_hf_gpt2(hf_dir)
    if tokenizer is None:
        raise ValueError(f"{hf_dir} has no tokenizer: a checkpoint needs {LM_TOKENIZER_FILE} "
                         f"(written by lm convert direction=export) or GPT-2's "
                         f"{' + '.join(HF_TOKENIZER_FILES)}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_dict(model, tokenizer, {"init_from": str(hf_dir)}), out)
    kind = tokenizer.to_dict()["type"]
    return (f"wrote {out} ({model.num_params():,} parameters, vocab {model.config.vocab_size}, "
            f"{kind} tokenizer from {tokenizer_source(Path(hf_dir))})")


def export_command(ckpt: str, hf_dir: str) -> str:
    """Write the GPT-2 directory ``hf_dir`` from the checkpoint ``ckpt``; return the line to print.

    Raises:
        ValueError: one line: as ``load_checkpoint`` and ``export_hf_gpt2``.
    """
    model, tokenizer, _ = load_checkpoint(ckpt, nonfinite="warn")  # exported as they are
    export_hf_gpt2(model, hf_dir, tokenizer)
    files = ["config.json", "model.safetensors", LM_TOKENIZER_FILE]
    kind = tokenizer.to_dict()["type"]
    if isinstance(tokenizer, BPETokenizer):
        return f"wrote {hf_dir} ({', '.join(files + list(HF_TOKENIZER_FILES))})"
    return (f"wrote {hf_dir} ({', '.join(files)}; no {' + '.join(HF_TOKENIZER_FILES)}: "
            f"GPT-2's tokenizer files hold only BPE, this is a {kind} tokenizer)")


@dataclass
class ConvertConfig:
    """The settings of ``lm convert``: their types. Meaning: ``conf/convert.yaml``."""

    direction: str
    hf_dir: str
    ckpt: str


def convert_command(cfg: ConvertConfig) -> int:
    """``lm convert``: import (``hf_dir`` -> ``ckpt``) or export (``ckpt`` -> ``hf_dir``);
    print what was written.

    Raises:
        ValueError: one line: an unknown direction, a directory or checkpoint that
            cannot be read (an import also needs a tokenizer: lm_tokenizer.json or
            vocab.json + merges.txt), or a destination that cannot be written.
    """
    if cfg.direction not in ("import", "export"):
        raise ValueError(f"direction={cfg.direction} is invalid: must be import (hf_dir -> "
                         "ckpt) or export (ckpt -> hf_dir)")
    try:
        if cfg.direction == "import":
            print(import_command(cfg.hf_dir, cfg.ckpt))
        else:
            print(export_command(cfg.ckpt, cfg.hf_dir))
    except OSError as err:  # CheckpointError is a ValueError, raised as it is
        raise ValueError(f"{err.filename or cfg.hf_dir}: {err.strerror or err}") from None
    return 0
