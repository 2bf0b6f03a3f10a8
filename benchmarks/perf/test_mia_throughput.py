"""Throughput of ``loss_mia`` at the default profile: 1,000 members + 1,000 holdout images.

    pytest benchmarks/perf/test_mia_throughput.py -m perf

The whole attack runs (calibration of t over the grid on a quarter of the images,
scoring of the rest with the profile's noise draws, bootstrap CIs, ε bound); the
issue's budget is 60 s on the 2-core machine.  The U-Net is the default profile's
architecture, untrained: the cost does not depend on the weights.
"""

from __future__ import annotations

import torch

from leakbench.api import AuditTarget
from leakbench.cache import ArtifactCache
from leakbench.config import get_profile
from leakbench.context import RunContext
from leakbench.data.splits import Splits
from leakbench.diffusion.unet import UNet
from leakbench.registry import ATTACKS

P = get_profile("default")
N = 1000
BUDGET_SECONDS = 60.0


def test_loss_mia_1000_plus_1000(benchmark, tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand((2 * N, 1, P.image_size, P.image_size), generator=gen) * 2 - 1
    splits = Splits(members=images[:N], holdout=images[N:], member_labels=None,
                    holdout_labels=None, manifest={}, hash="perf")
    ctx = RunContext(profile=P, cache=ArtifactCache(tmp_path), progress=False)
    torch.manual_seed(0)
    model = UNet(1, P.unet_channels, P.unet_attention).eval().requires_grad_(False)
    target = AuditTarget(key="perf", model=model, schedule=ctx.schedule, splits=splits, ctx=ctx)
    attack = ATTACKS.get("loss_mia")()

    finding = benchmark.pedantic(attack.run, args=(target, ctx), rounds=1, iterations=1)
    seconds = benchmark.stats["median"]
    benchmark.extra_info.update(images=2 * N, noise_draws=P.mia_noise_draws,
                                images_per_second=2 * N / seconds)
    print(f"\nloss_mia on {N} + {N} images (default profile): {seconds:.1f} s")
    assert finding.info["n_members_scored"] + finding.info["n_calibration"] // 2 == N
    assert seconds < BUDGET_SECONDS
