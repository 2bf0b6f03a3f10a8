"""The one-run privacy audit (Steinke, Nasr and Jagielski 2023): bound, canaries, attack."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from scipy import stats as st

from leakbench import stats
from leakbench.data.sources import open_dataset, parse_dataset_spec
from leakbench.data.splits import SPLIT_VERSION, SplitOptions, make_splits
from leakbench.errors import DataError, UsageError

# --- The bound ------------------------------------------------------------------------------


def p_value_by_cdf(m, r, v, eps, delta):
    """Theorem 3.1 written independently: tails from scipy's binomial CDF, max over i by loop."""
    q = math.exp(eps) / (1 + math.exp(eps))
    B = st.binom(r, q)
    beta = 1.0 - B.cdf(v - 1)
    alpha = max([(B.cdf(v - 1) - B.cdf(v - i - 1)) / i for i in range(1, v + 1)], default=0.0)
    return min(1.0, beta + 2 * m * delta * alpha)


@pytest.mark.parametrize("delta", [0.0, 1e-5, 1e-3])
@pytest.mark.parametrize("r,v", [(1, 1), (10, 7), (50, 50), (100, 62), (200, 120), (300, 0)])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 6.0])
def test_p_value_matches_scipy_binomial_tail(r, v, delta, eps):
    m = 2 * r + 5
    assert stats.one_run_p_value(m, r, v, eps, delta) == pytest.approx(
        p_value_by_cdf(m, r, v, eps, delta), rel=1e-6, abs=1e-12)


def test_bound_inverts_the_p_value():
    m, r, v, delta = 500, 200, 150, 1e-5
    eps = stats.one_run_eps_lower_bound(m, r, v, delta=delta)
    assert eps > 0
    assert stats.one_run_p_value(m, r, v, eps, delta) == pytest.approx(0.05, abs=1e-6)
    assert stats.one_run_p_value(m, r, v, eps + 0.05, delta) > 0.05


