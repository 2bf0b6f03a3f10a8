"""How each cost grows with image size, number of samples and number of members.

    pytest benchmarks/perf/test_growth.py -m perf -s --benchmark-json growth.json

Three sizes per axis, the default profile's U-Net and DDIM steps, untrained weights
(the cost does not depend on them).  Every test prints its row and stores it in
``extra_info``; the README's performance section quotes them.

- image size 8 / 16 / 32 px: one training step (batch 64) and one DDIM-50 image;
- samples 250 / 500 / 1,000: DDIM sampling and the nearest-member search of replication;
- members 128 / 512 / 2,048: nearest-member search and loss_mia scoring (members + as many
  holdout images); the denoiser's training cost is per step and does not grow with members.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from leakbench.api import AuditTarget
from leakbench.cache import ArtifactCache
from leakbench.config import get_profile
from leakbench.context import RunContext
from leakbench.data.splits import Splits
from leakbench.diffusion.sampling import sample_images
from leakbench.diffusion.schedule import make_schedule
from leakbench.diffusion.training import train_denoiser
from leakbench.diffusion.unet import UNet
from leakbench.features.index import nearest_member_similarity
from leakbench.registry import ATTACKS

P = get_profile("default")
SCHED = make_schedule(P.schedule, P.num_timesteps)


def _unet() -> UNet:
    torch.manual_seed(0)
    return UNet(1, P.unet_channels, P.unet_attention)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _timed(fn, repeats: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@pytest.mark.parametrize("size", [8, 16, 32])
def test_growth_with_image_size(benchmark, size):
    data = _images(P.n_members, size)
    steps = 10

    def train():
        train_denoiser(_unet(), data, schedule=SCHED, steps=steps, batch_size=P.batch_size,
                       learning_rate=P.learning_rate, ema_decay=P.ema_decay, seed=0,
                       progress=False)

    model = _unet().eval().requires_grad_(False)
    n = 32

    def sample():
        sample_images(model, n, schedule=SCHED, shape=(1, size, size), steps=P.ddim_steps,
                      seed=0, batch_size=n, progress=False)

    step_s = _timed(train, 2) / steps
    image_s = benchmark.pedantic(lambda: _timed(sample, 2), rounds=1, iterations=1) / n
    benchmark.extra_info.update(image_size=size, train_step_seconds=step_s,
                                ddim_seconds_per_image=image_s)
    print(f"\nimage {size}px: training step {step_s * 1e3:.1f} ms (batch {P.batch_size}), "
          f"DDIM-{P.ddim_steps} {image_s * 1e3:.1f} ms/image")


@pytest.mark.parametrize("n_samples", [250, 500, 1000])
def test_growth_with_samples(benchmark, n_samples):
    model = _unet().eval().requires_grad_(False)
    shape = (1, P.image_size, P.image_size)
    members = _images(P.n_members, P.image_size, 1).flatten(1).numpy()

    def sample_and_search():
        t0 = time.perf_counter()
        x = sample_images(model, n_samples, schedule=SCHED, shape=shape, steps=P.ddim_steps,
                          seed=0, batch_size=P.sample_batch_size, progress=False)
        t1 = time.perf_counter()
        nearest_member_similarity(x.flatten(1).numpy(), members)
        return t1 - t0, time.perf_counter() - t1

    sampling, search = benchmark.pedantic(sample_and_search, rounds=1, iterations=1)
    benchmark.extra_info.update(n_samples=n_samples, sampling_seconds=sampling,
                                search_seconds=search)
    print(f"\n{n_samples} samples: DDIM-{P.ddim_steps} {sampling:.1f} s, "
          f"nearest-member search {search * 1e3:.1f} ms")


@pytest.mark.parametrize("n_members", [128, 512, 2048])
def test_growth_with_members(benchmark, n_members, tmp_path):
    members = _images(n_members, P.image_size, 1)
    holdout = _images(n_members, P.image_size, 2)
    queries = _images(P.n_samples, P.image_size, 3).flatten(1).numpy()
    search = _timed(lambda: nearest_member_similarity(queries, members.flatten(1).numpy()), 3)

    splits = Splits(members=members, holdout=holdout, member_labels=None, holdout_labels=None,
                    manifest={}, hash=f"growth-{n_members}")
    ctx = RunContext(profile=P, cache=ArtifactCache(tmp_path), progress=False)
    model = _unet().eval().requires_grad_(False)
    target = AuditTarget(key="growth", model=model, schedule=ctx.schedule, splits=splits, ctx=ctx)
    attack = ATTACKS.get("loss_mia")()
    benchmark.pedantic(attack.run, args=(target, ctx), rounds=1, iterations=1)
    mia = benchmark.stats["median"]
    benchmark.extra_info.update(n_members=n_members, search_seconds=search, loss_mia_seconds=mia)
    print(f"\n{n_members} members: nearest-member search of {P.n_samples} samples "
          f"{search * 1e3:.1f} ms, loss_mia on {n_members} + {n_members} images {mia:.1f} s")
