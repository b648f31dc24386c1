"""The GPT forward pass in plain NumPy, one function per operation.

A reference to read and to test ``lm/model.py`` against: no autograd, no fused
kernels, no hooks, float64 throughout. It takes our model's state dict (as NumPy
arrays, ``numpy_state_dict``) and its ``GPTConfig``; it supports every option:
learned, sinusoidal and rotary positions, LayerNorm and RMSNorm, pre-norm (GPT-2) and
post-norm (GPT-1) blocks, attention-only blocks (``mlp=False``), QK-norm, the four MLP
activations (exact GELU, GPT-2's tanh GELU, ReLU², SwiGLU), logit soft-capping, tied and
untied output heads, biases on and off (``zero_init_proj`` is an init only).

Shape letters: B batch, T time, C channels (n_embd), H heads, Dh head dim (C // H),
V vocab.

Command line: ``lm generate`` with ``backend=numpy`` decodes greedily with this forward
pass, from any checkpoint ``lm generate`` reads; ``backend=torch`` (the default) with
``strategy=greedy`` should print the same text:
    lm generate ckpt=<path> prompt="ROMEO:" max_new_tokens=50 strategy=greedy backend=numpy

Sources: Radford et al. 2018 (GPT-1, post-norm); Radford et al. 2019 (GPT-2);
Vaswani et al. 2017 (attention, sinusoidal positions); Hendrycks & Gimpel 2016 (GELU);
Ba et al. 2016 (layer norm); Su et al. 2021 (RoFormer, rotary positions);
Zhang & Sennrich 2019 (RMSNorm); Henry et al. 2020 (QK-norm); So et al. 2021 (Primer,
ReLU²); Shazeer 2020 (SwiGLU);
Team Gemma 2024 (Gemma 2, logit soft-capping); Elhage et al. 2021 (attention-only
transformers);
Jay Mody, "GPT in 60 Lines of NumPy" (picoGPT).
"""

from __future__ import annotations

import math

import numpy as np

from lm.model import GPTConfig

Params = dict[str, np.ndarray]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray, approximate: bool = False) -> np.ndarray:
    """GELU(x) = x * Phi(x); with ``approximate`` GPT-2's tanh form (``gelu_new``).

    Exact: 0.5 x (1 + erf(x / sqrt 2)). Tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    """
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def relu2(x: np.ndarray) -> np.ndarray:
    """max(x, 0)^2 elementwise (So et al. 2021, Primer)."""
    return np.maximum(x, 0.0) ** 2


def swiglu(x: np.ndarray) -> np.ndarray:
    """(..., 2F) -> (..., F): silu(a) * b = a / (1 + exp(-a)) * b for a, b the first and
    second halves of the last axis (Shazeer 2020)."""
    a, b = np.split(x, 2, axis=-1)  # 2 x (..., F)
    return a / (1.0 + np.exp(-a)) * b


def activation(x: np.ndarray, name: str) -> np.ndarray:
    """The MLP nonlinearity ``GPTConfig.activation`` names; swiglu halves the last axis."""
    if name == "relu2":
        return relu2(x)
    if name == "swiglu":
        return swiglu(x)
    return gelu(x, approximate=name == "gelu_tanh")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum exp(x) along ``axis``, shifted by the max for stability; -inf -> 0."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray | None, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * g + b over the last axis (biased variance)."""
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    var = x.var(axis=-1, keepdims=True)  # (..., 1)
    y = (x - mean) / np.sqrt(var + eps) * g  # (..., C)
    return y if b is None else y + b


