"""Decoding from a GPT: greedy, temperature, top-k, top-p sampling and beam search.

``generate`` is nanoGPT's ``GPT.generate`` as a function, plus nucleus sampling
(Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"), stop
strings and a KV cache; ``beam_search`` keeps the ``beam_width`` best partial
sequences with the GNMT length penalty (Wu et al. 2016, eq. 14).

The model sees at most its last ``block_size`` tokens (cropped from the left).
With ``use_cache`` and a model that has ``new_kv_cache()`` (``lm.model.GPT``), each
step feeds only the new token; once the sequence outgrows ``block_size`` the
window shifts, every cached position changes, so the cache is dropped and the
cropped window recomputed (from then on each step costs a full forward, as
without the cache). Other models (any ``forward(idx) -> (logits, loss)``) run
uncached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from lm.tokenizers import Tokenizer


def check_decoding_args(
    max_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    beam_width: int = 1,
    length_penalty: float = 0.0,
) -> None:
    """Raise ``ValueError`` for the first argument out of range, one line:
    ``temperature=nan is invalid: must be a finite number >= 0 (0 means greedy)``.

    The rules: max_new_tokens >= 0; temperature finite >= 0; top_k >= 1 or None;
    top_p in (0, 1] or None; beam_width >= 1; length_penalty finite >= 0.
    """
    checks = [
        ("max_new_tokens", max_new_tokens, max_new_tokens >= 0, "an integer >= 0"),
        ("temperature", temperature, math.isfinite(temperature) and temperature >= 0,
         "a finite number >= 0 (0 means greedy)"),
        ("top_k", top_k, top_k is None or top_k >= 1, "an integer >= 1, or null/None for no limit"),
        ("top_p", top_p, top_p is None or 0 < top_p <= 1, "in (0, 1] (1: no limit)"),
        ("beam_width", beam_width, beam_width >= 1, "an integer >= 1"),
        ("length_penalty", length_penalty, math.isfinite(length_penalty) and length_penalty >= 0,
         "a finite number >= 0"),
    ]
    for key, value, ok, rule in checks:
        if not ok:
            raise ValueError(f"{key}={value} is invalid: must be {rule}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) logits with all but the k largest per row set to -inf (ties at the k-th kept)."""
    kth = torch.topk(logits, min(k, logits.size(-1))).values[:, [-1]]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))  # (B, V)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(B, V) logits outside the nucleus set to -inf (Holtzman et al. 2020, section 3.1).

    The nucleus is the smallest set of most likely tokens whose probability sums to
    at least ``p``; the most likely token is always in it.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # 2 x (B, V)
    probs = F.softmax(sorted_logits, dim=-1)  # (B, V)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V), mass of the strictly more likely
    drop_sorted = mass_before >= p  # (B, V)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V), back in vocabulary order
    return logits.masked_fill(drop, float("-inf"))  # (B, V)


def _next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Pick one token per row from last-position logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature  # (B, V)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)  # (B, V)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)  # (B, V)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


class _LastLogits:
    """Last-position logits (B, V) of a growing sequence, incremental with a KV cache.

    Call it with the whole sequence so far; it feeds the model only the tokens it has
    not seen, or the cropped window on a fresh cache when they would not fit.
    """

    def __init__(self, model: nn.Module, use_cache: bool) -> None:
        self.model = model
        self.block_size = model.config.block_size
        self.use_cache = use_cache and hasattr(model, "new_kv_cache")
        self.cache = None
        self.seen = 0  # tokens of the sequence already fed

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.use_cache:
            logits, _ = self.model(idx[:, -self.block_size :])  # (B, T', V)
            return logits[:, -1, :]  # (B, V)
        new = idx[:, self.seen :]  # (B, T_new)
        if self.cache is None or len(self.cache) + new.size(1) > self.block_size:
            self.cache = self.model.new_kv_cache()
            new = idx[:, -self.block_size :]  # (B, T'), recomputed from scratch
        logits, _ = self.model(new, kv_cache=self.cache)  # (B, T_new, V)
        self.seen = idx.size(1)
        return logits[:, -1, :]  # (B, V)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (B',) of the cached sequences (beam search)."""
        if self.cache is not None:
            self.cache.reorder(index)


