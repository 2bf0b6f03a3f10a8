"""The membership statistics against reference implementations and closed forms."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from leakbench import stats


def random_scores(seed: int, n_pos: int = 300, n_neg: int = 400, shift: float = 0.5, ties=False):
    rng = np.random.default_rng(seed)
    pos = rng.normal(shift, 1.0, n_pos)
    neg = rng.normal(0.0, 1.0, n_neg)
    if ties:
        pos, neg = np.round(pos, 1), np.round(neg, 1)
    return pos, neg


def pairwise_auc(pos, neg):
    """P(member > non-member) + ½ P(tie), counted over all pairs: the definition."""
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
def test_auc_is_the_pairwise_probability(seed, ties):
    pos, neg = random_scores(seed, ties=ties)
    assert stats.roc_auc(pos, neg) == pytest.approx(pairwise_auc(pos, neg), abs=1e-12)
    # The vectorized form the bootstrap uses gives the same number, slice by slice.
    batch = stats.roc_auc(np.stack([pos, pos[::-1] - 0.3]), np.stack([neg, neg]), axis=-1)
    assert batch == pytest.approx([pairwise_auc(pos, neg), pairwise_auc(pos - 0.3, neg)],
                                  abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
def test_roc_points_count_the_rule_score_at_least_threshold(seed, ties):
    pos, neg = random_scores(seed, n_pos=500, n_neg=2000, ties=ties)
    fpr, tpr, thresholds = stats.roc_curve(pos, neg)
    assert (fpr[0], tpr[0], thresholds[0]) == (0.0, 0.0, np.inf)
    np.testing.assert_array_equal(thresholds[1:], np.unique(np.r_[pos, neg])[::-1])
    np.testing.assert_allclose(tpr[1:], [(pos >= t).mean() for t in thresholds[1:]])
    np.testing.assert_allclose(fpr[1:], [(neg >= t).mean() for t in thresholds[1:]])
    for target in (0.0, 0.001, 0.01, 0.1, 0.5, 1.0):
        expected = tpr[fpr <= target + 1e-12].max()
        assert stats.tpr_at_fpr(pos, neg, target) == expected
        batch = stats.tpr_at_fpr(np.stack([pos, pos]), np.stack([neg, neg]), target, axis=1)
        np.testing.assert_array_equal(batch, [expected, expected])


def test_roc_numbers_on_a_small_example_with_ties():
    pos, neg = np.array([0.9, 0.5, 0.5]), np.array([0.5, 0.1])
    fpr, tpr, thresholds = stats.roc_curve(pos, neg)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    assert stats.roc_auc(pos, neg) == pytest.approx(5 / 6)
    assert stats.tpr_at_fpr(pos, neg, 0.0) == pytest.approx(1 / 3)
    assert stats.tpr_at_fpr(pos, neg, 0.5) == 1.0
    # Regression of the numbers on seed 0 (equal to the hand-written code before #18).
    pos, neg = random_scores(0)
    assert stats.roc_auc(pos, neg) == pytest.approx(0.626225, abs=1e-12)
    assert stats.tpr_at_fpr(pos, neg, 0.01) == pytest.approx(0.06)
    assert stats.tpr_at_fpr(pos, neg, 0.1) == pytest.approx(0.22)


def test_roc_edge_cases_give_rates_not_nan():
    empty = np.array([])
    fpr, tpr, thresholds = stats.roc_curve(empty, empty)
    assert (fpr.tolist(), tpr.tolist(), thresholds.tolist()) == ([0.0], [0.0], [np.inf])
    assert stats.roc_auc(empty, np.ones(3)) == stats.roc_auc(np.ones(3), empty) == 0.5
    fpr, tpr, _ = stats.roc_curve(np.array([1.0, 2.0]), empty)  # no non-members: FPR 0
    assert not np.isnan(fpr).any() and fpr.max() == 0.0 and tpr[-1] == 1.0
    assert stats.tpr_at_fpr(np.array([1.0, 2.0]), empty, 0.01) == 1.0
    assert stats.tpr_at_fpr(empty, np.array([1.0, 2.0]), 0.01) == 0.0
    assert stats.roc_auc(np.ones(4), np.ones(3)) == 0.5  # all tied


def test_tpr_at_fpr_is_zero_not_nan_when_no_point_is_that_low():
    # Every member scores below the best non-member: no positive TPR at FPR = 0.
    pos, neg = np.array([0.1, 0.2, 0.3]), np.array([0.05, 0.5])
    assert stats.tpr_at_fpr(pos, neg, 0.001) == 0.0
    lo, hi = stats.bootstrap_ci(lambda a, b: stats.tpr_at_fpr(a, b, 0.001), pos, neg,
                                n_bootstrap=50)
    assert not math.isnan(lo) and not math.isnan(hi)


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_n():
    small = random_scores(0, n_pos=50, n_neg=50)
    large = random_scores(0, n_pos=2000, n_neg=2000)
    lo_s, hi_s = stats.bootstrap_ci(stats.roc_auc, *small, n_bootstrap=300)
    lo_l, hi_l = stats.bootstrap_ci(stats.roc_auc, *large, n_bootstrap=300)
    assert lo_s <= stats.roc_auc(*small) <= hi_s
    assert lo_l <= stats.roc_auc(*large) <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3


def test_bootstrap_ci_is_the_seeded_percentile_bootstrap():
    pos, neg = random_scores(0, n_pos=60, n_neg=80, ties=True)
    lo, hi = stats.bootstrap_ci(stats.roc_auc, pos, neg, n_bootstrap=200, seed=3)
    # By hand: each group resampled with replacement from the suite's seeded generator
    # (members' draws first), the statistic on each resample, the 2.5 % and 97.5 % quantiles.
    rng = np.random.default_rng([3, 0xB007])
    i_pos, i_neg = rng.integers(0, pos.size, (200, pos.size)), rng.integers(0, neg.size, (200, neg.size))
    values = [pairwise_auc(pos[i], neg[j]) for i, j in zip(i_pos, i_neg)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)
    # A statistic without ``axis`` is called per resample: same resamples, same CI.
    assert stats.bootstrap_ci(lambda a, b: stats.roc_auc(a, b), pos, neg, n_bootstrap=200,
                              seed=3) == pytest.approx((lo, hi), abs=1e-12)
    tpr = functools.partial(stats.tpr_at_fpr, fpr=0.1)
    assert stats.bootstrap_ci(tpr, pos, neg, n_bootstrap=200, seed=3) == pytest.approx(
        stats.bootstrap_ci(lambda a, b: tpr(a, b), pos, neg, n_bootstrap=200, seed=3), abs=1e-12)
    # Seeded: the same seed repeats the CI, another seed moves it.
    assert stats.bootstrap_ci(stats.roc_auc, pos, neg, n_bootstrap=200, seed=3) == (lo, hi)
    assert stats.bootstrap_ci(stats.roc_auc, pos, neg, n_bootstrap=200, seed=4) != (lo, hi)


def test_bootstrap_ci_numbers():
    # Regression of the default call (1,000 resamples, seed 0) since scipy's bootstrap.
    pos, neg = random_scores(0)
    assert stats.bootstrap_ci(stats.roc_auc, pos, neg) == pytest.approx(
        (0.5857241666666667, 0.6689129166666666), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_two_sample_z_is_the_unequal_variance_formula(seed):
    rng = np.random.default_rng(seed)
    test = rng.normal(1.1, 2.0, 70)  # holdout losses
    train = rng.normal(1.0, 0.5, 130)  # member losses, different variance and size
    z, p = stats.two_sample_z(test, train)
    se = math.sqrt(test.var(ddof=1) / test.size + train.var(ddof=1) / train.size)
    assert z == pytest.approx((test.mean() - train.mean()) / se, rel=1e-10)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-10)  # P(Z >= z)


def test_two_sample_z_numbers_and_edge_cases():
    pos, neg = random_scores(0)  # members score higher here, so "test" = neg is lower
    assert stats.two_sample_z(neg, pos) == pytest.approx((-6.131328783206541,
                                                          0.9999999995642596), rel=1e-10)
    assert stats.two_sample_z(np.ones(1), np.arange(5.0)) == (0.0, 1.0)  # too few values
    assert stats.two_sample_z(np.full(3, 2.0), np.full(4, 1.0)) == (0.0, 0.0)  # no spread
    assert stats.two_sample_z(np.full(3, 1.0), np.full(4, 1.0)) == (0.0, 1.0)


def test_eps_bound_is_zero_for_a_useless_attack():
    # Threshold chosen on calibration scores, bound evaluated on fresh ones: both random.
    for seed in range(5):
        calib = random_scores(seed, shift=0.0)
        scored = random_scores(100 + seed, shift=0.0)
        threshold, _ = stats.eps_threshold(*calib)
        assert stats.eps_lower_bound(*scored, threshold) == 0.0


def test_eps_bound_grows_for_a_perfect_attack():
    eps = []
    for n in (50, 500, 5000):
        pos, neg = np.linspace(2, 3, n), np.linspace(0, 1, n)
        threshold, calib_eps = stats.eps_threshold(pos, neg)
        assert 1 <= threshold <= 2
        eps.append(stats.eps_lower_bound(pos, neg, threshold))
    assert 0 < eps[0] < eps[1] < eps[2]
    # Closed form at zero errors: FPR, FNR <= 1 − (α/2)^(1/n) (Clopper–Pearson, 95 %).
    upper = 1 - 0.025 ** (1 / 5000)
    assert eps[2] == pytest.approx(math.log((1 - 1e-5 - upper) / upper), rel=1e-6)


def test_epsilon_from_rates_closed_form():
    assert stats.epsilon_from_rates(0.5, 0.5) == 0.0
    assert stats.epsilon_from_rates(0.01, 0.5, delta=0.0) == pytest.approx(math.log(0.5 / 0.01))


def test_bootstrap_ci_with_one_score_in_a_group_resamples_only_the_other():
    pos = np.array([0.7])
    neg = np.random.default_rng(0).normal(0.0, 1.0, 200)
    lo, hi = stats.bootstrap_ci(stats.roc_auc, pos, neg, n_bootstrap=200)
    assert lo < stats.roc_auc(pos, neg) < hi  # not the point value: neg was resampled
    assert stats.bootstrap_ci(stats.roc_auc, pos, neg[:1], n_bootstrap=50) == (1.0, 1.0)


ALPHA = 0.05


@pytest.mark.parametrize(("k", "n", "expected"), [
    (0, 20, (0.0, 0.16112515805281938)),
    (7, 20, (0.18119182410108206, 0.5671457233147638)),
    (20, 20, (0.8388748419471806, 1.0)),
    (1, 1, (0.20654931437723745, 1.0)),
    (3, 1000, (0.0010207838811386186, 0.008783014053503173)),
    (0, 0, (0.0, 1.0)),
])
def test_wilson_interval_numbers(k, n, expected):
    lo, hi = stats.wilson_interval(k, n)
    assert (lo, hi) == pytest.approx(expected, abs=1e-12)
    assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)  # exact ends at the bounds
    if n:  # Wilson (1927): centre (p + z²/2n)/(1 + z²/n), half-width z√(p(1−p)/n + z²/4n²)/(…)
        z, p = 1.959963984540054, k / n
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
        assert (lo, hi) == pytest.approx((max(0, centre - half), min(1, centre + half)),
                                         abs=1e-12)


@pytest.mark.parametrize(("k", "n", "expected"), [
    (0, 20, (0.0, 0.1684334709830853)),
    (7, 20, (0.1539092047845412, 0.5921885345328282)),
    (20, 20, (0.8315665290169147, 1.0)),
    (1, 1, (0.025, 1.0)),
    (3, 1000, (0.0006190999316495715, 0.008742023238478303)),
    (0, 0, (0.0, 1.0)),
])
def test_clopper_pearson_numbers(k, n, expected):
    lo, hi = stats.clopper_pearson(k, n)
    assert (lo, hi) == pytest.approx(expected, abs=1e-12)
    if k == 0 and n:  # closed forms at the bounds: 1 − (α/2)^(1/n) and (α/2)^(1/n)
        assert lo == 0.0 and hi == pytest.approx(1 - (ALPHA / 2) ** (1 / n), rel=1e-12)
    if k == n and n:
        assert hi == 1.0 and lo == pytest.approx((ALPHA / 2) ** (1 / n), rel=1e-12)


@pytest.mark.parametrize(("counts", "expected"), [
    ((5, 100, 20, 100), (72 / 7, 0.0006703205586147392)),  # p1 < p2: small one-sided p
    ((20, 100, 5, 100), (72 / 7, 0.9993296794413853)),
    ((3, 50, 3, 50), (0.0, 0.5)),
    ((0, 20, 0, 30), (0.0, 1.0)),  # no variance: decided by the rates
    ((20, 20, 30, 30), (0.0, 1.0)),
    ((0, 0, 1, 5), (0.0, 1.0)),  # an empty group: uninformative
])
def test_two_proportion_test_numbers(counts, expected):
    assert stats.two_proportion_test(*counts) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    k1, n1, k2, n2 = counts
    if n1 and n2 and 0 < k1 + k2 < n1 + n2:  # pooled z: (p1 − p2)/√(p̂(1−p̂)(1/n1 + 1/n2))
        pooled = (k1 + k2) / (n1 + n2)
        z = (k1 / n1 - k2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        assert stats.two_proportion_test(*counts) == pytest.approx(
            (z * z, 0.5 * math.erfc(-z / math.sqrt(2))), rel=1e-12)
