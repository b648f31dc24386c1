"""lm/analysis/compare/stats.py: sample std, Welch's df, interval and p against scipy and
hand computations."""

import math
import statistics

import numpy as np
import pytest
from scipy import stats

from lm.analysis.compare.stats import mean_std, welch, welch_df


def test_mean_std_is_sample_std_and_undefined_for_one_value():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, statistics.stdev([1, 2, 4])))
    assert mean_std([1.5]) == (1.5, None)


def test_welch_df_by_hand():
    # a = [1, 2, 3, 4]: var 5/3, n 4; b = [2, 4, 6]: var 4, n 3.
    qa, qb = (5 / 3) / 4, 4 / 3
    by_hand = (qa + qb) ** 2 / (qa**2 / 3 + qb**2 / 2)
    assert welch_df(5 / 3, 4, 4.0, 3) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(3.2347, abs=1e-4)


def test_welch_matches_scipy_and_a_hand_computed_interval():
    a, b = [2.31, 2.35, 2.29, 2.40], [2.45, 2.41, 2.52]
    diff, low, high, p = welch(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(reference.pvalue, rel=1e-12)
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    se = math.sqrt(va / 4 + vb / 3)
    df = (va / 4 + vb / 3) ** 2 / ((va / 4) ** 2 / 3 + (vb / 3) ** 2 / 2)
    half = stats.t.ppf(0.975, df) * se
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (low, high) == pytest.approx((diff - half, diff + half))
    assert (low, high) == pytest.approx(tuple(reference.confidence_interval(0.95)))
    assert low < diff < high < 0
