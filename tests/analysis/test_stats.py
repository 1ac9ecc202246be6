"""Effect sizes: Cohen's d_z and its noncentral-t interval against independent checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from depthattn.analysis.stats import cohens_dz_interval, paired_difference


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