@pytest.mark.parametrize("r", [1, 10, 100, 1000])
def test_all_wrong_or_chance_gives_zero(r):
    assert stats.one_run_eps_lower_bound(r, r, 0, delta=1e-5) == 0.0
    assert stats.one_run_eps_lower_bound(r, r, r // 2, delta=1e-5) == 0.0


def test_all_right_grows_with_r_and_stays_below_the_ceiling():
    # With every guess right and δ = 0 the p-value is q^r, so the bound is logit(0.05^(1/r)):
    # the most r guesses can ever certify at 95 % confidence (the paper's Fig. 1 ceiling).
    assert stats.one_run_eps_lower_bound(1000, 2, 2, delta=0.0) == 0.0  # 1/4 > 5 %: no proof
    rs = [5, 10, 50, 100, 500, 1000]
    bounds = [stats.one_run_eps_lower_bound(1000, r, r, delta=1e-5) for r in rs]
    ceilings = [math.log(0.05 ** (1 / r) / (1 - 0.05 ** (1 / r))) for r in rs]
    assert all(b2 > b1 for b1, b2 in zip(bounds, bounds[1:]))
    assert all(b <= c + 1e-9 for b, c in zip(bounds, ceilings))
    for r, c in zip(rs, ceilings):
        assert stats.one_run_eps_lower_bound(1000, r, r, delta=0.0) == pytest.approx(c, abs=1e-6)


def test_thousand_right_at_delta_1e5_is_about_5_8():
    # The paper (and issue 15): all of 1,000 guesses right certifies about ε ≈ 5.8 at δ = 1e-5.
    assert stats.one_run_eps_lower_bound(1000, 1000, 1000, delta=1e-5) == pytest.approx(5.8,
                                                                                          abs=0.1)


def test_bound_is_monotone_in_v_and_falls_with_delta():
    bounds = [stats.one_run_eps_lower_bound(400, 200, v, delta=1e-5) for v in range(90, 201, 5)]
    assert all(b2 >= b1 for b1, b2 in zip(bounds, bounds[1:]))
    assert bounds[-1] > bounds[0]
    assert (stats.one_run_eps_lower_bound(400, 200, 190, delta=1e-2)
            < stats.one_run_eps_lower_bound(400, 200, 190, delta=1e-5))


def test_bad_counts_are_errors():
    with pytest.raises(ValueError, match="v <= r <= m"):
        stats.one_run_p_value(10, 20, 5, 1.0, 1e-5)


# --- Canaries in the split ---------------------------------------------------------------------

SIZES = dict(image_size=8, n_members=32, pool_size=1024, n_public=64)


def test_no_canaries_leave_the_manifest_as_before():
    # Manifest hashes are part of every cache key: audit_canaries=0 must not move one.
    src = open_dataset("digits")
    a = make_splits(src, seed=0, **SIZES)
    b = make_splits(src, seed=0, options=SplitOptions(audit_canaries=0), **SIZES)
    assert SPLIT_VERSION == "3"
    assert set(a.manifest) == {"version", "dataset", "seed", "image_size", "n_source",
                               "members", "holdout", "public", "canary"}
    assert a.hash == b.hash and a.audit_canaries is None and a.audit_included is None
    assert parse_dataset_spec("digits")[2] == parse_dataset_spec("digits[audit_canaries=0]")[2]


def test_canaries_are_disjoint_and_about_half_are_members():
    src = open_dataset("digits")
    base = make_splits(src, seed=0, **SIZES)
    m = 400
    s = make_splits(src, seed=0, options=SplitOptions(audit_canaries=m), **SIZES)
    again = make_splits(src, seed=0, options=SplitOptions(audit_canaries=m), **SIZES)
    other = make_splits(src, seed=1, options=SplitOptions(audit_canaries=m), **SIZES)
    audit = s.manifest["audit_canaries"]
    idx, included = np.array(audit["indices"]), np.array(audit["included"], bool)

    # Seeded, recorded in the manifest, and about half in (two-sided binomial test).
    assert len(idx) == m and (included == s.audit_included).all()
    assert audit == again.manifest["audit_canaries"] and s.hash == again.hash
    assert (other.audit_included != s.audit_included).any()
    assert st.binomtest(int(included.sum()), m, 0.5).pvalue > 1e-3

    # Never public, never holdout; the included ones (and only they) join the members.
    assert not set(idx) & set(s.manifest["public"]) and not set(idx) & set(s.manifest["holdout"])
    extra = set(s.manifest["members"]) - set(base.manifest["members"])
    assert extra == set(idx[included].tolist())
    assert len(s.members) == 32 + included.sum()
    population = s.population.flatten(1)
    for k in np.flatnonzero(~included)[:20]:  # an OUT canary is in no member or holdout image
        assert not (population == s.audit_canaries[k].flatten()).all(1).any()

    # The public split (and so the pretrained checkpoint's key) does not move.
    assert s.public_hash == base.public_hash


def test_too_many_canaries_is_one_sentence():
    with pytest.raises(DataError, match="fewer audit canaries"):
        make_splits(open_dataset("digits"), seed=0, options=SplitOptions(audit_canaries=2000),
                    **SIZES)
    with pytest.raises(UsageError, match="audit_canaries=-1"):
        parse_dataset_spec("digits[audit_canaries=-1]")


# --- The attack ---------------------------------------------------------------------------------


def test_guesses_take_the_extremes_and_never_the_coins():
    from audits.one_run import guess_counts, one_run_guesses

    scores = np.array([0.3, -2.0, 5.0, 0.1, 4.0, -1.0, 0.2, 0.0])
    g = one_run_guesses(scores, 2, 3)
    assert g.tolist() == [0, -1, 1, 0, 1, -1, 0, -1]
    assert guess_counts(256, 0.25, 0.25) == (64, 64)


def test_k_cannot_be_searched_on_the_scored_canaries():
    from audits.one_run import OneRunParams
    from leakbench.registry import ATTACKS
    from leakbench.specs import parse_spec, resolve_params

    # k₊ and k₋ are fixed fractions; nothing in the params lets the labels choose them.
    assert {f.name for f in dataclasses.fields(OneRunParams)} == {
        "guess_in", "guess_out", "grid_size", "noise_draws", "delta", "confidence"}
    for bad in ("one_run[guess_in=best]", "one_run[guess_in=auto]", "one_run[k=search]",
                "one_run[guess_in=0.6,guess_out=0.6]", "one_run[guess_in=0,guess_out=0]"):
        with pytest.raises(UsageError):
            resolve_params(ATTACKS.get("one_run").Params, parse_spec(bad), owner="attack one_run")


class MemorisingDenoiser:
    """The exact denoiser of the empirical distribution of ``members`` at small noise.

    For x_t it takes the member x₀ nearest to x_t / √ᾱ_t and returns the ε that maps x₀ to
    x_t: perfect on members, wrong on anything else.  A model that memorised its training
    set completely, so the audit must find it leaks.
    """

    def __init__(self, members, schedule):
        self.members, self.schedule = members.flatten(1), schedule

    def __call__(self, x_t, t):
        import torch

        a = self.schedule.at(t, x_t)
        nearest = torch.cdist(x_t.flatten(1) / a.flatten(1)[:, :1].sqrt(), self.members).argmin(1)
        x0 = self.members[nearest].view_as(x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


@pytest.fixture
def canary_ctx(smoke_harness):
    return smoke_harness.context("digits[audit_canaries=64]")


def test_one_run_flags_a_claim_the_audit_refutes(canary_ctx):
    from audits.one_run import OneRun
    from leakbench.api import AuditTarget

    ctx = canary_ctx
    model = MemorisingDenoiser(ctx.splits.members, ctx.schedule)

    def target(info):
        return AuditTarget(key="memoriser", model=model, schedule=ctx.schedule,
                           splits=ctx.splits, ctx=ctx, info=info)

    # Claims ε = 0.5: the audit finds every guess right and refutes it, loudly.
    f = OneRun().run(target({"epsilon": 0.5, "delta": 1e-5}), ctx)
    assert f.value("guesses") == 32 and f.value("correct") == 32
    assert f.value("eps_lower_bound") == pytest.approx(
        stats.one_run_eps_lower_bound(64, 32, 32, delta=1e-5))
    assert f.value("eps_lower_bound") > 2.0 and f.value("eps_excess") > 0
    assert f.headline == "eps_excess" and "PRIVACY BUG" in f.info["alarm"]

    # Claims ε = 50: no alarm, the bound sits below the claim.
    f = OneRun().run(target({"epsilon": 50.0, "delta": 1e-5}), ctx)
    assert f.headline == "eps_lower_bound" and "alarm" not in f.info and f.value("eps_excess") < 0

    # Flipping every coin (same model, same scores) keeps r and turns v into r − v.
    ctx.splits.audit_included = ~ctx.splits.audit_included
    g = OneRun().run(target({}), ctx)
    assert g.value("guesses") == 32 and g.value("correct") == 0
    assert g.value("eps_lower_bound") == 0.0 and "claimed_epsilon" not in [m.name for m in g.metrics]


def test_one_run_needs_canaries(smoke_ctx):
    from audits.one_run import OneRun
    from leakbench.api import AuditTarget

    t = AuditTarget(key="x", model=lambda x, t: x, schedule=smoke_ctx.schedule,
                    splits=smoke_ctx.splits, ctx=smoke_ctx)
    with pytest.raises(UsageError, match="audit_canaries=M"):
        OneRun().run(t, smoke_ctx)


@pytest.mark.slow
def test_one_run_cell_on_dpsgd_reports_the_claim_beside_the_bound(smoke_harness):
    f = smoke_harness.run_cell("digits[audit_canaries=64]", "dpsgd[epsilon=1]", "one_run")
    assert 0.9 < f.value("claimed_epsilon") <= 1.0
    assert f.value("eps_lower_bound") <= f.value("claimed_epsilon")
    assert f.value("guesses") == 32 and 0 <= f.value("correct") <= 32


def test_report_shows_an_alarm_red(tmp_path):
    from leakbench.api import Finding, Metric
    from leakbench.leaderboard import leaderboard_frame
    from leakbench.results import ResultsStore
    from reports.site import build_site
    from reports.tables import leaderboard_rows

    store = ResultsStore(tmp_path / "results")
    run = store.start_run(profile="smoke", seed=0)
    alarm = "PRIVACY BUG: the audit proves ε ≥ 3 at δ = 1e-05 but the target claims ε = 1."
    for defense, info, head in (("dpsgd[epsilon=1]", {"alarm": alarm}, "eps_excess"),
                                ("ddim", {}, "eps_lower_bound")):
        finding = Finding([Metric("eps_lower_bound", 3.0, direction="lower"),
                           Metric("eps_excess", 2.0, direction="lower")], info=info,
                          headline=head)
        store.record(run, dataset="digits", defense=defense, defense_params={},
                     attack="one_run", attack_params={}, finding=finding)
    rows = leaderboard_rows(leaderboard_frame(store.rows()), store.findings())
    cells = {r.defense: r.cells["one_run"] for r in rows}
    assert cells["dpsgd[epsilon=1]"].alarm == alarm and cells["dpsgd[epsilon=1]"].metric == "eps_excess"
    assert cells["ddim"].alarm is None and cells["ddim"].metric == "eps_lower_bound"
    html = build_site(store, tmp_path / "site").read_text()
    assert len(re.findall(r'<td class="num[^"]* alarm"', html)) == 1 and "PRIVACY BUG" in html
