"""Statistics over seeds: mean ± std per method, and the paired difference to a baseline with a
paired t-test and a bootstrap confidence interval (scipy). Runs of the same seed share the data
order and — for methods without extra parameters — the initial weights, so pairing by seed
removes most of the seed-to-seed noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single run
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """method − baseline over seeds both have (negative = the method has lower loss)."""

    mean: float
    std: float
    n: int
    t_statistic: float | None  # None with fewer than 2 pairs or zero variance
    p_value: float | None  # two-sided paired t-test
    ci_low: float | None  # bootstrap confidence interval of the mean difference
    ci_high: float | None
    confidence: float


def summarize(values: Sequence[float]) -> Summary:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return Summary(float(array.mean()), std, len(array))


def paired_difference(method: Sequence[float], baseline: Sequence[float],
                      confidence: float = 0.95, resamples: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    if len(method) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(method)} and {len(baseline)}")
    diff = np.asarray(method, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    n = len(diff)
    std = float(diff.std(ddof=1)) if n > 1 else 0.0
    t = p = low = high = None
    if n > 1 and std > 0:
        test = stats.ttest_rel(method, baseline)
        t, p = float(test.statistic), float(test.pvalue)
        boot = stats.bootstrap((diff,), np.mean, confidence_level=confidence,
                               n_resamples=resamples, method="percentile",
                               random_state=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return PairedDifference(float(diff.mean()), std, n, t, p, low, high, confidence)


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"
