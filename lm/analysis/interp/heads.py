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
    """The (T, T) float32 0/1 pattern of each kind in ``KINDS`` for ``ids`` (T,)."""
    T = ids.numel()
    previous = torch.diag(torch.ones(T - 1), diagonal=-1)  # 1 at (i, i - 1)
    same = (ids[:, None] == ids[None, :]).float()  # (T, T): token i == token j
    duplicate = torch.tril(same, diagonal=-1)  # j < i
    induction = torch.zeros(T, T)
    induction[:, 1:] = duplicate[:, :-1]  # key j when token j - 1 is an earlier copy of token i
    return {"previous_token": previous, "duplicate_token": duplicate, "induction": induction}


def pattern_score(pattern: torch.Tensor, detection: torch.Tensor) -> torch.Tensor:
    """``sum(A * D) / sum(A)`` over the last two dims: pattern (..., T, T) -> (...,)."""
    return (pattern * detection).sum((-2, -1)) / pattern.sum((-2, -1))


def attention_patterns(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """(L, H, T, T) float32: every layer's ``hook_pattern`` for ``ids`` (T,), T <= block_size."""
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], "*hook_pattern")
    return torch.stack([pattern[0] for pattern in cache.values()]).float()


def head_scores(model: GPT, ids: torch.Tensor, queries: slice = slice(None)) -> dict[str, torch.Tensor]:
    """Each kind's score (L, H) of every head on the sequence ``ids`` (T,) int64.

    Args:
        queries: the query positions scored (default all; ``slice(T // 2, None)`` for the
            second half of a repeated sequence).

    Returns:
        ``{kind: (L, H) float32}`` for the kinds of ``KINDS``.
    """
    patterns = attention_patterns(model, ids)[:, :, queries]  # (L, H, Tq, T)
    return {kind: pattern_score(patterns, detection[queries])
            for kind, detection in detection_patterns(ids).items()}


def mean_head_scores(model: GPT, windows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``head_scores`` averaged over several sequences (each (T_k,), T_k <= block_size),
    equally weighted, as TransformerLens averages a list of prompts."""
    scores = [head_scores(model, ids) for ids in windows]
    return {kind: torch.stack([s[kind] for s in scores]).mean(0) for kind in KINDS}
