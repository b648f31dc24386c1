"""The statistics of ``lm compare``: means with Student t intervals, and Welch's
unequal-variance comparison of two groups (difference, interval, p-value).

Every function takes plain samples (one value per run, in any unit) and returns None
where a quantity is undefined for so few values (``welch`` itself needs two per sample);
none of them knows about runs.
"""

import math
from collections.abc import Sequence

import numpy as np
import scipy.stats


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); None where undefined (n=0, n=1)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else None
    std = float(x.std(ddof=1)) if len(x) >= 2 else None
    return mean, std


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, ...]:
    """Mean and its ``confidence`` Student t interval, ``mean ± t_{(1+confidence)/2, n-1} ·
    s / sqrt(n)`` (s: sample std, ddof=1), in the unit of ``values``.

    Returns:
        ``(mean, ci_low, ci_high)``; the interval is None for n < 2, the mean too for n = 0.
        Source: Student (1908), "The probable error of a mean", Biometrika 6(1):1-25.
    """
    mean, std = mean_std(values)
    if std is None:
        return mean, None, None
    t = float(scipy.stats.t.ppf((1 + confidence) / 2, len(values) - 1))
    half = t * std / math.sqrt(len(values))
    return mean, mean - half, mean + half


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch–Satterthwaite degrees of freedom of ``mean_a - mean_b`` with unequal variances.

    ``(va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1))``; ``var_*`` are sample
    variances (ddof=1). Sources: Satterthwaite (1946), Biometrics Bulletin 2(6):110-114;
    Welch (1947), Biometrika 34(1-2):28-35.
    """
    qa, qb = var_a / n_a, var_b / n_b
    return (qa + qb) ** 2 / (qa**2 / (n_a - 1) + qb**2 / (n_b - 1))


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, ...]:
    """Welch's unequal-variance comparison of two samples (each n >= 2).

    Returns:
        ``(diff, ci_low, ci_high, p)``: ``diff = mean(a) - mean(b)``, its ``confidence``
        interval ``diff ± t_{(1+confidence)/2, df} · sqrt(va/na + vb/nb)`` with ``df`` from
        ``welch_df``, and the two-sided p-value of Welch's t-test
        (``scipy.stats.ttest_ind(a, b, equal_var=False)``). Both samples constant: the
        interval and p are NaN (no spread, t undefined). Source: Welch (1947),
        "The generalization of 'Student's' problem when several different population
        variances are involved", Biometrika 34(1-2):28-35.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert len(a) >= 2 and len(b) >= 2, "Welch's test needs two values per sample"
    va, vb = a.var(ddof=1), b.var(ddof=1)
    diff = float(a.mean() - b.mean())
    se = math.sqrt(va / len(a) + vb / len(b))
    if se == 0:
        return diff, math.nan, math.nan, math.nan
    half = scipy.stats.t.ppf((1 + confidence) / 2, welch_df(va, len(a), vb, len(b))) * se
    p = scipy.stats.ttest_ind(a, b, equal_var=False).pvalue
    return diff, diff - float(half), diff + float(half), float(p)


def difference(values: Sequence[float], base_values: Sequence[float]) -> tuple[float | None, ...]:
    """``(diff, ci_low, ci_high, p)`` of ``mean(values) - mean(base_values)``: ``welch``
    when both samples have two values or more; the point difference alone (interval and
    p None) when one has a single value; all None when one is empty."""
    if len(values) >= 2 and len(base_values) >= 2:
        return welch(values, base_values)
    if values and base_values:
        return mean_std(values)[0] - mean_std(base_values)[0], None, None, None
    return None, None, None, None
