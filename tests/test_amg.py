"""AMG (anti-memorisation guidance): zero below λ_t, pushes x̂₀ away from n₀ above it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.amg import AMGGuided
from leakbench.diffusion.schedule import make_schedule

SHAPE = (1, 8, 8)


def members(n: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, *SHAPE), generator=g) * 2 - 1


def eps_model(x, t):  # a hand-made differentiable noise predictor
    return 0.1 * x


def x_t_for(x0: torch.Tensor, t: int, schedule) -> torch.Tensor:
    """The x_t whose x̂₀ under ``eps_model`` is exactly ``x0``: x_t = √ᾱ x0 / (1 − 0.1 √(1−ᾱ))."""
    a = float(schedule.alpha_bar[t])
    return a**0.5 * x0 / (1 - 0.1 * (1 - a) ** 0.5)


def test_similarity_is_eq_8_normalised_by_x0_hats_own_neighbours():
    schedule = make_schedule("linear", 100)
    m = torch.stack([torch.full(SHAPE, v) for v in (0.0, 0.5, 1.5)])
    amg = AMGGuided(eps_model, m, schedule=schedule, scale=1.0, n_neighbours=2)
    x0 = torch.full((1, *SHAPE), 0.1)
    # ℓ2 over 64 pixels: 0.8 to member 0, 3.2 to member 1; α = 0.5 → σ = −0.8 / (0.5 · 2.0)
    sigma, n0 = amg.similarity(x0)
    assert n0.tolist() == [0]
    assert np.isclose(float(sigma[0]), -0.8, atol=1e-5)
    # the normaliser comes from x̂₀'s neighbours, not n₀'s (member 0's two nearest other
    # members are 4.0 and 12.0 away: α · 8.0 at every x̂₀): moving x̂₀ changes it
    sigma2, _ = amg.similarity(torch.full((1, *SHAPE), 0.2))  # −1.6 / (0.5 · (1.6 + 2.4) / 2)
    assert np.isclose(float(sigma2[0]), -1.6, atol=1e-5)
    sigma3, _ = amg.similarity(torch.full((1, *SHAPE), -0.5))  # −4.0 / (0.5 · (4.0 + 8.0) / 2)
    assert np.isclose(float(sigma3[0]), -4.0 / 3.0, atol=1e-5)


def test_guidance_is_zero_below_the_threshold():
    schedule = make_schedule("linear", 100)
    m = members()
    amg = AMGGuided(eps_model, m, schedule=schedule, scale=100.0)
    far = torch.full((3, *SHAPE), 5.0)  # x̂₀ far outside [-1, 1]: σ_t ≪ λ_t
    t = torch.full((3,), 5, dtype=torch.long)
    x = x_t_for(far, 5, schedule)
    sigma, _ = amg.similarity(amg.x0_hat(x, t, eps_model(x, t)))
    assert (sigma < amg.threshold(t)).all()
    assert torch.equal(amg(x, t), eps_model(x, t))
    assert amg.guided == 0 and amg.pairs == 3


def test_guidance_moves_x0_away_from_the_nearest_member():
    schedule = make_schedule("linear", 100)
    m = members()
    amg = AMGGuided(eps_model, m, schedule=schedule, scale=100.0)
    g = torch.Generator().manual_seed(1)
    near = m[[2, 7]] + 0.01 * torch.randn((2, *SHAPE), generator=g)  # replicas of 2 and 7
    t = torch.full((2,), 5, dtype=torch.long)
    x = x_t_for(near, 5, schedule)
    before, n0 = amg.similarity(amg.x0_hat(x, t, eps_model(x, t)))
    assert n0.tolist() == [2, 7] and (before > amg.threshold(t)).all()
    eps_hat = amg(x, t)
    assert amg.guided == 2
    x0_after = amg.x0_hat(x, t, eps_hat)
    d_before = (amg.x0_hat(x, t, eps_model(x, t)) - m[[2, 7]]).flatten(1).norm(dim=1)
    d_after = (x0_after - m[[2, 7]]).flatten(1).norm(dim=1)
    assert (d_after > d_before + 1e-3).all()


def test_always_on_guides_everything():
    schedule = make_schedule("linear", 100)
    amg = AMGGuided(eps_model, members(), schedule=schedule, scale=1.0, always=True)
    x = torch.full((3, *SHAPE), 5.0)
    t = torch.full((3,), 50, dtype=torch.long)
    out = amg(x, t)
    assert amg.guided == 3 and not torch.equal(out, eps_model(x, t))


def test_amg_target_on_smoke(smoke_harness):
    built = smoke_harness.target("digits", "amg")
    target = built.target
    images = target.sample(8)
    assert images.shape[0] == 8 and images.isfinite().all()
    info = target.sample_info[(8, 0)]
    assert 0.0 <= info["guided_fraction"] <= 1.0 and info["pairs"] > 0
    plain = smoke_harness.context("digits").denoiser()
    x = torch.randn(2, *target.splits.image_shape)
    t = torch.full((2,), 3, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(target.predict_released(x, t), plain(x, t))
    names = {m.name for m in built.defense.figures(target)}
    assert "guided_fraction" in names


def test_bad_params():
    from leakbench.errors import UsageError
    from leakbench.harness import resolve_plugin
    from leakbench.registry import DEFENSES

    with pytest.raises(UsageError, match="scale"):
        resolve_plugin(DEFENSES, "amg[scale=-1]")
