"""The Appendix E permutation test: valid under the null, powerful against copies."""

from __future__ import annotations

import numpy as np
import pytest

from audits.permutation import permutation_test


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def p_value(a0: float, a: np.ndarray) -> float:
    return (1 + (a >= a0).sum()) / (1 + len(a))


def null_world(seed: int, n_population=400, k=20, n_samples=60, dim=16):
    """S a random k-subset of T; samples fresh draws from the same distribution as T."""
    rng = np.random.default_rng(seed)
    population = unit(rng.normal(size=(n_population, dim)))
    members = population[rng.choice(n_population, size=k, replace=False)]
    samples = unit(rng.normal(size=(n_samples, dim)))
    return samples, members, population


def test_p_value_is_uniform_ish_under_the_null():
    ps = []
    for seed in range(200):
        samples, members, population = null_world(seed)
        a0, a = permutation_test(samples, members, population, n_permutations=49, seed=seed)
        ps.append(p_value(a0, a))
    ps = np.array(ps)
    # Super-uniform and not degenerate: P(p <= α) <= α (+ 3 binomial sd), mean near 1/2.
    for alpha in (0.05, 0.1, 0.2):
        assert (ps <= alpha).mean() <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / len(ps))
    assert 0.4 <= ps.mean() <= 0.6
    assert (ps <= 0.5).mean() >= 0.35


def test_p_value_is_small_when_samples_copy_members():
    rng = np.random.default_rng(0)
    population = unit(rng.normal(size=(5000, 16)))
    members = population[rng.choice(5000, size=10, replace=False)]
    samples = members.copy()  # every sample is an exact copy of a member
    a0, a = permutation_test(samples, members, population, n_permutations=200, seed=0)
    assert a0 == pytest.approx(1.0, abs=1e-5)
    assert p_value(a0, a) < 0.05
    assert (a0 > a).mean() > 0.9


def test_too_few_samples_is_a_clear_error():
    from leakbench.errors import DataError

    samples, members, population = null_world(0, n_samples=5)
    with pytest.raises(DataError, match="raise n_samples"):
        permutation_test(samples, members, population, n_permutations=5, seed=0)


def test_attack_reuses_the_replication_samples(smoke_harness):
    smoke_harness.run_cell("digits", "ddim", "replication")
    finding = smoke_harness.run_cell("digits", "ddim", "permutation")
    built = [e for e in smoke_harness.cache.events if e.kind == "samples" and e.status != "hit"]
    assert len(built) == 1  # one draw of P, shared by both attacks
    assert 0.0 < finding.value("p_value") <= 1.0
    assert 0.0 <= finding.value("frac_a0_greater") <= 1.0
    assert finding["p_value"].n == smoke_harness.profile.n_permutations
