"""Per-head attention scores: previous-token, duplicate-token and induction heads.

For a token sequence, each kind of head has a detection pattern D (T, T), 1 where that
head should attend (query i, key j <= i), 0 elsewhere:

- previous-token: j = i - 1;
- duplicate-token: j < i and token j == token i (an earlier copy of the current token);
- induction (prefix matching): j >= 1 and token j - 1 == token i, j - 1 < i (the token
  after an earlier copy of the current token: what an induction head attends to).

A head's score is the share of its attention on those pairs,
``sum(A * D) / sum(A)`` over all (i, j): the mean over queries of the attention on the
pattern, a query with no such key counting 0. On a random sequence repeated twice, the
induction pattern holds one key per query in the second half, so a perfect induction head
scores about 0.5 over the whole sequence; ``second_half`` reads the repeat alone.

Source: Olsson et al. (2022), "In-context Learning and Induction Heads" (prefix-matching
score); TransformerLens ``head_detector.py`` (``detect_head`` with ``error_measure="mul"``,
its detection patterns), which the tests compare against.
"""

import torch

from lm.model import GPT

KINDS = ("previous_token", "duplicate_token", "induction")


def detection_patterns(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The float32 0/1 pattern of each kind in ``KINDS`` for ``ids`` (T,) or (B, T):
    (T, T) each, or (B, T, T)."""
    T = ids.size(-1)
    same = (ids[..., :, None] == ids[..., None, :]).float()  # (..., T, T): token i == token j
    previous = torch.diag(torch.ones(T - 1), diagonal=-1).expand_as(same)  # 1 at (i, i - 1)
    duplicate = torch.tril(same, diagonal=-1)  # j < i
    induction = torch.zeros_like(same)
    induction[..., 1:] = duplicate[..., :-1]  # key j when token j - 1 is an earlier copy of token i
    return {"previous_token": previous, "duplicate_token": duplicate, "induction": induction}


def pattern_score(pattern: torch.Tensor, detection: torch.Tensor) -> torch.Tensor:
    """``sum(A * D) / sum(A)`` over the last two dims: pattern (..., T, T) -> (...,)."""
    return (pattern * detection).sum((-2, -1)) / pattern.sum((-2, -1))


def attention_patterns(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, H, T, T) float32: every layer's ``hook_pattern`` for ``ids`` (B, T), T <= block_size."""
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, "*hook_pattern")
    return torch.stack(list(cache.values()), dim=1).float()


def head_scores(model: GPT, ids: torch.Tensor, queries: slice = slice(None)) -> dict[str, torch.Tensor]:
    """Each kind's score of every head on the sequence ``ids`` (T,) int64, or on each row
    of a batch ``ids`` (B, T).

    Args:
        queries: the query positions scored (default all; ``slice(T // 2, None)`` for the
            second half of a repeated sequence).

    Returns:
        ``{kind: (L, H) float32}`` for the kinds of ``KINDS``; (B, L, H) for a batch.
    """
    batch = ids if ids.dim() == 2 else ids[None]  # (B, T)
    patterns = attention_patterns(model, batch)[..., queries, :]  # (B, L, H, Tq, T)
    scores = {kind: pattern_score(patterns, detection[:, None, None, queries])  # (B, L, H)
              for kind, detection in detection_patterns(batch).items()}
    return scores if ids.dim() == 2 else {kind: s[0] for kind, s in scores.items()}


def mean_head_scores(model: GPT, windows: list[torch.Tensor],
                     max_floats: int = 2**24) -> dict[str, torch.Tensor]:
    """``head_scores`` averaged over several sequences (each (T_k,), T_k <= block_size),
    equally weighted, as TransformerLens averages a list of prompts. Sequences of one
    length run in batches whose patterns hold at most ``max_floats`` numbers."""
    c = model.config
    per_window: list[dict[str, torch.Tensor]] = []
    for T in sorted({w.numel() for w in windows}):
        same_length = torch.stack([w for w in windows if w.numel() == T])  # (N, T)
        size = max(1, max_floats // (c.n_layer * c.n_head * T * T))
        per_window += [head_scores(model, batch) for batch in same_length.split(size)]
    return {kind: torch.cat([s[kind] for s in per_window]).mean(0) for kind in KINDS}
