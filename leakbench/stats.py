"""Statistics the suite owes its users: confidence intervals and tests, as small pure functions."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    z = _st.norm.ppf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(_st.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_st.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """One-sided χ² (pooled two-proportion z) test of H0: p1 >= p2 against H1: p1 < p2.

    Returns (chi2 statistic, one-sided p-value); χ² = z² of the pooled z test
    (CPSample Table 1 compares a defense's replication rate with the undefended one).
    """
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var == 0:
        return 0.0, 1.0 if p1 >= p2 else 0.0
    z = (p1 - p2) / math.sqrt(var)
    return z * z, float(_st.norm.cdf(z))


def fraction_above(values: np.ndarray, threshold: float) -> tuple[float, int, int]:
    """(fraction, count, n) of values strictly above ``threshold``."""
    values = np.asarray(values)
    k = int((values > threshold).sum())
    n = int(values.size)
    return (k / n if n else 0.0), k, n
