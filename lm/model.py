"""A decoder-only GPT in one file, nanoGPT style.

Classes appear in the order data meets them: config, attention, MLP, block,
model. Module paths follow GPT-2's checkpoint (``transformer.wte``, ``wpe``,
``h.{i}.attn.c_attn``, ``ln_f``, ``lm_head``) so loading GPT-2 weights is a
rename table. Activations pass through named ``HookPoint`` modules
(TransformerLens style) listed in ``GPT.hook_dict``.

A user names a layer one way, as the hook points do: ``blocks.{i}``, never the
module path ``transformer.h.{i}``. ``GPT.named_layers()`` is the one table from those
names to modules (``blocks.0.attn.c_attn``, ``wte``, ``ln_f``, ``hook_logits``, ...);
hook patterns, per-layer metrics and parameter groups all use its names, and a
block and its hook points carry their index as ``.layer`` (never parsed from a name).

Shape letters: B batch, T time, C channels (n_embd), H heads (n_head),
Dh head dim (C // H), V vocab.

Every option beyond GPT-2 is one ``GPTConfig`` field whose default keeps GPT-2:
rotary positions (``pos_encoding="rope"``), RMSNorm (``norm``), QK-norm (``qk_norm``),
ReLU² and SwiGLU MLPs (``activation``), zero-initialised residual projections
(``zero_init_proj``), an untied head (``tie_weights``) and logit soft-capping
(``logit_softcap``), the changes of the modded-nanogpt speedrun; going back,
GPT-1's post-norm blocks (``norm_position="post"``); and, for interpretability,
attention-only blocks without an MLP (``mlp=False``).

Sources:
    Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training"
    (GPT-1, post-norm blocks).
    Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2).
    Vaswani et al. 2017, "Attention Is All You Need" (sinusoidal positions).
    Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding".
    Zhang & Sennrich 2019, "Root Mean Square Layer Normalization".
    Henry et al. 2020, "Query-Key Normalization for Transformers" (QK-norm).
    So et al. 2021, "Primer" (ReLU²); Shazeer 2020, "GLU Variants Improve Transformer" (SwiGLU).
    Gemma 2 (Team Gemma 2024) and Jordan et al., modded-nanogpt (logit soft-capping,
    zero-initialised projections).
    Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits", and
    Olsson et al. 2022, "In-context Learning and Induction Heads" (attention-only models).
    Karpathy, nanoGPT ``model.py``; Nanda & Bloom, TransformerLens.

This module never imports Hydra or OmegaConf: it takes a dataclass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lm.hook_points import HookFn, HookPoint, hooks_attached, match_names

POS_ENCODINGS = ("learned", "sinusoidal", "rope")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu2", "swiglu")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")


@dataclass
class GPTConfig:
    """Hyperparameters of the GPT; checked by ``validate()`` on construction.

    Attributes:
        vocab_size: V; ``None`` means "taken from the tokenizer" and must be
            filled in before ``GPT(config)``.
        block_size: longest context T the model accepts.
        n_layer, n_head, n_embd: depth, heads per layer, residual width C.
        dropout: probability in [0, 1] for embedding, attention and residual dropout.
        bias: biases in every Linear and LayerNorm (GPT-2: True).
        pos_encoding: ``"learned"`` (GPT-2 ``wpe``) or ``"sinusoidal"`` (Vaswani et al.).
        tie_weights: share ``lm_head.weight`` with ``transformer.wte.weight``
            (Press & Wolf 2017, as GPT-2).
        pos_encoding: also ``"rope"``: no position embedding; q and k are rotated by
            their position (Su et al. 2021) in every attention layer.
        rope_base: the rotary base theta (RoFormer, Llama: 10000); > 0.
        activation: ``"gelu"`` (exact, erf), ``"gelu_tanh"`` (GPT-2's ``gelu_new``),
            ``"relu2"`` (relu(x)^2, Primer) or ``"swiglu"`` (silu(x W) * (x V), Shazeer
            2020; hidden width 2/3 of 4C so the MLP keeps its parameter count).
        norm: ``"layernorm"`` (GPT-2) or ``"rmsnorm"`` (Zhang & Sennrich 2019), for
            ``ln_1``, ``ln_2`` and ``ln_f``.
        mlp: an MLP sublayer in every block (GPT-2: True). False builds an
            attention-only transformer (Elhage et al. 2021; Olsson et al. 2022): each
            block is attention alone, with no ``ln_2``, ``mlp``, ``hook_resid_mid`` or
            ``hook_mlp_out`` (TransformerLens's ``attn_only``); ``activation`` is unused.
        norm_position: ``"pre"`` (GPT-2: x + attn(ln_1(x)), then a final ``ln_f``) or
            ``"post"`` (GPT-1, Radford et al. 2018, and Vaswani et al. 2017:
            ln_1(x + attn(x)); no ``ln_f``, since every block's output is normalised).
        qk_norm: RMS-normalise q and k over each head's Dh channels before attention
            (no gain; Henry et al. 2020, as modded-nanogpt).
        zero_init_proj: initialise both residual projections (``attn.c_proj``,
            ``mlp.c_proj``) to zero instead of N(0, 0.02 / sqrt(2 n_layer)), so each
            block starts as the identity (post-norm: as ln_2(ln_1(x)), or ln_1(x)
            without an MLP).
        logit_softcap: ``None``, or a cap c > 0: logits become c * tanh(logits / c)
            (Gemma 2, modded-nanogpt).
        layer_norm_epsilon: epsilon of every LayerNorm or RMSNorm (GPT-2: 1e-5).

    Raises:
        ValueError: one line naming the key, value and rule, e.g.
            ``model.dropout=1.5 must be in [0, 1]``.
    """

    vocab_size: int | None = None
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    pos_encoding: str = "learned"
    tie_weights: bool = True
    activation: str = "gelu"
    layer_norm_epsilon: float = 1e-5
    norm: str = "layernorm"
    norm_position: str = "pre"
    mlp: bool = True
    qk_norm: bool = False
    rope_base: float = 10000.0
    zero_init_proj: bool = False
    logit_softcap: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` (one line: key, value, rule) for the first bad field."""
        sizes = ("n_layer", "n_head", "n_embd", "block_size")
        for key in sizes + (("vocab_size",) if self.vocab_size is not None else ()):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key}={getattr(self, key)} must be >= 1")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head} "
                "(n_embd % n_head must be 0)"
            )
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1]")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(f"model.layer_norm_epsilon={self.layer_norm_epsilon} must be > 0")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"model.pos_encoding={self.pos_encoding!r} must be one of {list(POS_ENCODINGS)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation={self.activation!r} must be one of {list(ACTIVATIONS)}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"model.norm={self.norm!r} must be one of {list(NORMS)}")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"model.norm_position={self.norm_position!r} must be one of "
                             f"{list(NORM_POSITIONS)}")
        if self.rope_base <= 0:
            raise ValueError(f"model.rope_base={self.rope_base} must be > 0")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ValueError(
                f"model.pos_encoding='rope' needs an even head dim; n_embd / n_head = "
                f"{self.n_embd} / {self.n_head} = {self.head_dim}"
            )
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ValueError(f"model.logit_softcap={self.logit_softcap} must be > 0 or null")

    @property
    def head_dim(self) -> int:
        """Dh = n_embd // n_head."""
        return self.n_embd // self.n_head


