"""Ambient Diffusion: masked loss, fixed-mask ε wrapper and sampler, and the defense at smoke size."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from leakbench.diffusion.ambient import (
    FixedMaskDenoiser,
    SeededMaskDenoiser,
    ambient_loss,
    member_masks,
    network_input,
    sample_fixed_mask,
)
from leakbench.diffusion.schedule import make_schedule
from leakbench.diffusion.unet import UNet


@pytest.fixture
def schedule():
    return make_schedule("linear", 100)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(2, (8, 16), out_channels=1).eval()


def _corrupted_batch(n=6, size=8, p=0.3, seed=0):
    x0 = torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    A = member_masks(n, (size, size), p, seed)
    return x0, A


def test_member_masks_erase_about_p_and_are_seeded():
    A = member_masks(200, (16, 16), 0.2, seed=3)
    assert set(A.unique().tolist()) == {0.0, 1.0}
    assert abs(float(1 - A.mean()) - 0.2) < 0.01
    assert torch.equal(A, member_masks(200, (16, 16), 0.2, seed=3))
    assert not torch.equal(A, member_masks(200, (16, 16), 0.2, seed=4))


def test_loss_ignores_erased_pixels(net, schedule):
    x0, A = _corrupted_batch()
    assert 0 < float(A.mean()) < 1

    def loss(images):
        batch = torch.cat([images, A], dim=1)
        return ambient_loss(net, batch, schedule, torch.Generator().manual_seed(7), delta=0.1)

    # Changing the pixels A erased leaves the loss exactly as it was ...
    scrambled = torch.where(A.bool(), x0, torch.randn_like(x0) * 10)
    assert torch.equal(loss(x0), loss(scrambled))
    # ... while changing one visible pixel does not.
    i = int(torch.nonzero(A.flatten())[0])
    moved = x0.clone().flatten()
    moved[i] += 1.0
    assert not torch.equal(loss(x0), loss(moved.view_as(x0)))


def test_network_input_hides_masked_pixels():
    x = torch.randn(3, 2, 4, 4)
    mask = (torch.rand(3, 1, 4, 4) > 0.5).float()
    inp = network_input(x, mask)
    assert inp.shape == (3, 4, 4, 4)
    assert torch.equal(inp[:, 2:], mask.expand(3, 2, 4, 4))
    assert bool((inp[:, :2][mask.expand(3, 2, 4, 4) == 0] == 0).all())


def test_wrapper_turns_the_true_x0_into_the_true_noise(schedule):
    """ε̂ = (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t) recovers ε exactly when x̂₀ = x₀."""
    x0, eps = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 50, 99])
    x_t = schedule.add_noise(x0, t, eps)

    class Oracle(nn.Module):
        def forward(self, inp, t):
            return x0

    masks = torch.ones(4, 1, 8, 8)
    assert torch.allclose(FixedMaskDenoiser(Oracle(), masks, schedule)(x_t, t), eps, atol=1e-4)


def test_sampler_keeps_one_mask_per_image_for_all_steps(net, schedule):
    seen = []

    class Spy(nn.Module):
        def forward(self, inp, t):
            seen.append(inp[:, 1:].clone())
            return net(inp, t)

    sample_fixed_mask(Spy(), 5, schedule=schedule, shape=(1, 8, 8), steps=4, p=0.3, delta=0.2,
                      seed=1, batch_size=5, progress=False)
    assert len(seen) == 4
    assert all(torch.equal(m, seen[0]) for m in seen)
    # Different images hold different masks.
    assert not torch.equal(seen[0][0], seen[0][1])


def test_fixed_mask_sampler_is_deterministic_for_a_seed(net, schedule):
    def draw(seed, batch_size=3):
        return sample_fixed_mask(net, 5, schedule=schedule, shape=(1, 8, 8), steps=4, p=0.2,
                                 delta=0.1, seed=seed, batch_size=batch_size, progress=False)

    a = draw(0)
    assert a.shape == (5, 1, 8, 8) and bool(a.isfinite().all())
    assert torch.equal(a, draw(0))
    # Masks belong to images, not batches (batched convolutions may differ in the last bits).
    assert torch.allclose(a, draw(0, batch_size=5), atol=1e-4)
    assert not torch.equal(a, draw(1))


def test_predict_noise_is_a_deterministic_function_of_its_input(net, schedule):
    model = SeededMaskDenoiser(net, schedule, p=0.2, delta=0.1, seed=0)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 30)
    with torch.no_grad():
        e1, e2 = model(x, t), model(x, t)
        other = SeededMaskDenoiser(net, schedule, p=0.2, delta=0.1, seed=1)(x, t)
    assert torch.equal(e1, e2)
    assert not torch.equal(e1, other)


def test_ambient_defense_at_smoke_size(smoke_harness):
    built = smoke_harness.target("digits", "ambient")
    target = built.target
    ctx = smoke_harness.context("digits")
    images = target.sample(6, seed=0)
    assert images.shape == (6, *ctx.splits.image_shape)
    assert bool(images.isfinite().all()) and float(images.abs().max()) <= 1
    eps = target.predict_noise(ctx.splits.members[:4], torch.full((4,), 10))
    assert eps.shape == (4, *ctx.splits.image_shape)
    figures = {m.name: m for m in built.defense.figures(target)}
    assert figures["train_seconds"].value > 0
    assert 0.1 < figures["erased_fraction"].value < 0.3
    # A second harness on the same cache loads the trained denoiser instead of retraining it.
    from leakbench.harness import Harness

    again = Harness.create(profile="smoke", cache_dir=smoke_harness.cache.root,
                           results=smoke_harness.store.path.parent, progress=False)
    assert torch.equal(again.target("digits", "ambient").target.sample(6, seed=0), images)
    assert [e.status for e in again.cache.events if e.kind == "ambient"] == ["hit"]


def test_params_are_validated():
    from leakbench.errors import UsageError
    from leakbench.harness import resolve_plugin
    from leakbench.registry import DEFENSES

    assert resolve_plugin(DEFENSES, "ambient[p=0.4,delta=0.2]").params.p == 0.4
    with pytest.raises(UsageError, match="p=1.5"):
        resolve_plugin(DEFENSES, "ambient[p=1.5]")
