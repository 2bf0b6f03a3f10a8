"""Statistics the suite owes its users: confidence intervals and tests, as small pure functions.

Thin wrappers over the field's libraries (statsmodels for proportions and z tests, scikit-learn
for ROC/AUC, scipy for the bootstrap) that fix the suite's conventions: a higher score means
"more likely a member", empty inputs give the uninformative answer instead of NaN.  Written out
here only what none of them ships: Jagielski et al.'s ε bound and Steinke et al.'s one-run bound.
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
from scipy import stats as _st
from scipy.special import expit as _expit
from sklearn import metrics as _skm
from sklearn.exceptions import UndefinedMetricWarning
from statsmodels.stats.proportion import proportion_confint, proportions_ztest
from statsmodels.stats.weightstats import ztest as _ztest


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (statsmodels ``proportion_confint``)."""
    if n <= 0:
        return 0.0, 1.0
    lo, hi = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    # Exact ends where the data sit at a boundary (statsmodels may leave rounding error there).
    return (0.0 if k == 0 else max(0.0, float(lo))), (1.0 if k == n else min(1.0, float(hi)))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for k/n (statsmodels ``proportion_confint``, "beta")."""
    if n <= 0:
        return 0.0, 1.0
    lo, hi = proportion_confint(k, n, alpha=1 - confidence, method="beta")
    return float(lo), float(hi)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """One-sided χ² (pooled two-proportion z) test of H0: p1 >= p2 against H1: p1 < p2.

    Returns (chi2 statistic, one-sided p-value); χ² = z² of the pooled z test
    (statsmodels ``proportions_ztest``, alternative "smaller"; CPSample Table 1 compares a
    defense's replication rate with the undefended one).
    """
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (k1 + k2) / (n1 + n2)
    if pooled in (0.0, 1.0):  # no variance: the test is degenerate, decide by the rates
        return 0.0, 1.0 if k1 / n1 >= k2 / n2 else 0.0
    z, p = proportions_ztest([k1, k2], [n1, n2], alternative="smaller")
    return float(z) ** 2, float(p)


def fraction_above(values: np.ndarray, threshold: float) -> tuple[float, int, int]:
    """(fraction, count, n) of values strictly above ``threshold``."""
    values = np.asarray(values)
    k = int((values > threshold).sum())
    n = int(values.size)
    return (k / n if n else 0.0), k, n


# --- Membership inference: ROC, AUC, TPR at low FPR, bootstrap CIs, empirical ε -----------------
# Convention: a higher score means "more likely a member".


def _labelled(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    return np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]


def roc_curve(member_scores: np.ndarray, nonmember_scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of the rule "member iff score >= threshold", one point per
    distinct score, starting at (0, 0) with threshold +inf (scikit-learn ``roc_curve`` with
    ``drop_intermediate=False``); a rate with an empty group is 0, not NaN."""
    labels, scores = _labelled(member_scores, nonmember_scores)
    if scores.size == 0:
        return np.zeros(1), np.zeros(1), np.array([np.inf])
    with warnings.catch_warnings():  # one group empty: sklearn warns and returns NaN rates
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = _skm.roc_curve(labels, scores, drop_intermediate=False)
    return np.nan_to_num(fpr), np.nan_to_num(tpr), thresholds


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray, *,
            axis: int | None = None) -> float | np.ndarray:
    """Area under the ROC curve, P(member score > non-member score) + ½ P(tie)
    (scikit-learn ``roc_auc_score``); 0.5 when a group is empty.

    With ``axis``, one AUC per slice along that axis at once, as scipy's ``bootstrap``
    asks of a vectorized statistic: U/(n₁n₀) of scipy's ``mannwhitneyu`` (the same number;
    scikit-learn has no batched form, and its per-call input checks made the bootstrap
    about 30× slower than one batched call).
    """
    if axis is not None:
        pos, neg = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
        n_pos, n_neg = pos.shape[axis], neg.shape[axis]
        if n_pos == 0 or n_neg == 0:
            return np.full(np.delete(pos.shape, axis), 0.5)
        u = _st.mannwhitneyu(pos, neg, axis=axis, method="asymptotic").statistic
        return u / (n_pos * n_neg)
    labels, scores = _labelled(member_scores, nonmember_scores)
    if labels.all() or not labels.any():
        return 0.5
    return float(_skm.roc_auc_score(labels, scores))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float, *,
               axis: int | None = None) -> float | np.ndarray:
    """The largest TPR over ROC points with FPR <= ``fpr``; 0 where only (0, 0) qualifies.

    With ``axis``, one TPR per slice along that axis (scipy ``bootstrap``'s vectorized
    statistic).  Written out for that case, since no library ships a batched ROC: allowing
    k = ⌊fpr·n₀⌋ false positives, the best ROC point keeps every score above the
    (k+1)-th largest non-member score v, so TPR = #{member scores > v}/n₁ (1 when k ≥ n₀).
    """
    if axis is None:
        f, t, _ = roc_curve(member_scores, nonmember_scores)
        return float(t[f <= fpr + 1e-12].max())
    pos = np.moveaxis(np.asarray(member_scores, np.float64), axis, -1)
    neg = np.moveaxis(np.asarray(nonmember_scores, np.float64), axis, -1)
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    if n_pos == 0:
        return np.zeros(pos.shape[:-1])
    # The most false positives an ROC point may have: k/n₀ <= fpr (+ the scalar path's 1e-12).
    k = int(np.count_nonzero(np.arange(1, n_neg + 1) / n_neg <= fpr + 1e-12))
    if k >= n_neg:
        return np.ones(np.broadcast_shapes(pos.shape[:-1], neg.shape[:-1]))
    v = -np.partition(-neg, k, axis=-1)[..., k]  # the (k+1)-th largest non-member score
    return (pos > v[..., None]).sum(axis=-1) / n_pos


