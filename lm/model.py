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

Sources:
    Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2).
    Vaswani et al. 2017, "Attention Is All You Need" (sinusoidal positions).
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

POS_ENCODINGS = ("learned", "sinusoidal")
ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # name -> nn.GELU(approximate=...)


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
        activation: ``"gelu"`` (exact, erf) or ``"gelu_tanh"`` (GPT-2's ``gelu_new``).
        layer_norm_epsilon: LayerNorm epsilon (GPT-2: 1e-5).

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

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C).

        With ``kv`` (this layer's slot of a ``KVCache``) the T new positions attend
        to the cached keys and values too, and their own k, v are appended to it.
        The hook points see the new positions only (hook_scores/hook_pattern:
        (B, H, T, T_past + T)).
        """
        B, T, C = x.shape
        H, Dh = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = self.hook_q(q.view(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
        k = self.hook_k(k.view(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
        v = self.hook_v(v.view(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
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


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=ACTIVATIONS[config.activation])
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.hook_pre = HookPoint()  # (B, T, 4C)
        self.hook_post = HookPoint()  # (B, T, 4C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        pre = self.hook_pre(self.c_fc(x))  # (B, T, 4C)
        post = self.hook_post(self.gelu(pre))  # (B, T, 4C)
        return self.dropout(self.c_proj(post))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    Attributes:
        layer: its index i from 0, so it is ``blocks.{i}`` in ``GPT.named_layers()``;
            each of its hook points carries the same ``layer``.
    """

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        eps, bias = config.layer_norm_epsilon, config.bias
        # registered in the order data meets them, so hook_dict lists them that way
        self.hook_resid_pre = HookPoint()  # (B, T, C)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.attn = CausalSelfAttention(config)
        self.hook_attn_out = HookPoint()  # (B, T, C)
        self.hook_resid_mid = HookPoint()  # (B, T, C)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.mlp = MLP(config)
        self.hook_mlp_out = HookPoint()  # (B, T, C)
        self.hook_resid_post = HookPoint()  # (B, T, C)
        for module in self.modules():
            if isinstance(module, HookPoint):
                module.layer = layer

    def forward(self, x: torch.Tensor, kv: LayerKV | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); ``kv``: this layer's KV cache slot, if any."""
        x = self.hook_resid_pre(x)  # (B, T, C)
        attn_out = self.hook_attn_out(self.attn(self.ln_1(x), kv))  # (B, T, C)
        x = self.hook_resid_mid(x + attn_out)  # (B, T, C)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln_2(x)))  # (B, T, C)
        return self.hook_resid_post(x + mlp_out)  # (B, T, C)


class GPT(nn.Module):
    """Decoder-only transformer language model (GPT-2 architecture, nanoGPT layout).

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
        if config.pos_encoding == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:  # fixed, so left out of checkpoints and recomputed from the config
            pe = sinusoidal_positions(config.block_size, config.n_embd)  # (block_size, C)
            self.register_buffer("sinusoidal_pe", pe, persistent=False)
        layers["drop"] = nn.Dropout(config.dropout)
        layers["h"] = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        layers["ln_f"] = nn.LayerNorm(
            config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias
        )
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:  # Press & Wolf 2017: input and output embeddings share one matrix
            self.lm_head.weight = self.transformer.wte.weight
        self.hook_embed = HookPoint()  # (B, T, C)
        self.hook_pos_embed = HookPoint()  # (B, T, C)
        self.hook_final_norm = HookPoint()  # (B, T, C)
        self.hook_logits = HookPoint()  # (B, T, V)
        self._init_weights()
        self.hook_dict = self._build_hook_dict()

    def _init_weights(self) -> None:
        """GPT-2 init (Radford et al. 2019, section 2.3; nanoGPT).

        Linear and Embedding weights ~ N(0, 0.02), biases 0, LayerNorm (1, 0); each
        residual projection (``c_proj``) ~ N(0, 0.02 / sqrt(2 * n_layer)) so the
        residual stream's variance does not grow with depth.
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

    def named_layers(self, recurse: bool = True) -> dict[str, nn.Module]:
        """The one table from the names a user sees to modules.

        The model's own parts, in the order data meets them: ``wte``, ``hook_embed``,
        ``wpe`` (learned positions only), ``hook_pos_embed``, ``drop``, ``blocks.{i}``
        (a ``Block``), ``ln_f``, ``hook_final_norm``, ``lm_head``, ``hook_logits``. With
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
        parts.update(hook_pos_embed=self.hook_pos_embed, drop=t.drop)
        parts.update({f"blocks.{block.layer}": block for block in t.h})
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
        tok = self.hook_embed(self.transformer.wte(idx))  # (B, T, C)
        pos = self._positions(T, idx.device, start).expand(B, T, -1)  # (B, T, C)
        pos = self.hook_pos_embed(pos)  # (B, T, C)
        x = self.transformer.drop(tok + pos)  # (B, T, C)
        kvs = [None] * len(self.transformer.h) if kv_cache is None else kv_cache.layers
        for block, kv in zip(self.transformer.h, kvs):
            x = block(x, kv)  # (B, T, C)
        x = self.hook_final_norm(self.transformer.ln_f(x))  # (B, T, C)
        logits = self.hook_logits(self.lm_head(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-100
        )  # ()
        return logits, loss
