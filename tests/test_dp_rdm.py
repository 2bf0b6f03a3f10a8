"""DP-RDM (paper 002): the private retrieval mechanism, its accounting, its budget, and the
public-only training of its encoder and denoiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leakbench.errors import UsageError
from leakbench.retrieval import (
    PrivateRetrieval,
    QueryBudgetExceeded,
    calibrate_sigma,
    public_neighbour_means,
    retrieval_epsilon,
)


def _unit(rng, n, d=16):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("q,queries,k,epsilon,delta", [
    (0.25, 1000, 8, 10.0, 1 / 128), (0.1, 100, 4, 2.0, 1e-3), (1.0, 10, 1, 5.0, 1e-5)])
def test_calibrated_sigma_spends_the_target_epsilon_by_an_independent_accountant(
        q, queries, k, epsilon, delta):
    from opacus.accountants import RDPAccountant

    sigma, z = calibrate_sigma(epsilon=epsilon, delta=delta, q=q, queries=queries, k=k)
    assert z == pytest.approx(sigma * k / 2)
    # An independent route: Opacus's accountant object, stepped once per query.
    acc = RDPAccountant()
    for _ in range(queries):
        acc.step(noise_multiplier=z, sample_rate=q)
    spent = acc.get_epsilon(delta)
    assert spent <= epsilon * 1.001
    assert spent >= epsilon - 0.05  # calibrated, not merely safe
    assert retrieval_epsilon(sigma=sigma, k=k, q=q, queries=queries, delta=delta) == pytest.approx(
        spent, rel=0.02)
    # Less noise spends more.
    assert retrieval_epsilon(sigma=0.8 * sigma, k=k, q=q, queries=queries, delta=delta) > spent


@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("q", [1.0, 0.5])
def test_one_changed_record_moves_the_mean_by_at_most_2_over_k(k, q):
    rng = np.random.default_rng(k)
    largest = 0.0
    for trial in range(60):
        store = _unit(rng, 40)
        queries = _unit(rng, 5)
        other = store.copy()
        # Replace one record by the query itself: it enters every top-k it can.
        other[rng.integers(40)] = queries[trial % 5]
        a = PrivateRetrieval(store, k=k, q=q, sigma=0.0, budget=5, seed=trial).answer(queries)
        b = PrivateRetrieval(other, k=k, q=q, sigma=0.0, budget=5, seed=trial).answer(queries)
        moved = np.linalg.norm(a - b, axis=1).max()
        assert moved <= 2 / k + 1e-5
        largest = max(largest, moved)
    assert largest > 1 / k  # the bound is not vacuous: a swap really moves it past 1/k


def test_the_mean_is_the_k_nearest_records_over_k_without_noise():
    rng = np.random.default_rng(0)
    store, query = _unit(rng, 30), _unit(rng, 1)
    got = PrivateRetrieval(store, k=3, q=1.0, sigma=0.0, budget=1, seed=0).answer(query)[0]
    top = np.argsort(-(store @ query[0]))[:3]
    np.testing.assert_allclose(got, store[top].sum(0) / 3, atol=1e-6)


def test_noise_has_the_calibrated_std():
    rng = np.random.default_rng(1)
    store = _unit(rng, 50)
    queries = np.repeat(_unit(rng, 1), 400, axis=0)
    plain = PrivateRetrieval(store, k=4, q=1.0, sigma=0.0, budget=400, seed=0).answer(queries)
    noisy = PrivateRetrieval(store, k=4, q=1.0, sigma=0.3, budget=400, seed=0).answer(queries)
    assert np.std(noisy - plain) == pytest.approx(0.3, rel=0.05)


def test_the_datastore_refuses_query_t_plus_one():
    rng = np.random.default_rng(2)
    mech = PrivateRetrieval(_unit(rng, 20), k=2, q=0.5, sigma=0.1, budget=7, seed=0)
    mech.answer(_unit(rng, 4))
    mech.answer(_unit(rng, 3))
    with pytest.raises(QueryBudgetExceeded, match="budget is 7 queries"):
        mech.answer(_unit(rng, 1))
    assert mech.used == 7


def test_a_public_image_never_retrieves_itself_even_with_duplicates():
    rng = np.random.default_rng(3)
    emb = _unit(rng, 30)
    emb[5] = emb[4]  # an exact duplicate ties with the image itself
    means, idx = public_neighbour_means(emb, k=3)
    assert idx.shape == (30, 3)
    assert not (idx == np.arange(30)[:, None]).any()
    assert 5 in idx[4] and 4 in idx[5]  # the duplicate is a neighbour, the image is not
    np.testing.assert_allclose(means[0], emb[idx[0]].sum(0) / 3, atol=1e-6)
    with pytest.raises(UsageError, match="too few"):
        public_neighbour_means(emb[:3], k=3)


def test_encoder_and_conditional_denoiser_never_depend_on_the_members(smoke_harness):
    from leakbench.diffusion.conditional import conditional_spec
    from leakbench.retrieval import encoder_spec

    h = smoke_harness
    a, b = h.context("digits[members=16]"), h.context("digits[members=24]")
    assert a.splits.hash != b.splits.hash
    assert encoder_spec(a) == encoder_spec(b)
    assert conditional_spec(a, k=4, sigma_max=1.0) == conditional_spec(b, k=4, sigma_max=1.0)
    h.target("digits[members=16]", "dp_rdm[k=4]")
    h.target("digits[members=24]", "dp_rdm[k=4]")
    events = [(e.kind, e.status) for e in h.cache.events]
    assert events.count(("retrieval-encoder", "built")) == 1
    assert events.count(("conditional-denoiser", "built")) == 1
    assert events.count(("conditional-denoiser", "hit")) == 1
    assert ("denoiser", "built") not in events  # nothing was fine-tuned on the members


def test_dp_rdm_target_spends_at_most_its_epsilon_and_samples_from_its_bank(smoke_harness):
    h = smoke_harness
    built = h.target("digits", "dp_rdm[k=4,queries=20]")
    target = built.target
    info = target.info
    assert 0 < info["epsilon"] <= 10.0 * 1.001 and info["delta"] == pytest.approx(1 / 32)
    assert info["sigma"] > 0 and info["queries"] == 20
    images = target.sample(50)  # 50 images from 20 released conditionings: reuse, no new query
    assert images.shape[0] == 50 and bool(images.isfinite().all())
    x = h.context("digits").splits.members[:4]
    eps = target.predict_noise(x, torch.full((4,), 10))
    assert eps.shape == x.shape and bool(eps.isfinite().all())
    names = {m.name for m in built.defense.figures(target)}
    assert {"epsilon", "delta", "sigma", "queries", "encoder_seconds"} <= names


def test_reference_variants_state_their_guarantee(smoke_harness):
    h = smoke_harness
    plain = h.target("digits", "dp_rdm[k=4,private=false]").target.info
    assert "epsilon" not in plain and plain["sigma"] == 0 and plain["q"] == 1.0
    public_only = h.target("digits", "dp_rdm[k=4,lam=0]").target.info
    assert public_only["epsilon"] == 0.0


def test_dp_rdm_bad_settings_are_one_sentence(smoke_harness):
    h = smoke_harness
    with pytest.raises(UsageError, match="fewer than k=8"):
        h.target("digits", "dp_rdm[q=0.1]")  # 32 members × 0.1 = 3.2 records < k
    with pytest.raises(UsageError, match="public split"):
        h.target("digits[public=0]", "dp_rdm")
    with pytest.raises(UsageError, match="lam=2.0 must be in"):
        h.target("digits", "dp_rdm[lam=2]")


def test_public_encoder_feature_loads_the_encoder_once_per_extractor(smoke_harness):
    from leakbench.retrieval import PublicEncoderFeatures

    h = smoke_harness
    ctx = h.context("digits")
    feats = PublicEncoderFeatures(ctx)
    images = ctx.splits.members[:8]
    first = feats(images)
    before = len(h.cache.events)
    again = feats(images)
    assert len(h.cache.events) == before  # no second cache read for the second call
    np.testing.assert_array_equal(first, again)
    assert first.shape == (8, 16)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
