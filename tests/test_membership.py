"""Membership attacks (loss_mia, secmi, pia, sima): null behaviour, a memorising oracle, plumbing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from leakbench.api import AuditTarget
from leakbench.errors import UsageError
from leakbench.membership import check_timestep, ddim_step, membership_split, timestep_grid

ATTACKS = ["loss_mia", "secmi", "pia", "sima"]
METRICS = ["z", "p_value", "auc", "eps_lower_bound"]
FPR_METRICS = ["tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"]


def attack(name: str, **params):
    from leakbench.registry import ATTACKS as REGISTRY

    cls = REGISTRY.get(name)
    return cls(cls.Params(**params))


def oracle_denoiser(members: torch.Tensor, schedule):
    """The exact ε-predictor of the empirical member distribution: a perfect memoriser.

    E[x₀ | x_t] is the softmax-weighted mean of the members under
    x_t ~ N(√ᾱ_t x_i, (1−ᾱ_t) I), and ε̂ = (x_t − √ᾱ_t E[x₀ | x_t]) / √(1−ᾱ_t).
    """
    flat = members.flatten(1).double()

    def predict(x_t, t):
        a = schedule.alpha_bar[t.cpu()].double().view(-1, 1)
        x = x_t.flatten(1).double()
        # ‖x_t − √ᾱ_t x_i‖² for every (query, member) pair.
        d2 = (x**2).sum(1, keepdim=True) - 2 * a.sqrt() * x @ flat.T + a * (flat**2).sum(1)
        logits = -d2 / (2 * (1 - a))
        x0 = torch.softmax(logits, dim=1) @ flat
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps.float().view_as(x_t)

    return predict


@pytest.mark.parametrize("name", ATTACKS)
def test_memorising_oracle_is_detected(smoke_ctx, name):
    splits = smoke_ctx.splits
    target = AuditTarget(key="oracle", model=oracle_denoiser(splits.members, smoke_ctx.schedule),
                         schedule=smoke_ctx.schedule, splits=splits, ctx=smoke_ctx)
    finding = attack(name, n_bootstrap=200).run(target, smoke_ctx)
    print(name, {m.name: round(m.value, 4) for m in finding.metrics})
    assert set(METRICS) <= {m.name for m in finding.metrics}
    assert finding.value("auc") > 0.9
    assert finding.value("p_value") < 0.01
    assert finding.value("eps_lower_bound") > 0.5
    # 24 scored holdout images cannot resolve 1 % or 0.1 % FPR: no number, a reason instead.
    assert finding.info["n_holdout_scored"] < 100
    assert not set(FPR_METRICS) & {m.name for m in finding.metrics}
    assert set(finding.info["missing_metrics"]) == set(FPR_METRICS)
    for m in finding.metrics:
        assert np.isfinite(m.value)
        if m.ci_low is not None:
            assert m.ci_low <= m.value <= m.ci_high


@pytest.mark.parametrize("name", ATTACKS)
def test_members_equal_holdout_gives_chance_auc(tmp_path, name):
    """A trained (smoke) model whose holdout IS its member set: nothing to tell apart."""
    from leakbench.harness import Harness

    harness = Harness.create(profile="smoke", seed=0, cache_dir=tmp_path / "cache",
                             results=tmp_path / "results", progress=False)
    dataset = "digits[members=800,canary=false]"
    built = harness.target(dataset, "ddim").target
    ctx = harness.context(dataset)
    same = dataclasses.replace(built.splits, holdout=built.splits.members)
    target = AuditTarget(key=built.key + "-same", model=built._model, schedule=built.schedule,
                         splits=same, ctx=ctx)
    fast = {"secmi": {"t": 10}}.get(name, {})  # one t: the inversion path is the cost
    finding = attack(name, n_bootstrap=0, **fast).run(target, ctx)
    print(name, {m.name: round(m.value, 4) for m in finding.metrics})
    assert 0.45 <= finding.value("auc") <= 0.55
    assert finding.info["n_members_scored"] == 600


def test_calibration_split_is_disjoint_and_balanced():
    s = membership_split(128, 1920, calibration_fraction=0.25, seed=3)
    assert len(s.calib_members) == len(s.calib_holdout) == 32
    assert len(s.eval_members) == len(s.eval_holdout) == 96
    assert not set(s.calib_members) & set(s.eval_members)
    assert not set(s.calib_holdout) & set(s.eval_holdout)
    again = membership_split(128, 1920, calibration_fraction=0.25, seed=3)
    np.testing.assert_array_equal(s.eval_holdout, again.eval_holdout)


def test_ddim_round_trip_is_exact_for_an_x_independent_predictor(smoke_ctx):
    # With ε̂ independent of x, inversion t → s and denoising s → t are exact inverses.
    eps = torch.randn(1, 1, 8, 8)
    schedule = smoke_ctx.schedule
    x = torch.randn(5, 1, 8, 8)
    up = ddim_step(lambda x_t, t: eps.expand_as(x_t), x, 10, 20, schedule)
    back = ddim_step(lambda x_t, t: eps.expand_as(x_t), up, 20, 10, schedule)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


def test_timestep_grid_respects_interval_and_range():
    grid = timestep_grid(1000, 8, low=0.01, high=0.3, multiple_of=10)
    assert grid == sorted(grid) and all(t % 10 == 0 for t in grid)
    assert grid[0] == 10 and grid[-1] == 300
    assert all(0 <= t < 100 for t in timestep_grid(100, 8))


def test_same_seed_same_numbers(smoke_ctx):
    splits = smoke_ctx.splits
    target = AuditTarget(key="oracle", model=oracle_denoiser(splits.members, smoke_ctx.schedule),
                         schedule=smoke_ctx.schedule, splits=splits, ctx=smoke_ctx)
    a = attack("loss_mia", n_bootstrap=50).run(target, smoke_ctx)
    b = attack("loss_mia", n_bootstrap=50).run(target, smoke_ctx)
    assert [(m.name, m.value, m.ci_low) for m in a.metrics] == \
        [(m.name, m.value, m.ci_low) for m in b.metrics]


@pytest.mark.parametrize("n_neg, resolved", [(96, []), (100, ["tpr_at_1pct_fpr"]),
                                              (999, ["tpr_at_1pct_fpr"]), (1000, FPR_METRICS)])
def test_an_fpr_point_the_negatives_cannot_resolve_is_missing_with_its_reason(n_neg, resolved):
    from leakbench.membership import membership_metrics

    rng = np.random.default_rng(0)
    members, holdout = rng.normal(-1, 1, 50), rng.normal(0, 1, n_neg)
    metrics, _, missing = membership_metrics(
        members, holdout, calib_member_stat=members[:10], calib_holdout_stat=holdout[:10],
        n_bootstrap=20, seed=0, statistic_name="s")
    names = {m.name for m in metrics}
    assert [k for k in FPR_METRICS if k in names] == resolved
    assert set(missing) == set(FPR_METRICS) - set(resolved)
    for reason in missing.values():
        assert f"only {n_neg} were scored" in reason


def test_missing_fpr_reason_reaches_the_results_store(smoke_harness):
    h = smoke_harness
    h.run_cell("digits", "ddim", "loss_mia[n_bootstrap=10]")
    import json

    finding = [f for f in h.store.findings() if f["attack"] == "loss_mia[n_bootstrap=10]"][-1]
    missing = json.loads(finding["info"])["missing_metrics"]
    assert "tpr_at_0.1pct_fpr" in missing and "needs at least 1000" in missing["tpr_at_0.1pct_fpr"]
    stored = {r["metric"] for r in h.store.rows() if r["attack"] == "loss_mia[n_bootstrap=10]"}
    assert "auc" in stored and "tpr_at_0.1pct_fpr" not in stored


def test_check_timestep_refuses_steps_the_schedule_cannot_run():
    for t in (None, 0, 99):
        check_timestep("loss_mia", t, 100)
    with pytest.raises(UsageError, match=r"^pia t=100 is outside the schedule; use 1 <= t < 100\.$"):
        check_timestep("pia", 100, 100, low=1)
    check_timestep("secmi", 90, 100, interval=5)
    for bad in (93, 95):  # not a multiple of k; t + k reaches T
        with pytest.raises(UsageError, match=rf"^secmi t={bad} must be a multiple of the interval 5 "
                                             r"with t \+ 5 < 100\.$"):
            check_timestep("secmi", bad, 100, interval=5)
