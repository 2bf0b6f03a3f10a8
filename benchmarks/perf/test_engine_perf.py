"""Speed of the engine at the default profile's sizes (pytest-benchmark, ``-m perf``).

    pytest benchmarks/perf -m perf --benchmark-json perf.json
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leakbench.config import get_profile
from leakbench.diffusion.sampling import sample_images
from leakbench.diffusion.schedule import make_schedule
from leakbench.diffusion.training import train_denoiser
from leakbench.diffusion.unet import UNet
from leakbench.features.index import nearest

P = get_profile("default")
SHAPE = (1, P.image_size, P.image_size)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNet(1, P.unet_channels, P.unet_attention).eval().requires_grad_(False)


def test_ddim_images_per_second(benchmark, model):
    n = 64
    sched = make_schedule(P.schedule, P.num_timesteps)
    benchmark.pedantic(sample_images, args=(model, n),
                       kwargs=dict(schedule=sched, shape=SHAPE, steps=P.ddim_steps, seed=0,
                                   batch_size=n, progress=False), rounds=3, iterations=1)
    benchmark.extra_info["images_per_second"] = n / benchmark.stats["median"]
    print(f"\nDDIM-{P.ddim_steps} at {P.image_size}px: {n / benchmark.stats['median']:.1f} img/s")


def test_training_steps_per_second(benchmark):
    steps = 20
    data = torch.rand(P.n_members, *SHAPE) * 2 - 1
    sched = make_schedule(P.schedule, P.num_timesteps)

    def train():
        torch.manual_seed(0)
        train_denoiser(UNet(1, P.unet_channels, P.unet_attention), data, schedule=sched,
                       steps=steps, batch_size=P.batch_size, learning_rate=P.learning_rate,
                       ema_decay=P.ema_decay, seed=0, progress=False)

    benchmark.pedantic(train, rounds=3, iterations=1)
    benchmark.extra_info["steps_per_second"] = steps / benchmark.stats["median"]
    print(f"\ntraining: {steps / benchmark.stats['median']:.1f} steps/s (batch {P.batch_size})")


def _torch_topk(q, r):
    sims = torch.from_numpy(q) @ torch.from_numpy(r).T
    return sims.topk(1, dim=1)


@pytest.mark.parametrize("engine", ["faiss", "torch"])
def test_nearest_neighbour_10k_by_10k(benchmark, engine):
    d = P.image_size**2  # the default feature size (pixels)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((10_000, d)).astype(np.float32)
    r = rng.standard_normal((10_000, d)).astype(np.float32)
    fn = (lambda: nearest(q, r, k=1)) if engine == "faiss" else (lambda: _torch_topk(q, r))
    benchmark.pedantic(fn, rounds=3, iterations=1)
    print(f"\n{engine} 10k×10k d={d}: {benchmark.stats['median']:.2f} s")
