"""Rejection sampling: nothing above the threshold comes back, costs are counted, redraws are seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.rejection import rejection_sample
from leakbench.features.calibration import replication_calibration


def _toy_draw(k, seed):
    """k "images" of one pixel, uniform in [0, 1); the pixel is also its similarity."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, 1, 1, 1, generator=g)


def _pixel(images):
    return images.flatten().numpy()


@pytest.mark.parametrize("max_tries", [1, 2, 20])
def test_drop_never_returns_an_image_above_the_threshold(max_tries):
    images, info = rejection_sample(_toy_draw, 500, 3, nearest=_pixel, threshold=0.7,
                                    max_tries=max_tries, on_exhausted="drop")
    assert (_pixel(images) <= 0.7).all()
    assert len(images) == info["accepted"] == info["returned"]
    assert info["accepted"] + info["never_passed"] == 500
    # With p(pass) = 0.7 per draw, about 0.3^max_tries of the images never pass.
    q = 0.3**max_tries
    assert abs(info["never_passed"] - 500 * q) <= 3 * (500 * q * (1 - q)) ** 0.5 + 1
    assert info["total_draws"] >= 500 and info["accepted_draws"] <= info["total_draws"]


def test_keep_flags_exactly_the_images_above_the_threshold():
    images, info = rejection_sample(_toy_draw, 300, 5, nearest=_pixel, threshold=0.9,
                                    max_tries=2, on_exhausted="keep")
    above = np.flatnonzero(_pixel(images) > 0.9).tolist()
    assert len(images) == 300 and above and info["flagged_indices"] == above
    assert info["never_passed"] == len(above)


def test_redraws_are_deterministic_in_the_seed():
    a, ia = rejection_sample(_toy_draw, 100, 7, nearest=_pixel, threshold=0.5, max_tries=5)
    b, ib = rejection_sample(_toy_draw, 100, 7, nearest=_pixel, threshold=0.5, max_tries=5)
    c, _ = rejection_sample(_toy_draw, 100, 8, nearest=_pixel, threshold=0.5, max_tries=5)
    assert torch.equal(a, b) and ia == ib
    assert not torch.equal(a[:10], c[:10])


def test_real_samples_and_features_with_redraws(smoke_ctx):
    from leakbench.diffusion.sampling import sample_images

    ctx = smoke_ctx
    model = ctx.denoiser()
    cal = replication_calibration(ctx, ctx.splits)

    def ddim(k, seed):
        return sample_images(model, k, schedule=ctx.schedule, shape=ctx.splits.image_shape,
                             steps=ctx.profile.ddim_steps, seed=seed, progress=False)

    # A threshold at the median of the first draw: half of it must be redrawn.
    threshold = float(np.median(cal.nearest(ddim(40, 0))[0]))
    images, info = rejection_sample(ddim, 40, 0, nearest=lambda x: cal.nearest(x)[0],
                                    threshold=threshold, max_tries=6)
    assert info["total_draws"] >= 60
    assert (cal.nearest(images)[0] <= threshold).all()
    assert len(images) + info["never_passed"] == 40


def test_defense_on_the_real_denoiser_returns_nothing_above_the_threshold(smoke_harness):
    h = smoke_harness
    built = h.target("digits", "rejection[quantile=0.5,max_tries=3]")
    target = built.target
    images = target.sample(32)
    cal = replication_calibration(h.context("digits"), target.splits, "pixels", 0.5)
    assert cal.threshold == pytest.approx(target.info["threshold"])
    assert (cal.nearest(images)[0] <= cal.threshold).all()

    figures = {m.name: m.value for m in built.defense.figures(target)}
    info = target.sample_info[(32, h.seed)]
    assert len(images) + figures["never_passed"] == 32
    assert figures["acceptance_rate"] == pytest.approx(len(images) / info["total_draws"])
    assert figures["draws_per_accepted"] >= 1.0

    # The replication attack at the same quantile finds nothing above its threshold.
    f = h.run_cell("digits", "rejection[quantile=0.5,max_tries=3]", "replication[quantile=0.5]")
    assert f.value("frac_above") == 0.0
    assert "chi2_p" in {m.name for m in f.metrics}
