"""CPSample's sampling cost against plain DDIM at the default profile (paper 001, App. D: ≈1.09×).

    pytest benchmarks/perf/test_guidance_cost.py -m perf -s

At α = 0.5 every (image, step) pair is guided, so each DDIM step adds one classifier
forward and backward pass to the denoiser's forward pass.  At α = 0.001 (with an
untrained classifier, p ≈ 0.5) no pair is guided: the cost is the classifier's forward
pass that decides.  The two samplers run interleaved, round by round, so load from other
processes hits both alike.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from baselines.cpsample import CPSampleParams
from leakbench.config import get_profile
from leakbench.diffusion.classifier import classifier_channels
from leakbench.diffusion.guidance import cpsample_guided
from leakbench.diffusion.sampling import sample_images
from leakbench.diffusion.schedule import make_schedule
from leakbench.diffusion.unet import TimeEncoder, UNet

P = get_profile("default")
SHAPE = (1, P.image_size, P.image_size)
MAX_RATIO = 1.25


@pytest.mark.parametrize("alpha, guided_expected", [(0.5, 1.0), (0.001, 0.0)])
def test_cpsample_costs_at_most_1_25x_ddim(benchmark, alpha, guided_expected):
    n = 64
    sched = make_schedule(P.schedule, P.num_timesteps)
    torch.manual_seed(0)
    unet = UNet(1, P.unet_channels, P.unet_attention).eval().requires_grad_(False)
    width = CPSampleParams().classifier_width
    clf = TimeEncoder(1, classifier_channels(P.unet_channels, width)).eval().requires_grad_(False)
    guided = cpsample_guided(unet, clf, schedule=sched, alpha=alpha, scale=100.0)
    kwargs = dict(schedule=sched, shape=SHAPE, steps=P.ddim_steps, seed=0, batch_size=n,
                  progress=False)
    times: dict[str, list[float]] = {"ddim": [], "cpsample": []}

    def both():
        for name, model in (("ddim", unet), ("cpsample", guided)):
            t0 = time.perf_counter()
            sample_images(model, n, **kwargs)
            times[name].append(time.perf_counter() - t0)

    guided.reset_counts()
    benchmark.pedantic(both, rounds=5, iterations=1, warmup_rounds=1)
    ddim, cps = statistics.median(times["ddim"]), statistics.median(times["cpsample"])
    ratio = cps / ddim
    benchmark.extra_info.update({"alpha": alpha, "ddim_seconds": ddim, "cpsample_seconds": cps,
                                 "ratio": ratio,
                                 "guided_fraction": guided.guided_fraction,
                                 "classifier_channels": list(clf.config["channels"])})
    print(f"\nDDIM-{P.ddim_steps}, {n} images at {P.image_size}px: {ddim:.2f} s; CPSample "
          f"(alpha={alpha}, classifier {clf.config['channels']}): {cps:.2f} s; ratio {ratio:.3f}")
    assert guided.guided_fraction == guided_expected
    assert ratio <= MAX_RATIO