def rms_norm(x: np.ndarray, g: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * g over the last axis (Zhang & Sennrich 2019); no g: no gain."""
    y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., C)
    return y if g is None else y * g


def norm(x: np.ndarray, p: Params, prefix: str, config: GPTConfig) -> np.ndarray:
    """The block or final norm ``config.norm`` names, with parameters ``{prefix}.weight/.bias``."""
    eps = config.layer_norm_epsilon
    if config.norm == "rmsnorm":
        return rms_norm(x, p[f"{prefix}.weight"], eps)
    return layer_norm(x, p[f"{prefix}.weight"], p.get(f"{prefix}.bias"), eps)


def rope_tables(T: int, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotary angles m * base^(-2i / Dh), each (T, Dh/2), for positions
    m = 0..T-1 and channel pairs i (Su et al. 2021, eq. 15)."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (Dh/2,)
    angle = np.arange(T, dtype=np.float64)[:, None] * inv_freq  # (T, Dh/2)
    return np.cos(angle), np.sin(angle)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate (B, H, T, Dh) by position: channel i pairs with i + Dh/2 (the GPT-NeoX/Llama
    "rotate half" layout) and the pair (x1, x2) turns to (x1 cos - x2 sin, x1 sin + x2 cos)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # 2 x (B, H, T, Dh/2)
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)  # (B, H, T, Dh)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """x @ w.T + b, with ``w`` in nn.Linear's (out, in) layout: (..., in) -> (..., out)."""
    y = x @ w.T  # (..., out)
    return y if b is None else y + b


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal softmax(q k^T / sqrt(Dh)) v: (B, H, T, Dh) x3 -> (B, H, T, Dh)."""
    T, Dh = q.shape[-2:]
    scores = q @ k.swapaxes(-2, -1) / math.sqrt(Dh)  # (B, H, T, T)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # (T, T), True above the diagonal
    scores = np.where(future, -np.inf, scores)  # (B, H, T, T)
    return softmax(scores) @ v  # (B, H, T, Dh)


def multi_head_attention(x: np.ndarray, p: Params, prefix: str, config: GPTConfig) -> np.ndarray:
    """Fused qkv projection, H heads of causal attention, output projection: (B, T, C) -> (B, T, C).

    With ``qk_norm`` q and k are RMS-normalised (no gain) over each head's Dh channels,
    then, with rotary positions, rotated by their positions 0..T-1.
    """
    B, T, C = x.shape
    H = config.n_head
    Dh = C // H
    qkv = linear(x, p[f"{prefix}.c_attn.weight"], p.get(f"{prefix}.c_attn.bias"))  # (B, T, 3C)
    q, k, v = np.split(qkv, 3, axis=-1)  # 3 x (B, T, C)
    q, k, v = (a.reshape(B, T, H, Dh).transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, H, T, Dh)
    if config.qk_norm:
        q = rms_norm(q, None, config.layer_norm_epsilon)  # (B, H, T, Dh)
        k = rms_norm(k, None, config.layer_norm_epsilon)  # (B, H, T, Dh)
    if config.pos_encoding == "rope":
        cos, sin = rope_tables(T, Dh, config.rope_base)  # (T, Dh/2) each
        q, k = rope(q, cos, sin), rope(k, cos, sin)  # (B, H, T, Dh) each
    y = attention(q, k, v)  # (B, H, T, Dh)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C)
    return linear(y, p[f"{prefix}.c_proj.weight"], p.get(f"{prefix}.c_proj.bias"))  # (B, T, C)


def mlp(x: np.ndarray, p: Params, prefix: str, config: GPTConfig) -> np.ndarray:
    """Linear(C, F) -> activation -> Linear(F, C): (B, T, C) -> (B, T, C); F = 4C, and
    for SwiGLU ``c_fc`` gives 2F (gate, then up) and F = floor(8C / 3)."""
    h = linear(x, p[f"{prefix}.c_fc.weight"], p.get(f"{prefix}.c_fc.bias"))  # (B, T, F or 2F)
    h = activation(h, config.activation)  # (B, T, F)
    return linear(h, p[f"{prefix}.c_proj.weight"], p.get(f"{prefix}.c_proj.bias"))  # (B, T, C)


def block(x: np.ndarray, p: Params, prefix: str, config: GPTConfig) -> np.ndarray:
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); (B, T, C) -> (B, T, C).
    Without an MLP (``mlp=False``, attention-only) x + attn(ln_1(x)) alone. With
    ``norm_position="post"`` the post-norm block, ``post_norm_block``."""
    if config.norm_position == "post":
        return post_norm_block(x, p, prefix, config)
    h = norm(x, p, f"{prefix}.ln_1", config)  # (B, T, C)
    x = x + multi_head_attention(h, p, f"{prefix}.attn", config)  # (B, T, C)
    if not config.mlp:
        return x
    h = norm(x, p, f"{prefix}.ln_2", config)  # (B, T, C)
    return x + mlp(h, p, f"{prefix}.mlp", config)  # (B, T, C)


def post_norm_block(x: np.ndarray, p: Params, prefix: str, config: GPTConfig) -> np.ndarray:
    """Post-norm block (GPT-1, Radford et al. 2018; Vaswani et al. 2017): ln_1(x + attn(x)),
    then ln_2(x + mlp(x)); (B, T, C) -> (B, T, C). Without an MLP ln_1(x + attn(x)) alone."""
    h = x + multi_head_attention(x, p, f"{prefix}.attn", config)  # (B, T, C)
    x = norm(h, p, f"{prefix}.ln_1", config)  # (B, T, C)
    if not config.mlp:
        return x
    h = x + mlp(x, p, f"{prefix}.mlp", config)  # (B, T, C)
    return norm(h, p, f"{prefix}.ln_2", config)  # (B, T, C)


def sinusoidal_positions(block_size: int, n_embd: int) -> np.ndarray:
    """PE[pos, 2i] = sin(pos / 10000^(2i/C)), PE[pos, 2i+1] = cos(...): (block_size, C)."""
    pos = np.arange(block_size, dtype=np.float64)[:, None]  # (T, 1)
    two_i = np.arange(0, n_embd, 2, dtype=np.float64)  # (ceil(C/2),)
    angle = pos / 10000.0 ** (two_i / n_embd)  # (T, ceil(C/2))
    pe = np.zeros((block_size, n_embd))  # (T, C)
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle)[:, : n_embd // 2]
    return pe


def positions(p: Params, config: GPTConfig, T: int) -> np.ndarray:
    """Position embedding rows 0..T-1: (T, C); zeros with rope (positions enter in attention)."""
    if config.pos_encoding == "rope":
        return np.zeros((T, config.n_embd))  # (T, C)
    if config.pos_encoding == "learned":
        return p["transformer.wpe.weight"][:T]  # (T, C)
    return sinusoidal_positions(config.block_size, config.n_embd)[:T]  # (T, C)


def gpt(idx: np.ndarray, p: Params, config: GPTConfig) -> np.ndarray:
    """Next-token logits of token ids ``idx`` (B, T), T <= block_size -> (B, T, V).

    ``p`` is ``numpy_state_dict(model)``: our parameter names, nn.Linear layouts.
    An untied model reads its own ``lm_head.weight``; a tied one's equals ``wte``.
    Post-norm (GPT-1) has no final norm ``ln_f``: its blocks' output is normalised.
    With ``logit_softcap`` c the logits are c * tanh(logits / c).
    """
    assert idx.ndim == 2 and idx.shape[1] <= config.block_size, idx.shape
    T = idx.shape[1]
    x = p["transformer.wte.weight"][idx] + positions(p, config, T)  # (B, T, C)
    for i in range(config.n_layer):
        x = block(x, p, f"transformer.h.{i}", config)  # (B, T, C)
    if config.norm_position == "pre":
        x = norm(x, p, "transformer.ln_f", config)  # (B, T, C)
    head = p["lm_head.weight"] if "lm_head.weight" in p else p["transformer.wte.weight"]  # (V, C)
    logits = linear(x, head, None)  # (B, T, V)
    if config.logit_softcap is not None:
        logits = config.logit_softcap * np.tanh(logits / config.logit_softcap)  # (B, T, V)
    return logits


def numpy_state_dict(model) -> Params:
    """A torch module's state dict as float64 NumPy arrays."""
    return {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}


def generate_greedy(idx: np.ndarray, p: Params, config: GPTConfig, max_new_tokens: int) -> np.ndarray:
    """Append ``max_new_tokens`` argmax tokens to ``idx`` (B, T), seeing at most the last
    block_size tokens: -> (B, T + max_new_tokens)."""
    for _ in range(max_new_tokens):
        logits = gpt(idx[:, -config.block_size:], p, config)  # (B, T', V)
        nxt = logits[:, -1, :].argmax(axis=-1)[:, None]  # (B, 1)
        idx = np.concatenate([idx, nxt], axis=1)  # (B, T + 1)
    return idx
