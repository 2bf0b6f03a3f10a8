"""Our DDIM and noise schedule against diffusers' DDIMScheduler, and the ``--model`` loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402

from leakbench.diffusion.external import (  # noqa: E402
    EpsilonModel,
    load_diffusers_model,
    schedule_from_config,
)
from leakbench.diffusion.sampling import ddim_sample, ddim_timesteps  # noqa: E402
from leakbench.diffusion.schedule import make_schedule  # noqa: E402
from leakbench.errors import UsageError  # noqa: E402


def tiny_unet(channels: int = 1, size: int = 8, seed: int = 0) -> UNet2DModel:
    """A small random UNet2DModel (two levels, no attention): cheap on a CPU."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                       layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval().requires_grad_(False)


def diffusers_ddim(unet, x_T, scheduler: DDIMScheduler, steps: int, clip: bool) -> torch.Tensor:
    """The reference loop of DDIMPipeline, η = 0 (ᾱ in the sample's precision)."""
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(x_T.dtype)
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.to(x_T.dtype)
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, eta=0.0,
                           use_clipped_model_output=clip).prev_sample
    return x


@pytest.mark.parametrize("beta_schedule, ours", [("linear", "linear"),
                                                  ("squaredcos_cap_v2", "cosine")])
def test_our_schedules_are_diffusers_schedules(beta_schedule, ours):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule).alphas_cumprod
    np.testing.assert_allclose(make_schedule(ours, 1000).alpha_bar.numpy(), ref.double().numpy(),
                               rtol=1e-5, atol=1e-7)


def test_add_noise_matches_diffusers():
    schedule = make_schedule("linear", 1000)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1, torch.randn(64, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    diff = (schedule.add_noise(x0, t, eps) - scheduler.add_noise(x0, eps, t)).abs().max()
    assert diff < 1e-5, f"add_noise differs from diffusers by {diff:.2e}"


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("clip", [False, True], ids=["unclipped", "clipped"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_matches_diffusers_ddim_scheduler(spacing, clip, prediction_type):
    """Same model, same x_T, same timesteps, η = 0: images agree to 1e-4.

    Our sampler steps from each timestep to the next one it is given; diffusers' step goes
    to t − T // n.  The two coincide on 'leading' and 'trailing' spacing (T divisible by n),
    so those are compared; ``ddim_timesteps`` itself is diffusers' 'linspace' (next test).
    v and x₀ predictions go through our conversion to ε; diffusers uses them natively.
    Both run in float64 on the scheduler's own ᾱ (ours equals it to 1e-5, tested above):
    an untrained ε-network gives unclipped x̂₀ in the hundreds, where float32 rounding
    alone would exceed 1e-4, and this test is about the sampler's algebra.
    """
    unet = tiny_unet().double()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=clip,
                              set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing,
                              prediction_type=prediction_type)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    schedule = schedule_from_config(scheduler.config)
    ref = diffusers_ddim(unet, x_T, scheduler, 50, clip)
    ours = ddim_sample(EpsilonModel(unet, schedule, prediction_type), x_T,
                       scheduler.timesteps.tolist(), schedule=schedule, clip_denoised=clip)
    diff = float((ours - ref).abs().max())
    print(f"max |ours - diffusers| = {diff:.2e} ({spacing}, clip={clip}, {prediction_type}, "
          f"images up to {float(ref.abs().max()):.3g})")
    assert diff < 1e-4


def test_our_timesteps_are_diffusers_linspace_spacing():
    for steps in (5, 10, 50, 1000):
        scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
        scheduler.set_timesteps(steps)
        assert ddim_timesteps(1000, steps) == scheduler.timesteps.tolist()


# -- loading a user's model (--model) -----------------------------------------------------------

def save_pipeline(tmp_path, unet, **scheduler_config):
    from diffusers import DDPMPipeline

    folder = tmp_path / "pipe"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_config)).save_pretrained(folder)
    return folder


def test_pipeline_and_bare_unet_folders_load_the_same_model(tmp_path):
    unet = tiny_unet()
    pipe = save_pipeline(tmp_path, unet, num_train_timesteps=200, beta_schedule="linear")
    bare = tmp_path / "bare"
    unet.save_pretrained(bare)
    DDPMScheduler(num_train_timesteps=200, beta_schedule="linear").save_pretrained(bare)
    a, b = load_diffusers_model(pipe), load_diffusers_model(bare)
    assert (a.image_size, a.channels, a.schedule.num_timesteps) == (8, 1, 200)
    assert a.sha256 == b.sha256
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 150])
    torch.testing.assert_close(a.model(x, t), unet(x, t).sample)
    torch.testing.assert_close(b.model(x, t), a.model(x, t))


def _no_config(folder):
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x")


def _bad_prediction(folder):
    tiny_unet().save_pretrained(folder)
    DDPMScheduler().save_pretrained(folder)
    cfg = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": "flow"}))


def _no_scheduler(folder):
    tiny_unet().save_pretrained(folder)


def _broken_weights(folder):
    tiny_unet().save_pretrained(folder)
    DDPMScheduler().save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not a tensor file")


@pytest.mark.parametrize("make, message", [
    (_no_config, "is not a diffusers model folder"),
    (_bad_prediction, "prediction_type 'flow' is not supported"),
    (_no_scheduler, "has no scheduler config"),
    (_broken_weights, "U-Net weights cannot be loaded"),
], ids=["no-config", "prediction-type", "no-scheduler", "broken-weights"])
def test_bad_model_folders_are_one_sentence(tmp_path, make, message):
    make(tmp_path / "m")
    with pytest.raises(UsageError, match=message) as exc:
        load_diffusers_model(tmp_path / "m")
    assert "\n" not in str(exc.value)


# -- export of our denoiser (leakbench export) --------------------------------------------------

def test_export_round_trip_gives_the_same_eps_and_samples(tmp_path, monkeypatch, capsys):
    from diffusers import DDPMPipeline

    from leakbench.cli import main
    from leakbench.diffusion.export import LeakbenchUNet
    from leakbench.diffusion.sampling import sample_images
    from leakbench.harness import Harness

    monkeypatch.setenv("LEAKBENCH_RESULTS", str(tmp_path / "results"))
    out = tmp_path / "exported"
    assert main(["export", "--out", str(out), "--dataset", "digits", "--profile", "smoke",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    ctx = Harness.create(profile="smoke", cache_dir=tmp_path / "cache", progress=False
                         ).context("digits")
    ours, loaded = ctx.denoiser(), load_diffusers_model(out)
    assert (loaded.image_size, loaded.channels) == (ctx.image_size, ctx.splits.channels)
    np.testing.assert_allclose(loaded.schedule.alpha_bar.numpy(), ctx.schedule.alpha_bar.numpy(),
                               rtol=1e-5)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 50, 99])
    torch.testing.assert_close(loaded.model(x, t), ours(x, t))
    kw = dict(n=6, shape=ctx.splits.image_shape, steps=ctx.profile.ddim_steps, seed=7,
              progress=False)
    a = sample_images(ours, schedule=ctx.schedule, **kw)
    b = sample_images(loaded.model, schedule=loaded.schedule, **kw)
    diff = float((a - b).abs().max())
    print(f"export round trip: max |samples - reloaded samples| = {diff:.2e}")
    assert diff < 1e-4
    assert isinstance(DDPMPipeline.from_pretrained(out).unet, LeakbenchUNet)
    assert main(["export", "--out", str(out), "--profile", "smoke",
                 "--cache-dir", str(tmp_path / "cache")]) == 2  # never over an earlier export
    assert "is not empty" in capsys.readouterr().err
