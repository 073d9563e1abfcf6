"""Paired comparison of two model variants evaluated on the same folds (numpy, scipy).

A variant and the reference are paired by fold (and seed): each fold's difference
d_k = variant_k - reference_k removes what the fold itself contributes (its speakers,
its class mix), so a gap of one point can be judged against how much the
per-fold gaps vary rather than against the much larger spread of the folds.

Conventions:

* With seeds, values are [K, S] and paired by (fold, seed); the S differences of a
  fold are averaged first, and the tests run across the K folds. Seeds of one fold
  share its test speakers, so counting them as K * S independent pairs would
  overstate the evidence.
* Differences are rounded to 12 decimals before anything else. Accuracies on one
  test fold are multiples of 1 / N_test, so exact ties and zero differences are
  common, and float noise (0.7 - 0.6 != 0.8 - 0.7) must not break them.
* t-test: mean difference, Student t 95% interval (mean ± t_{0.975, K-1} sd / sqrt K)
  and two-sided p-value of the paired t-test, as scipy.stats.ttest_rel.
* Wilcoxon signed-rank test, two-sided: zero differences are dropped (Wilcoxon's
  convention), tied |d| get their average rank, and the p-value is exact under
  the sign-flip null given those ranks, for any K (no normal approximation). With
  K nonzero differences its smallest possible value is 2 / 2^K (0.0625 for 5 folds).

Degenerate cases, returned rather than raised:

* K < 2: the mean is the single difference; the interval and both p-values are NaN
  (nothing to test across one fold).
* All differences equal: the spread is 0, so the interval is [mean, mean]; the
  t-test p-value is its limit, 1.0 when every difference is 0 and 0.0 otherwise.
* Every difference 0: the Wilcoxon p-value is 1.0 (no signed rank at all).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

# Differences are rounded to this many decimals so float noise splits no tie or zero.
_DECIMALS = 12


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """A variant minus the reference, across n paired folds.

    Attributes:
        n: number of paired folds.
        mean: mean per-fold difference.
        ci_low, ci_high: the confidence interval of the mean (Student t).
        t_pvalue: two-sided paired t-test p-value.
        wilcoxon_pvalue: two-sided Wilcoxon signed-rank p-value (exact).
    """

    n: int
    mean: float
    ci_low: float
    ci_high: float
    t_pvalue: float
    wilcoxon_pvalue: float


def paired_difference(
    reference: np.ndarray, variant: np.ndarray, confidence: float = 0.95
) -> PairedDifference:
    """Compares `variant` with `reference`, paired element by element.

    Args:
        reference: [K] per-fold metric, or [K, S] per fold and seed.
        variant: the same shape, paired with `reference` by position.
        confidence: level of the interval, in (0, 1).

    Returns:
        The differences variant - reference, averaged over seeds, summarised across
        the K folds (see the module docstring for the degenerate cases).
    """
    reference = np.asarray(reference, dtype=np.float64)
    variant = np.asarray(variant, dtype=np.float64)
    if reference.shape != variant.shape or reference.ndim not in (1, 2):
        raise ValueError(
            f"expected two arrays of one shape [K] or [K, S], got {reference.shape} "
            f"and {variant.shape}"
        )
    diff = variant - reference
    return difference_summary(diff.mean(axis=1) if diff.ndim == 2 else diff, confidence)


def difference_summary(differences: np.ndarray, confidence: float = 0.95) -> PairedDifference:
    """Mean, interval and paired tests of per-fold differences [K] (variant - reference)."""
    d = np.round(np.asarray(differences, dtype=np.float64), _DECIMALS)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"expected [K] differences with K >= 1, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"non-finite differences: {d.tolist()}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n, mean = d.size, float(d.mean())
    if n < 2:
        return PairedDifference(n, mean, math.nan, math.nan, math.nan, math.nan)
    sem = float(d.std(ddof=1)) / math.sqrt(n)
    if np.all(d == d[0]):  # no spread: t = 0/0 or ±inf
        t_pvalue = 1.0 if d[0] == 0 else 0.0
        return PairedDifference(n, mean, mean, mean, t_pvalue, wilcoxon_pvalue(d))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    t_pvalue = float(2 * stats.t.sf(abs(mean / sem), n - 1))
    return PairedDifference(n, mean, mean - half, mean + half, t_pvalue, wilcoxon_pvalue(d))


def wilcoxon_pvalue(differences: np.ndarray) -> float:
    """Two-sided exact Wilcoxon signed-rank p-value of differences [K].

    Zeros are dropped, ties get average ranks; the null distribution of the
    positive rank sum W+ is built exactly over the 2^K' sign flips of the K' nonzero
    ranks (on doubled ranks, which are integers), and the p-value is
    P(|W+ - E| >= |w+ - E|) with E = sum(ranks) / 2. Returns 1.0 when K' = 0.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    doubled = np.rint(2 * stats.rankdata(np.abs(d))).astype(np.int64)
    # prob[w] = P(doubled W+ = w): each rank is in W+ or not with probability 1/2.
    prob = np.zeros(int(doubled.sum()) + 1)
    prob[0] = 1.0
    for r in doubled:
        prob[r:] = 0.5 * (prob[r:] + prob[:-r])
        prob[:r] *= 0.5
    observed = int(doubled[d > 0].sum())
    total = int(doubled.sum())  # twice the rank sum; E of doubled W+ is total / 2
    extreme = np.abs(2 * np.arange(total + 1) - total) >= abs(2 * observed - total)
    return float(min(1.0, prob[extreme].sum()))
