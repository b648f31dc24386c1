"""GPT-2's config and weights in our terms, and back: the mapping, with no files.

Module names are the same on both sides (our ``lm/model.py`` follows GPT-2's
checkpoint), so converting weights is a rename table plus one layout change: GPT-2's
``Conv1D`` stores a weight as (in, out), ``nn.Linear`` as (out, in), so ``c_attn``,
``c_proj`` and ``c_fc`` weights are transposed. A GPT-2 config is our model with every
option beyond GPT-2 at its default; a model GPT-2 cannot compute (rotary positions,
RMSNorm, post-norm blocks, attention-only blocks, QK-norm, ReLU²/SwiGLU, logit
soft-capping) is refused in one line. A bias-free, sinusoidal or zero_init_proj model
maps to the GPT-2 that computes the same logits (zero biases, a learned ``wpe`` holding
the table). The files of a Hugging Face directory are read and written by
``lm/interop/hf.py``.

Sources: Radford et al. 2019 (GPT-2); Hugging Face ``transformers``
``models/gpt2/modeling_gpt2.py`` (``Conv1D``, ``GPT2Config``); nanoGPT
``GPT.from_pretrained`` (the transpose table).
"""

from __future__ import annotations

import json

import torch
from torch import nn

from lm.checkpoint import state_problems
from lm.model import GPT, GPTConfig
from lm.tokenizers import Tokenizer
from lm.tokenizers.gpt2_files import is_json_type

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
ALLOWED_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
# what GPT-2 holds, for the export error line; zero_init_proj is an init, rope_base unused
GPT2_HOLDS = ("learned or sinusoidal positions, layernorm, pre-norm blocks with an mlp, "
              "gelu/gelu_tanh, no qk_norm, no logit_softcap")


# --- GPT-2 -> ours ---------------------------------------------------------------


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


# --- ours -> GPT-2 ---------------------------------------------------------------


def check_gpt2_exportable(config: GPTConfig) -> None:
    """Raise if GPT-2 cannot compute what ``config``'s model computes.

    GPT-2 has learned positions (a sinusoidal table is exported as ``wpe``), LayerNorm,
    pre-norm blocks and a final ``ln_f`` (a post-norm model has none), an MLP in every
    block (an attention-only model has none: GPT-2's config cannot drop it), GELU (exact
    or tanh), no QK-norm and no logit soft-capping. ``zero_init_proj`` is an init only, so
    it is allowed; ``rope_base`` is unused without rope.

    Raises:
        ValueError: one line naming every key and value GPT-2 cannot hold, e.g.
            ``cannot export to GPT-2: model.pos_encoding=rope, model.norm=rmsnorm (...)``.
    """
    blocked = {
        "pos_encoding": config.pos_encoding not in ("learned", "sinusoidal"),
        "norm": config.norm != "layernorm",
        "norm_position": config.norm_position != "pre",
        "mlp": not config.mlp,
        "qk_norm": config.qk_norm,
        "activation": config.mlp and config.activation not in EXPORT_ACTIVATIONS,  # no mlp: unused
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