def bootstrap_ci(
    statistic,
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(members, non-members)``, resampling each group
    independently (scipy ``bootstrap``, ``method="percentile"``, unpaired, seeded by ``seed``).

    A statistic that takes an ``axis`` keyword (``roc_auc``, ``functools.partial(tpr_at_fpr,
    fpr=...)``) is evaluated on all resamples in one call, as scipy does for such statistics;
    any other is called once per resample.  Both draw the same resamples, so both give the
    same CI.  A group of one score resamples to itself, so only the other group is resampled;
    with one score in each (or none) the CI is the point value.
    """
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if min(pos.size, neg.size) == 0 or max(pos.size, neg.size) < 2 or n_bootstrap < 1:
        v = float(statistic(pos, neg))
        return v, v
    if min(pos.size, neg.size) > 1:
        data, stat = (pos, neg), statistic
    else:  # fix the group of one, resample the other
        one_member = pos.size == 1
        data = (neg,) if one_member else (pos,)
        if "axis" in inspect.signature(statistic).parameters:  # stays vectorized
            def stat(x, axis):
                return statistic(pos, x, axis=axis) if one_member else statistic(x, neg, axis=axis)
        else:
            def stat(x):
                return statistic(pos, x) if one_member else statistic(x, neg)
    # Resamples in batches of at most ~2²⁴ scores (128 MiB); one batch at the suite's sizes.
    batch = None if n_bootstrap * (pos.size + neg.size) <= 2**24 else \
        max(1, 2**24 // (pos.size + neg.size))
    res = _st.bootstrap(data, stat, n_resamples=n_bootstrap, batch=batch,
                        confidence_level=confidence, method="percentile", paired=False,
                        random_state=np.random.default_rng([int(seed), 0xB007]))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def two_sample_z(test_values: np.ndarray, train_values: np.ndarray) -> tuple[float, float]:
    """One-sided two-sample Z test (CPSample paper 001, Sec. 4.3; statsmodels ``ztest``).

    z = (μ_test − μ_train) / √(V_test/m + V_train/n), V the unbiased sample variances;
    the p-value is P(Z >= z) under H0: μ_train >= μ_test (training loss not lower).
    """
    test = np.asarray(test_values, dtype=np.float64).ravel()
    train = np.asarray(train_values, dtype=np.float64).ravel()
    if test.size < 2 or train.size < 2:
        return 0.0, 1.0
    if test.var(ddof=1) == 0 and train.var(ddof=1) == 0:  # no spread: decide by the means
        return 0.0, 1.0 if test.mean() <= train.mean() else 0.0
    z, p = _ztest(test, train, alternative="larger", usevar="unequal")
    return float(z), float(p)


def epsilon_from_rates(fpr_high: float, fnr_high: float, delta: float = 1e-5) -> float:
    """Empirical ε that (ε, δ)-DP forbids an attack with these error rates to beat
    (Jagielski et al. 2020, Sec. 3): max(log((1−δ−FPR)/FNR), log((1−δ−FNR)/FPR)), floored at 0.

    Written out here: none of statsmodels, scipy, scikit-learn or Opacus ships this bound."""
    eps = 0.0
    for a, b in ((fpr_high, fnr_high), (fnr_high, fpr_high)):
        if b > 0 and 1 - delta - a > 0:
            eps = max(eps, math.log((1 - delta - a) / b))
    return eps


def eps_lower_bound(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    threshold: float,
    *,
    delta: float = 1e-5,
    confidence: float = 0.95,
) -> float:
    """ε lower bound of the rule "member iff score >= threshold" (Jagielski et al. 2020).

    FPR and FNR are replaced by their Clopper–Pearson upper bounds, so the bound holds
    with the given confidence when the threshold was chosen on other data.
    """
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    fp = int((neg >= threshold).sum())
    fn = int((pos < threshold).sum())
    fpr_high = clopper_pearson(fp, neg.size, confidence)[1]
    fnr_high = clopper_pearson(fn, pos.size, confidence)[1]
    return epsilon_from_rates(fpr_high, fnr_high, delta)


def eps_threshold(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    delta: float = 1e-5,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """(threshold, ε bound) of the ROC threshold with the largest ε bound on these scores.

    Choose the threshold on calibration scores, then evaluate it with ``eps_lower_bound`` on
    disjoint scores: the maximum over thresholds on the same data would be optimistic.
    """
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    fpr, tpr, thresholds = roc_curve(pos, neg)

    # Clopper–Pearson upper bounds of FPR and FNR at every ROC threshold at once.
    fp = np.round(fpr * neg.size)
    fn = np.round((1 - tpr) * pos.size)
    fpr_high = proportion_confint(fp, neg.size, alpha=1 - confidence, method="beta")[1]
    fnr_high = proportion_confint(fn, pos.size, alpha=1 - confidence, method="beta")[1]
    eps = np.array([epsilon_from_rates(f, g, delta) for f, g in zip(fpr_high, fnr_high)])
    i = int(np.argmax(eps))
    return float(thresholds[i]), float(eps[i])


# --- Privacy auditing with one training run (Steinke, Nasr and Jagielski, NeurIPS 2023) ---------
# No library we use ships it (Opacus accounts, it does not audit; jax_privacy's auditing module
# needs JAX and dp_accounting), so the bound is written out here from the paper.


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[W ≥ v] allowed by (ε, δ)-DP for an auditor of m canaries who guesses r and gets v right.

    Steinke, Nasr and Jagielski 2023, Theorem 3.1 (computed as in their Algorithm 2): with
    each canary included independently with probability 1/2, the number of correct guesses
    W is dominated by B ~ Binomial(r, q), q = e^ε / (1 + e^ε), up to a δ term:

        P[W ≥ v] ≤ β + 2 m δ α,   β = P[B ≥ v],   α = max_{1 ≤ i ≤ v} P[v > B ≥ v − i] / i.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m; got m={m}, r={r}, v={v}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1]; got {epsilon}, {delta}")
    q = float(_expit(epsilon))  # accuracy of ε-DP randomised response
    beta = float(_st.binom.sf(v - 1, r, q))
    alpha = 0.0
    if v >= 1 and delta > 0:
        i = np.arange(1, v + 1)
        alpha = float(np.max(np.cumsum(_st.binom.pmf(v - i, r, q)) / i))
    return min(1.0, beta + 2 * m * delta * alpha)


def one_run_eps_lower_bound(m: int, r: int, v: int, *, delta: float,
                            confidence: float = 0.95) -> float:
    """The largest ε that v correct guesses out of r reject at ``confidence`` (0 if none).

    Steinke, Nasr and Jagielski 2023, Algorithm 2: bisection on ε for
    ``one_run_p_value(m, r, v, ε, δ) = 1 − confidence``; the p-value grows with ε, so every
    smaller ε is rejected too.  Without abstaining on weak guesses the bound stays near 0;
    with all of r guesses right and δ = 0 it is logit((1 − confidence)^(1/r)).
    """
    alpha = 1 - confidence
    if not 0 < alpha < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")

    def p(eps: float) -> float:
        return one_run_p_value(m, r, v, eps, delta)

    if p(0.0) >= alpha:
        return 0.0
    hi = 1.0
    while p(hi) < alpha:  # v correct is unlikely even at ε = hi: look further out
        hi *= 2
        if hi > 1e3:
            return math.inf
    lo = 0.0
    for _ in range(60):  # p(lo) < α ≤ p(hi)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p(mid) < alpha else (lo, mid)
    return lo