def sinusoidal_positions(block_size: int, n_embd: int) -> torch.Tensor:
    """Fixed position table (block_size, n_embd), Vaswani et al. 2017, section 3.5.

    PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)),
    with d = n_embd (an odd d drops the last cosine column).
    """
    pos = torch.arange(block_size, dtype=torch.float32)[:, None]  # (T, 1)
    two_i = torch.arange(0, n_embd, 2, dtype=torch.float32)  # (ceil(C/2),)
    angle = pos / (10000.0 ** (two_i / n_embd))  # (T, ceil(C/2))
    pe = torch.zeros(block_size, n_embd)  # (T, C)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)[:, : n_embd // 2]
    return pe


def rope_tables(block_size: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (block_size, head_dim // 2) float32.

    Channel pair i of position m turns by the angle m * base^(-2i / head_dim)
    (Su et al. 2021, eq. 15; the Llama ``inv_freq``).
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (Dh/2,)
    angle = torch.arange(block_size, dtype=torch.float32)[:, None] * inv_freq  # (T, Dh/2)
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, Dh) by its positions' angles; cos, sin (T, Dh/2).

    Channel i is paired with channel i + Dh/2 (the "rotate half" layout of GPT-NeoX and
    Llama, a fixed permutation of RoFormer's adjacent pairs): for x1 = x[..., :Dh/2] and
    x2 = x[..., Dh/2:], out = (x1 cos - x2 sin, x1 sin + x2 cos). Equal to Hugging Face's
    ``apply_rotary_pos_emb`` (tests/test_arch.py).
    """
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, H, T, Dh/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, T, Dh)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2 over the last dim) + eps), times a gain (Zhang & Sennrich 2019).

    Shapes: (..., dim) -> (..., dim). ``elementwise_affine=False`` drops the gain (QK-norm).
    Equal to ``torch.nn.RMSNorm(dim, eps)`` (tests/test_arch.py).
    """

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., dim)
        return y if self.weight is None else y * self.weight


def make_norm(config: GPTConfig) -> nn.Module:
    """The block and final norm over C channels that ``config.norm`` names."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)


class LayerKV:
    """One layer's cached keys and values, each (B, H, T_past, Dh); empty at first."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, H, T, Dh) keys and values; return all of them, (B, H, T_past + T, Dh)."""
        if self.k is not None:
            k = torch.cat([self.k, k], dim=2)  # (B, H, T_past + T, Dh)
            v = torch.cat([self.v, v], dim=2)  # (B, H, T_past + T, Dh)
        self.k, self.v = k, v
        return k, v


class KVCache:
    """Keys and values of every layer for incremental decoding (``GPT.forward(kv_cache=...)``).

    ``len(cache)`` is the number of positions cached; the next tokens fed to the model
    take positions ``len(cache), len(cache) + 1, ...``. ``reorder(index)`` picks batch
    rows (beam search). Keys and values are stored after ``hook_k``/``hook_v``, so an
    edit made by a hook when a position was computed stays in the cache.
    """

    def __init__(self, n_layer: int) -> None:
        self.layers = [LayerKV() for _ in range(n_layer)]

    def __len__(self) -> int:
        k = self.layers[0].k
        return 0 if k is None else k.size(2)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (B',) int64, in that order."""
        for layer in self.layers:
            if layer.k is not None:
                layer.k = layer.k.index_select(0, index)  # (B', H, T_past, Dh)
                layer.v = layer.v.index_select(0, index)  # (B', H, T_past, Dh)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection (GPT-2 ``attn``).

    Shapes: B batch, T time, C channels, H heads, Dh = C // H head dim.

    Runs ``F.scaled_dot_product_attention(is_causal=True)`` unless a forward hook
    is attached to ``hook_scores`` or ``hook_pattern``; then it computes the
    (B, H, T, T) scores and pattern explicitly so they can be observed or edited.
    Both paths agree within float32 rounding.

    ``hook_q`` and ``hook_k`` see q and k as projected; QK-norm (``qk_norm``) and then
    the rotary embedding (``pos_encoding="rope"``) are applied after them, so the KV
    cache holds keys normalised and rotated, as attention uses them.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.hook_q = HookPoint()  # (B, H, T, Dh)
        self.hook_k = HookPoint()  # (B, H, T, Dh)
        self.hook_v = HookPoint()  # (B, H, T, Dh)
        self.hook_scores = HookPoint()  # (B, H, T, T), explicit path only
        self.hook_pattern = HookPoint()  # (B, H, T, T), explicit path only
        self.hook_z = HookPoint()  # (B, T, H, Dh)
        self.qk_norm = (RMSNorm(config.head_dim, config.layer_norm_epsilon, elementwise_affine=False)
                        if config.qk_norm else None)

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C).

        With ``kv`` (this layer's slot of a ``KVCache``) the T new positions attend
        to the cached keys and values too, and their own k, v are appended to it.
        The hook points see the new positions only (hook_scores/hook_pattern:
        (B, H, T, T_past + T)). ``rope``: cos, sin (T, Dh/2) of the new positions.
        """
        B, T, C = x.shape
        H, Dh = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = self.hook_q(q.view(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
        k = self.hook_k(k.view(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
        v = self.hook_v(v.view(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q), self.qk_norm(k)  # (B, H, T, Dh) each
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # (B, H, T, Dh) each
        if kv is not None:
            k, v = kv.append(k, v)  # 2 x (B, H, Tk, Dh), Tk = T_past + T
        if self.hook_scores.has_hooks or self.hook_pattern.has_hooks:
            y = self._explicit_attention(q, k, v)  # (B, H, T, Dh)
        else:
            y = self._fused_attention(q, k, v)  # (B, H, T, Dh)
        z = self.hook_z(y.transpose(1, 2))  # (B, T, H, Dh)
        return self.resid_dropout(self.c_proj(z.reshape(B, T, C)))  # (B, T, C)

    def _fused_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """SDPA; ``is_causal`` only when Tq == Tk (its mask is top-left aligned, so with a
        cache the last Tq rows of the causal mask are passed explicitly)."""
        p = self.dropout if self.training else 0.0
        Tq, Tk = q.size(-2), k.size(-2)
        if Tq == Tk:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        mask = _causal_mask(Tq, Tk, q.device)  # (Tq, Tk)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(Dh) + causal mask) v, with scores and pattern hooked."""
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, H, Tq, Tk)
        causal = _causal_mask(q.size(-2), k.size(-2), q.device)  # (Tq, Tk)
        scores = self.hook_scores(scores.masked_fill(~causal, float("-inf")))  # (B, H, Tq, Tk)
        pattern = self.hook_pattern(F.softmax(scores, dim=-1))  # (B, H, Tq, Tk)
        return self.attn_dropout(pattern) @ v  # (B, H, Tq, Dh)


def _causal_mask(Tq: int, Tk: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) bool, True where allowed: the queries are the last Tq of Tk positions."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def mlp_hidden(config: GPTConfig) -> int:
    """The MLP's hidden width F: 4C, or 2/3 of it (rounded down) for SwiGLU, whose
    ``c_fc`` has two outputs per hidden unit (so both keep about 8C^2 weights)."""
    return 2 * 4 * config.n_embd // 3 if config.activation == "swiglu" else 4 * config.n_embd


class ReLU2(nn.Module):
    """relu(x)^2, elementwise (So et al. 2021, Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


class SwiGLU(nn.Module):
    """(..., 2F) -> (..., F): silu(a) * b for a, b the first and second halves
    (Shazeer 2020; silu(a) = a * sigmoid(a))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)  # 2 x (..., F)
        return F.silu(a) * b


