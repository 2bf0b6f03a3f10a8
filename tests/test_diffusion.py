from __future__ import annotations

import torch

from leakbench.diffusion.sampling import ddim_sample, ddim_timesteps, sample_images
from leakbench.diffusion.schedule import make_schedule
from leakbench.diffusion.training import train_denoiser
from leakbench.diffusion.unet import TimeEncoder, UNet


def test_schedules_are_decreasing_in_unit_interval():
    for name in ("linear", "cosine"):
        s = make_schedule(name, 1000)
        a = s.alpha_bar
        assert a.shape == (1000,) and bool((a[1:] < a[:-1]).all())
        assert 0.99 < float(a[0]) <= 1.0 and float(a[-1]) < 0.01


def test_timesteps_descend_to_zero():
    ts = ddim_timesteps(1000, 50)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 50 and ts == sorted(ts, reverse=True)
    assert ddim_timesteps(1000, 10, t_start=300)[0] == 300


def test_unet_and_encoder_shapes():
    x = torch.randn(4, 3, 16, 16)
    t = torch.randint(0, 1000, (4,))
    assert UNet(3, (16, 32, 32), attention=True)(x, t).shape == x.shape
    assert TimeEncoder(3, (16, 32), num_classes=2)(x, t).shape == (4, 2)


def test_ddim_is_deterministic_for_a_seed():
    torch.manual_seed(0)
    model = UNet(1, (16, 32)).eval()
    sched = make_schedule("linear", 100)
    kw = dict(schedule=sched, shape=(1, 8, 8), steps=5, batch_size=3, progress=False)
    a = sample_images(model, 7, seed=11, **kw)
    b = sample_images(model, 7, seed=11, **kw)
    c = sample_images(model, 7, seed=12, **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (7, 1, 8, 8) and float(a.abs().max()) <= 1.0


def test_ddim_with_a_perfect_denoiser_recovers_the_image():
    """If ε̂ is the true noise of a known x₀, one DDIM pass from x_T lands on x₀."""
    sched = make_schedule("linear", 1000)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    eps = torch.randn_like(x0)
    t_top = torch.full((2,), 999)
    x_T = sched.add_noise(x0, t_top, eps)

    def oracle(x, t):
        a = sched.at(t, x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = ddim_sample(oracle, x_T, ddim_timesteps(1000, 20), schedule=sched)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_training_lowers_the_loss_and_is_seeded():
    sched = make_schedule("linear", 100)
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    kw = dict(schedule=sched, steps=60, batch_size=8, learning_rate=2e-3, ema_decay=0.9,
              seed=0, progress=False)
    torch.manual_seed(0)
    m1, s1 = train_denoiser(UNet(1, (16, 32)), data, **kw)
    torch.manual_seed(0)
    m2, _ = train_denoiser(UNet(1, (16, 32)), data, **kw)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert s1["final_loss"] < 1.0  # an untrained ε-predictor scores ≈ 1 (the noise variance)
