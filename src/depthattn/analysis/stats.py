"""Statistics over seeds: mean ± std per method, and the paired difference to a baseline with a
paired t-test and a bootstrap confidence interval (scipy). Runs of the same seed share the data
order and — for methods without extra parameters — the initial weights, so pairing by seed
removes most of the seed-to-seed noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from depthattn.utils.errors import DepthAttnError


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
    # Standardised effect of the pairing (Cohen's d_z = mean / std of the differences), with
    # the exact interval from the noncentral t distribution; None without spread.
    effect_size: float | None = None
    effect_ci_low: float | None = None
    effect_ci_high: float | None = None


def summarize(values: Sequence[float]) -> Summary:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return Summary(float(array.mean()), std, len(array))


def paired_difference(method: Sequence[float], baseline: Sequence[float],
                      confidence: float = 0.95, resamples: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    if len(method) != len(baseline):
        raise DepthAttnError(f"paired values need equal lengths, got {len(method)} and {len(baseline)}")
    diff = np.asarray(method, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    n = len(diff)
    std = float(diff.std(ddof=1)) if n > 1 else 0.0
    t = p = low = high = d = d_low = d_high = None
    if n > 1 and std > 0:
        test = stats.ttest_rel(method, baseline)
        t, p = float(test.statistic), float(test.pvalue)
        boot = stats.bootstrap((diff,), np.mean, confidence_level=confidence,
                               n_resamples=resamples, method="percentile",
                               random_state=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        d = float(diff.mean() / std)
        if n > 2:  # with one degree of freedom the noncentral t is too heavy-tailed to invert
            d_low, d_high = cohens_dz_interval(t, n, confidence)
    return PairedDifference(float(diff.mean()), std, n, t, p, low, high, confidence, d, d_low,
                            d_high)


def cohens_dz_interval(t: float, n: int, confidence: float = 0.95) -> tuple[float | None,
                                                                              float | None]:
    """Interval of d_z = t / sqrt(n) by inverting the noncentral t distribution (df = n − 1):
    the noncentrality parameters that put the observed t at the upper and lower tail. A bound
    the numerics cannot reach (extreme t) is None."""
    df, tail = n - 1, (1 - confidence) / 2

    def ncp_at(quantile: float) -> float | None:
        # nct.cdf(t; df, ncp) falls from 1 to 0 as ncp grows: widen a bracket around t
        f = lambda ncp: stats.nct.cdf(t, df, ncp) - quantile  # noqa: E731
        for span in (1, 2, 4, 8, 16, 32, 64):
            low, high = f(t - span), f(t + span)
            if math.isfinite(low) and math.isfinite(high) and low > 0 > high:
                return optimize.brentq(f, t - span, t + span) / math.sqrt(n)
        return None

    return ncp_at(1 - tail), ncp_at(tail)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of one family of tests (None: no test, left out of the
    family): the i-th smallest of m p-values becomes max over j <= i of min(1, (m − j + 1)·p_j).
    Rejecting where the adjusted p < α keeps the chance of any false rejection below α."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running, m = 0.0, len(tested)
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"