def prompt_ids(prompt: str, tokenizer: Tokenizer) -> list[int]:
    """The token ids to condition on for ``prompt``: its encoding, or the eos token
    alone for an empty prompt (the model needs a first token; a caller printing the
    text leaves that token out)."""
    return tokenizer.encode(prompt) or [tokenizer.eos_id]


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """(text up to the first occurrence of any stop string, whether one occurred)."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    stop_strings: Sequence[str] | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> torch.Tensor:
    """Extend each prompt by up to ``max_new_tokens`` sampled tokens.

    The model sees at most its last ``model.config.block_size`` tokens (the
    context is cropped from the left). It runs in eval mode, and its previous
    mode is restored afterwards. Per step: logits / temperature, then top-k, then
    top-p, then one draw from the softmax.

    Args:
        model: a ``GPT`` (any module with ``config.block_size`` whose forward
            returns ``(logits (B, T, V), loss)``).
        idx: (B, T) int64 prompt ids; T may exceed block_size.
        max_new_tokens: number of tokens to add (>= 0).
        temperature: logits are divided by it; 0 means greedy (argmax).
        top_k: sample only among the k largest logits (None: all).
        generator: ``torch.Generator`` for ``torch.multinomial``; a seeded one
            gives reproducible samples.
        eos_id: once a row has produced this id it is padded with it; generation
            stops early when every row has produced it.
        top_p: nucleus sampling: only the smallest set of most likely tokens with
            probability mass >= top_p (None: all).
        use_cache: decode incrementally with a KV cache when the model has one;
            the tokens are the same as without it.
        stop_strings: a row is done once ``decode(its new tokens)`` contains one of
            these (needs ``decode``); done rows are padded with ``eos_id`` (or 0 when
            it is None). Cut the decoded text with ``cut_at_stop``.
        decode: token ids -> text, for ``stop_strings``.

    Returns:
        (B, T + n) int64, the prompt followed by n <= max_new_tokens new tokens.

    Raises:
        ValueError: one line (``check_decoding_args``): max_new_tokens < 0, temperature
            negative or not finite, top_k < 1, top_p outside (0, 1], or stop_strings
            without decode.
    """
    check_decoding_args(max_new_tokens, temperature, top_k, top_p)
    if stop_strings and decode is None:
        raise ValueError("stop_strings needs decode (a token ids -> text function)")
    pad = 0 if eos_id is None else eos_id
    T0 = idx.size(1)
    was_training = model.training
    model.eval()
    try:
        last_logits = _LastLogits(model, use_cache)
        done = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)  # (B, 1)
        for _ in range(max_new_tokens):
            nxt = _next_token(last_logits(idx), temperature, top_k, generator, top_p)  # (B, 1)
            nxt = nxt.masked_fill(done, pad)  # (B, 1)
            if eos_id is not None:
                done = done | (nxt == eos_id)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
            if stop_strings:
                done = done | _hit_stop(idx[:, T0:], done, stop_strings, decode)  # (B, 1)
            if bool(done.all()):
                break
    finally:
        model.train(was_training)
    return idx


def _hit_stop(
    new: torch.Tensor, done: torch.Tensor, stop_strings: Sequence[str], decode: Callable
) -> torch.Tensor:
    """(B, 1) bool: rows not yet done whose new tokens (B, n) decode to text holding a stop string."""
    hits = [not d and cut_at_stop(decode(row), stop_strings)[1]
            for row, d in zip(new.tolist(), done[:, 0].tolist())]
    return torch.tensor(hits, dtype=torch.bool, device=new.device)[:, None]  # (B, 1)


def gnmt_length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, eq. 14); alpha = 0 gives 1."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    beam_width: int,
    length_penalty: float = 0.6,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Most likely continuation per prompt under beam search with GNMT length normalisation.

    Each prompt keeps ``beam_width`` partial sequences ranked by
    ``sum log p(token) / lp(n)`` with ``lp(n) = ((5 + n) / 6) ** length_penalty``,
    n the number of new tokens (an ``eos_id`` included; Wu et al. 2016, eq. 14;
    scores only, no coverage penalty). A beam that has produced ``eos_id`` is
    finished: it keeps its score and length and is padded with ``eos_id``. The
    search stops after ``max_new_tokens`` or when every beam is finished. Width 1
    is greedy decoding.

    Args:
        model: as for ``generate`` (a ``GPT`` decodes with a KV cache).
        idx: (B, T) int64 prompts; T may exceed block_size.
        max_new_tokens: tokens to add (>= 0).
        beam_width: beams per prompt (>= 1).
        length_penalty: alpha >= 0; 0 ranks by total log-probability, larger
            values favour longer sequences (GNMT used 0.6 to 0.7).
        eos_id: end-of-sequence id, or None to always generate max_new_tokens.
        use_cache: as for ``generate``.

    Returns:
        (B, T + n) int64, each prompt followed by its best beam, n <= max_new_tokens.

    Raises:
        ValueError: one line (``check_decoding_args``): max_new_tokens < 0, beam_width < 1,
            or length_penalty negative or not finite.
    """
    check_decoding_args(max_new_tokens, beam_width=beam_width, length_penalty=length_penalty)
    B, W = idx.size(0), beam_width
    was_training = model.training
    model.eval()
    try:
        last_logits = _LastLogits(model, use_cache)
        seqs = idx.repeat_interleave(W, dim=0)  # (B*W, T), beams of a prompt side by side
        score = torch.full((B, W), float("-inf"), device=idx.device)  # (B, W) sum of log p
        score[:, 0] = 0.0  # W copies of one prompt: start from one so the beams differ
        length = torch.zeros(B, W, device=idx.device)  # (B, W) new tokens, eos included
        done = torch.zeros(B, W, dtype=torch.bool, device=idx.device)  # (B, W)
        for _ in range(max_new_tokens):
            logp = F.log_softmax(last_logits(seqs).float(), dim=-1).view(B, W, -1)  # (B, W, V)
            cand, cand_len = _candidates(logp, score, length, done, eos_id)  # 2 x (B, W, V)
            ranked = cand / gnmt_length_penalty(cand_len, length_penalty)  # (B, W, V)
            top = ranked.reshape(B, -1).topk(W, dim=-1).indices  # (B, W) into W * V
            beam, token = top // logp.size(-1), top % logp.size(-1)  # 2 x (B, W)
            score, length = cand.reshape(B, -1).gather(1, top), cand_len.reshape(B, -1).gather(1, top)
            rows = (beam + W * torch.arange(B, device=idx.device)[:, None]).view(-1)  # (B*W,)
            seqs = torch.cat([seqs[rows], token.view(-1, 1)], dim=1)  # (B*W, T + 1)
            last_logits.reorder(rows)
            done = done.gather(1, beam)  # (B, W)
            if eos_id is not None:
                done = done | (token == eos_id)  # (B, W)
            if bool(done.all()):
                break
    finally:
        model.train(was_training)
    best = (score / gnmt_length_penalty(length, length_penalty)).argmax(dim=-1)  # (B,)
    return seqs.view(B, W, -1)[torch.arange(B), best]  # (B, T + n)


def _candidates(
    logp: torch.Tensor,
    score: torch.Tensor,
    length: torch.Tensor,
    done: torch.Tensor,
    eos_id: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and lengths (B, W, V) of every one-token extension of every beam.

    A finished beam has one extension, ``eos_id``, at its own score and length.
    """
    cand = score[..., None] + logp  # (B, W, V)
    cand_len = (length + 1)[..., None].expand_as(cand)  # (B, W, V)
    if eos_id is not None and bool(done.any()):
        frozen = torch.full_like(cand[0, 0], float("-inf"))  # (V,)
        frozen[eos_id] = 0.0
        cand = torch.where(done[..., None], score[..., None] + frozen, cand)  # (B, W, V)
        cand_len = torch.where(done[..., None], length[..., None], cand_len)  # (B, W, V)
    return cand, cand_len
