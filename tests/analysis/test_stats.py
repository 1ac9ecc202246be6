"""Effect sizes: Cohen's d_z and its noncentral-t interval against independent checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from depthattn.analysis.stats import cohens_dz_interval, holm, paired_difference


def test_effect_size_is_mean_over_std_of_the_differences():
    a, b = [1.0, 1.1, 0.9, 1.05, 0.95], [1.2, 1.25, 1.1, 1.3, 1.15]
    diff = np.subtract(a, b)
    result = paired_difference(a, b)
    assert result.effect_size == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert result.effect_ci_low < result.effect_size < result.effect_ci_high < 0


@pytest.mark.parametrize("d, n", [(0.3, 400), (-0.5, 900)])
def test_interval_matches_the_large_sample_normal_approximation(d, n):
    """For large n, d_z ± z·sqrt(1/n + d²/(2n)) (Hedges & Olkin); the exact interval is close."""
    t = d * math.sqrt(n)
    low, high = cohens_dz_interval(t, n)
    half = stats.norm.ppf(0.975) * math.sqrt(1 / n + d * d / (2 * n))
    assert low == pytest.approx(d - half, abs=0.01) and high == pytest.approx(d + half, abs=0.01)


def test_interval_covers_the_true_effect_at_its_nominal_rate():
    """Simulated pairs with a known d_z: the 95% interval covers it about 95% of the time."""
    rng = np.random.default_rng(0)
    true_d, n, trials = 0.8, 6, 400
    covered = 0
    for _ in range(trials):
        diff = rng.normal(true_d, 1.0, n)
        t = diff.mean() / (diff.std(ddof=1) / math.sqrt(n))
        low, high = cohens_dz_interval(t, n)
        covered += low <= true_d <= high
    assert 0.92 <= covered / trials <= 0.98


def test_no_interval_without_enough_pairs():
    result = paired_difference([1.0, 1.1], [1.2, 1.25])
    assert result.effect_size is not None and result.effect_ci_low is None
    assert paired_difference([1.0], [1.2]).effect_size is None


def test_holm_adjusts_a_worked_example():
    """Holm (1979)'s step-down on four p-values, by hand: sorted 0.01, 0.02, 0.03, 0.04 become
    4·0.01, max(0.04, 3·0.02), max(0.06, 2·0.03), max(0.06, 0.04); a missing test is left out
    of the family, and adjusted values never exceed 1."""
    assert holm([0.03, 0.01, None, 0.04, 0.02]) == pytest.approx(
        [0.06, 0.04, None, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == [] and holm([None]) == [None]


def test_holm_controls_the_family_wise_error_rate():
    """Under the null (independent uniform p), the chance that any of 8 adjusted p is below
    0.05 is 1 − (1 − 0.05/8)⁸ ≈ 0.049 (within 3 Monte Carlo standard errors); unadjusted, it
    is 1 − 0.95⁸ ≈ 0.34."""
    rng = np.random.default_rng(0)
    families = rng.uniform(size=(4000, 8))
    any_rejected = np.mean([min(holm(list(row))) < 0.05 for row in families])
    se = math.sqrt(0.05 * 0.95 / 4000)
    assert abs(any_rejected - (1 - (1 - 0.05 / 8) ** 8)) < 3 * se
    assert np.mean(families.min(axis=1) < 0.05) > 0.3
