"""The membership statistics against reference implementations and closed forms."""

from __future__ import annotations

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


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
def test_auc_matches_sklearn(seed, ties):
    from sklearn.metrics import roc_auc_score

    pos, neg = random_scores(seed, ties=ties)
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    assert stats.roc_auc(pos, neg) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]),
                                                    abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
def test_roc_and_tpr_at_fpr_match_sklearn(seed, ties):
    from sklearn.metrics import roc_curve

    pos, neg = random_scores(seed, n_pos=500, n_neg=2000, ties=ties)
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    ref_fpr, ref_tpr, _ = roc_curve(labels, np.r_[pos, neg], drop_intermediate=False)
    fpr, tpr, _ = stats.roc_curve(pos, neg)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    for target in (0.0, 0.001, 0.01, 0.1, 0.5):
        expected = ref_tpr[ref_fpr <= target].max()
        assert stats.tpr_at_fpr(pos, neg, target) == pytest.approx(expected)


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


@pytest.mark.parametrize("seed", range(4))
def test_two_sample_z_matches_statsmodels(seed):
    from statsmodels.stats.weightstats import CompareMeans, ztest

    rng = np.random.default_rng(seed)
    test = rng.normal(1.1, 2.0, 70)  # holdout losses
    train = rng.normal(1.0, 0.5, 130)  # member losses, different variance and size
    z, p = stats.two_sample_z(test, train)
    z_ref, p_ref = ztest(test, train, alternative="larger", usevar="unequal")
    assert z == pytest.approx(z_ref, rel=1e-10)
    assert p == pytest.approx(p_ref, rel=1e-10)
    z_cm, p_cm = CompareMeans.from_data(test, train).ztest_ind(alternative="larger",
                                                              usevar="unequal")
    assert (z, p) == pytest.approx((z_cm, p_cm), rel=1e-10)


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


def test_proportion_helpers_keep_their_conventions():
    assert stats.wilson_interval(0, 20) == (0.0, pytest.approx(0.1611, abs=1e-4))
    assert stats.wilson_interval(20, 20)[1] == 1.0
    chi2, p = stats.two_proportion_test(5, 100, 20, 100)  # p1 < p2: small one-sided p
    assert p < 0.01 and chi2 > 0
    assert stats.two_proportion_test(20, 100, 5, 100)[1] > 0.99
