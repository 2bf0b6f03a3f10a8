"""Threat models: white-box attacks on the effective predictor or on the released weights."""

from __future__ import annotations

import pytest
import torch

from leakbench.api import AuditTarget


def test_released_access_on_a_wrapper_returns_the_unwrapped_weights(smoke_ctx):
    base = smoke_ctx.denoiser()

    def wrapper(x_t, t):  # a sampling-time defense: the base prediction plus a push
        return base(x_t, t) + 1.0

    target = AuditTarget(key="wrapped", model=wrapper, released_model=base,
                         released="the plain denoiser", schedule=smoke_ctx.schedule,
                         splits=smoke_ctx.splits, ctx=smoke_ctx)
    x = torch.randn(4, *smoke_ctx.splits.image_shape)
    t = torch.full((4,), 10, dtype=torch.long)
    with torch.no_grad():
        released = target.noise_predictor("released")(x, t)
        effective = target.noise_predictor("effective")(x, t)
        assert torch.equal(released, base(x, t))
        assert torch.equal(effective, base(x, t) + 1.0)
    assert target.released_differs
    # Without a released model the target ships what the sampler uses.
    plain = AuditTarget(key="plain", model=base, schedule=smoke_ctx.schedule,
                        splits=smoke_ctx.splits, ctx=smoke_ctx)
    assert plain.released_model is base and not plain.released_differs
    with pytest.raises(ValueError, match="effective"):
        plain.noise_predictor("weights")


def test_cpsample_releases_the_plain_denoiser(smoke_harness):
    built = smoke_harness.target("digits", "cpsample")
    plain = smoke_harness.context("digits").denoiser()
    x = torch.randn(3, *built.target.splits.image_shape)
    t = torch.full((3,), 5, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(built.target.predict_released(x, t), plain(x, t))
    assert built.target.released_differs
    assert "classifier" in built.target.released


def test_released_access_sees_sampling_time_defenses_as_ddim(smoke_harness):
    """cpsample and rejection change only the sampler: with the weights out, loss_mia's
    numbers on them are ddim's, bit for bit; under effective access cpsample's differ."""
    spec = "loss_mia[access=released,n_bootstrap=50]"
    ddim = smoke_harness.run_cell("digits", "ddim", spec)
    assert ddim.info["threat_model"] == "white-box/released"
    assert ddim.info["released_differs_from_effective"] is False
    for defense in ("cpsample", "rejection"):
        f = smoke_harness.run_cell("digits", defense, spec)
        assert {m.name: m.value for m in f.metrics} == {m.name: m.value for m in ddim.metrics}
        assert "released_model" in f.info
    assert smoke_harness.run_cell("digits", "cpsample", spec).info[
        "released_differs_from_effective"] is True
    effective = smoke_harness.run_cell("digits", "ddim", "loss_mia[n_bootstrap=50]")
    assert effective.info["threat_model"] == "white-box/effective"
    assert effective.value("auc") == ddim.value("auc")  # ddim ships what it samples with


def test_leaderboard_names_the_threat_model(smoke_harness):
    from leakbench.leaderboard import leaderboard_frame, render_json, render_table, threat_model

    assert threat_model("replication") == "black-box"
    assert threat_model("loss_mia") == "white-box/effective"
    assert threat_model("loss_mia[access=released]") == "white-box/released"
    assert threat_model("pia[access=released]") == "white-box/released"
    assert threat_model("sima[access=released]") == "white-box/released"
    assert threat_model("sima") == "white-box/effective"
    assert threat_model("no_such_attack") == "unknown"
    assert threat_model("defense") == ""
    smoke_harness.run_cell("digits", "ddim", "loss_mia[access=released,n_bootstrap=20]")
    smoke_harness.run_cell("digits", "ddim", "replication")
    df = leaderboard_frame(smoke_harness.store.rows())
    assert set(df["threat_model"]) == {"white-box/released", "black-box"}
    table = render_table(df)
    assert "white-box/released" in table and "threat" in table.splitlines()[0]
    assert '"threat_model": "black-box"' in render_json(df)


def test_bad_access_is_one_sentence():
    from leakbench.errors import UsageError
    from leakbench.harness import resolve_plugin
    from leakbench.registry import ATTACKS

    with pytest.raises(UsageError, match="effective, released"):
        resolve_plugin(ATTACKS, "loss_mia[access=weights]")