def make_activation(name: str) -> nn.Module:
    """The MLP nonlinearity ``GPTConfig.activation`` names."""
    if name == "relu2":
        return ReLU2()
    if name == "swiglu":
        return SwiGLU()
    return nn.GELU(approximate="tanh" if name == "gelu_tanh" else "none")


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(C, F) -> activation -> Linear(F, C) -> dropout.

    F = 4C (``mlp_hidden``); for SwiGLU ``c_fc`` is Linear(C, 2F) and the activation
    halves it. ``hook_pre`` sees ``c_fc``'s output (B, T, F or 2F), ``hook_post`` the
    activation's (B, T, F).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = mlp_hidden(config)
        fc_out = 2 * hidden if config.activation == "swiglu" else hidden
        self.c_fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)
        self.act = make_activation(config.activation)  # (B, T, F or 2F) -> (B, T, F)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.hook_pre = HookPoint()  # (B, T, F), SwiGLU (B, T, 2F)
        self.hook_post = HookPoint()  # (B, T, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        pre = self.hook_pre(self.c_fc(x))  # (B, T, F) or (B, T, 2F)
        post = self.hook_post(self.act(pre))  # (B, T, F)
        return self.dropout(self.c_proj(post))  # (B, T, C)


class Block(nn.Module):
    """Transformer block, pre-norm (GPT-2, Radford et al. 2019) or post-norm (GPT-1,
    Radford et al. 2018; Vaswani et al. 2017), as ``config.norm_position`` says.

    Pre-norm: x + attn(ln_1(x)), then x + mlp(ln_2(x)); the norms see each sublayer's
    input and the residual stream itself is never normalised.
    Post-norm: ln_1(x + attn(x)), then ln_2(x + mlp(x)); each sum is normalised, so
    the stream between and after the sublayers is.

    The hook points mean the same in both: ``hook_resid_pre`` the block's input,
    ``hook_attn_out`` and ``hook_mlp_out`` the sublayers' outputs, ``hook_resid_mid``
    the stream the MLP and its skip connection read, ``hook_resid_post`` the block's
    output (the next block's ``hook_resid_pre``). In post-norm ``hook_resid_mid`` and
    ``hook_resid_post`` are therefore after ``ln_1`` and ``ln_2``.

    Attention-only (``config.mlp=False``; Elhage et al. 2021, TransformerLens's
    ``attn_only``): no ``ln_2``, ``mlp``, ``hook_resid_mid`` or ``hook_mlp_out``; the
    block is x + attn(ln_1(x)) (pre-norm) or ln_1(x + attn(x)) (post-norm), and that
    sum is ``hook_resid_post``.

    Attributes:
        layer: its index i from 0, so it is ``blocks.{i}`` in ``GPT.named_layers()``;
            each of its hook points carries the same ``layer``.
        has_mlp: ``config.mlp``: whether it has the MLP sublayer.
    """

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.post_norm = config.norm_position == "post"
        self.has_mlp = config.mlp
        # registered in the order data meets them, so hook_dict lists them that way (the
        # hook points; post-norm meets ln_1 and ln_2 after the sublayers, listed as in pre-norm)
        self.hook_resid_pre = HookPoint()  # (B, T, C)
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.hook_attn_out = HookPoint()  # (B, T, C)
        if self.has_mlp:  # attention-only blocks have none of these (not even as None)
            self.hook_resid_mid = HookPoint()  # (B, T, C)
            self.ln_2 = make_norm(config)
            self.mlp = MLP(config)
            self.hook_mlp_out = HookPoint()  # (B, T, C)
        self.hook_resid_post = HookPoint()  # (B, T, C)
        for module in self.modules():
            if isinstance(module, HookPoint):
                module.layer = layer

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); ``kv``: this layer's KV cache slot, if any;
        ``rope``: the rotary cos, sin (T, Dh/2) of these positions, if used."""
        x = self.hook_resid_pre(x)  # (B, T, C)
        if self.post_norm:
            attn_out = self.hook_attn_out(self.attn(x, kv, rope))  # (B, T, C)
            if not self.has_mlp:
                return self.hook_resid_post(self.ln_1(x + attn_out))  # (B, T, C)
            x = self.hook_resid_mid(self.ln_1(x + attn_out))  # (B, T, C)
            mlp_out = self.hook_mlp_out(self.mlp(x))  # (B, T, C)
            return self.hook_resid_post(self.ln_2(x + mlp_out))  # (B, T, C)
        attn_out = self.hook_attn_out(self.attn(self.ln_1(x), kv, rope))  # (B, T, C)
        if not self.has_mlp:
            return self.hook_resid_post(x + attn_out)  # (B, T, C)
        x = self.hook_resid_mid(x + attn_out)  # (B, T, C)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln_2(x)))  # (B, T, C)
        return self.hook_resid_post(x + mlp_out)  # (B, T, C)


class GPT(nn.Module):
    """Decoder-only transformer language model (GPT-2 architecture, nanoGPT layout).

    With ``norm_position="post"`` (GPT-1) there is no ``ln_f`` and no ``hook_final_norm``:
    the last block's ``hook_resid_post``, already normalised, goes to ``lm_head``.
    With ``mlp=False`` every block is attention-only (``Block``): an attention-only
    transformer (Elhage et al. 2021).

    Attributes:
        config: the ``GPTConfig`` it was built from.
        hook_dict: the ``HookPoint`` entries of ``named_layers()``, by their dotted
            TransformerLens-style name (``"blocks.0.attn.hook_pattern"``).
            ``hooks([(glob, fn)])`` attaches hook functions for a ``with`` block;
            ``run_with_cache(idx, globs)`` returns activations by name.

    Raises:
        ValueError: ``config.vocab_size`` is None, or ``config.validate()`` fails.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError(
                "model.vocab_size=None must be set (from the tokenizer) before building GPT"
            )
        config.validate()
        self.config = config
        layers: dict[str, nn.Module] = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        # fixed tables are left out of checkpoints and recomputed from the config
        if config.pos_encoding == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            pe = sinusoidal_positions(config.block_size, config.n_embd)  # (block_size, C)
            self.register_buffer("sinusoidal_pe", pe, persistent=False)
        else:  # rope: (block_size, Dh/2) each
            cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        layers["drop"] = nn.Dropout(config.dropout)
        layers["h"] = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        if config.norm_position == "pre":  # post-norm blocks end normalised: GPT-1 has no ln_f
            layers["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:  # Press & Wolf 2017: input and output embeddings share one matrix
            self.lm_head.weight = self.transformer.wte.weight
        self.hook_embed = HookPoint()  # (B, T, C)
        if config.pos_encoding != "rope":  # rope adds no position embedding
            self.hook_pos_embed = HookPoint()  # (B, T, C)
        if "ln_f" in self.transformer:
            self.hook_final_norm = HookPoint()  # (B, T, C)
        self.hook_logits = HookPoint()  # (B, T, V)
        self._init_weights()
        self.hook_dict = self._build_hook_dict()

    def _init_weights(self) -> None:
        """GPT-2 init (Radford et al. 2019, section 2.3; nanoGPT).

        Linear and Embedding weights ~ N(0, 0.02), biases 0, LayerNorm (1, 0); each
        residual projection (``c_proj``) ~ N(0, 0.02 / sqrt(2 * n_layer)) so the
        residual stream's variance does not grow with depth, or 0 with
        ``zero_init_proj`` (the random draws are made either way, so the other
        weights are the same).
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=residual_std)
                if self.config.zero_init_proj:
                    nn.init.zeros_(p)

    def named_layers(self, recurse: bool = True) -> dict[str, nn.Module]:
        """The one table from the names a user sees to modules.

        The model's own parts, in the order data meets them: ``wte``, ``hook_embed``,
        ``wpe`` (learned positions only), ``hook_pos_embed`` (not with rope, which adds
        no position embedding), ``drop``, ``blocks.{i}``
        (a ``Block``), ``ln_f`` and ``hook_final_norm`` (pre-norm only; post-norm has no
        final norm), ``lm_head``, ``hook_logits``. With
        ``recurse`` each part is followed by its submodules, in registration order, under
        their paths inside it (``blocks.0.attn``, ``blocks.0.attn.c_attn``, ...).

        A name is the module path with the GPT-2 containers renamed: ``transformer.h.{i}``
        is ``blocks.{i}`` (TransformerLens's name, as in the hook points) and the
        ``transformer.`` prefix is dropped. The leaves keep GPT-2's names (``c_attn``,
        ``ln_f``), which checkpoints and the GPT-2 converter use unchanged. Computed on
        each call, so a module swapped in later (an adapter) is listed as it is now.
        """
        t = self.transformer
        parts: dict[str, nn.Module] = {"wte": t.wte, "hook_embed": self.hook_embed}
        if "wpe" in t:
            parts["wpe"] = t.wpe
        if self.config.pos_encoding != "rope":
            parts["hook_pos_embed"] = self.hook_pos_embed
        parts["drop"] = t.drop
        parts.update({f"blocks.{block.layer}": block for block in t.h})
        if "ln_f" in t:
            parts.update(ln_f=t.ln_f, hook_final_norm=self.hook_final_norm)
        parts.update(lm_head=self.lm_head, hook_logits=self.hook_logits)
        if not recurse:
            return parts
        return {path: module for name, part in parts.items()
                for path, module in part.named_modules(prefix=name)}

    def _build_hook_dict(self) -> dict[str, HookPoint]:
        """The hook points of ``named_layers()``, in data order; set each ``HookPoint.name``."""
        table = {name: m for name, m in self.named_layers().items() if isinstance(m, HookPoint)}
        for name, module in table.items():
            module.name = name
        return table

    def hook_names(self, patterns: str | Sequence[str]) -> list[str]:
        """Hook point names matching the glob ``patterns``, in data order.

        Raises:
            ValueError: a pattern matches nothing; the message names the closest names.
        """
        return match_names(patterns, list(self.hook_dict))

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Sequence[str], HookFn]]) -> Iterator[GPT]:
        """Attach ``(name or glob, fn)`` pairs for the ``with`` block (TransformerLens style).

        ``fn(activation, hook_point)`` returns None to observe or a tensor to replace
        the activation; several hooks on one point run in the order given. All are
        removed when the block ends, by an exception too.

        Raises:
            ValueError: a pattern matches no hook point.
        """
        with hooks_attached(self.hook_dict, fwd_hooks):
            yield self

    def run_with_cache(
        self, idx: torch.Tensor, names: str | Sequence[str] = "*"
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward ``idx`` (B, T); return logits (B, T, V) and the activations at the hook
        points matching ``names`` (globs), detached, keyed by name in data order.

        Caching ``hook_scores`` or ``hook_pattern`` runs those layers' explicit attention path.
        """
        cache: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach()

        with self.hooks([(names, save)]):
            logits, _ = self(idx)  # (B, T, V)
        return logits, {name: cache[name] for name in self.hook_names(names) if name in cache}

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (shared ones counted once).

        With ``non_embedding`` the position embedding is left out, and so is the
        token embedding when it is not tied to ``lm_head`` (tied, it also serves as
        the output layer, so it stays in; as nanoGPT and Kaplan et al. 2020).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.config.pos_encoding == "learned":
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.transformer.wte.weight.numel()
        return n

    def new_kv_cache(self) -> KVCache:
        """An empty ``KVCache`` for ``forward(idx, kv_cache=...)``."""
        return KVCache(self.config.n_layer)

    def _positions(self, T: int, device: torch.device, start: int = 0) -> torch.Tensor:
        """Position embedding rows start..start+T-1, shape (T, C)."""
        if self.config.pos_encoding == "learned":
            return self.transformer.wpe(torch.arange(start, start + T, device=device))  # (T, C)
        return self.sinusoidal_pe[start : start + T]  # (T, C)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_f`` of a residual stream (..., C) -> (..., C); unchanged in a post-norm
        model, which has no ``ln_f``. No hook point: the logit lens reads any layer's
        residual through it (``lm.analysis.interp.lens``)."""
        return self.transformer.ln_f(x) if "ln_f" in self.transformer else x

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of a normalised residual stream (..., C): ``lm_head``, then the
        soft-cap c * tanh(logits / c) if ``logit_softcap`` is set. No hook point."""
        logits = self.lm_head(x)  # (..., V)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)  # (..., V), in (-cap, cap)
        return logits

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits and, given targets, the mean cross-entropy.

        Args:
            idx: (B, T) int64 token ids, T <= block_size.
            targets: (B, T) int64 next-token ids; -100 marks positions to ignore.
            kv_cache: from ``new_kv_cache()``; ``idx`` then continues the cached
                sequence (positions ``len(kv_cache)`` onwards), its keys and values
                are appended, and the logits are those of the new positions only,
                equal (float32 rounding) to the uncached forward of the whole sequence.

        Returns:
            logits (B, T, V) and the scalar loss (None without targets).

        Raises:
            ValueError: idx is not (B, T), or len(kv_cache) + T > block_size (a
                longer sequence must be cropped and recomputed with a new cache).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        start = 0 if kv_cache is None else len(kv_cache)
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence length T={start + T} exceeds model.block_size={self.config.block_size}"
            )
        x = self.hook_embed(self.transformer.wte(idx))  # (B, T, C)
        rope = None
        if self.config.pos_encoding == "rope":  # positions enter inside attention
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        else:
            pos = self._positions(T, idx.device, start).expand(B, T, -1)  # (B, T, C)
            x = x + self.hook_pos_embed(pos)  # (B, T, C)
        x = self.transformer.drop(x)  # (B, T, C)
        kvs = [None] * len(self.transformer.h) if kv_cache is None else kv_cache.layers
        for block, kv in zip(self.transformer.h, kvs):
            x = block(x, kv, rope)  # (B, T, C)
        if "ln_f" in self.transformer:  # post-norm: the blocks' output is normalised already
            x = self.hook_final_norm(self.final_norm(x))  # (B, T, C)
        logits = self.hook_logits(self.unembed(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-100
        )  # ()
        return logits, loss
