from __future__ import annotations

import numpy as np
import torch

from audits.replication import Replication, ReplicationParams
from leakbench.api import AuditTarget


def _target(ctx, images):
    """A target whose "samples" are the given images (no model needed)."""

    def draw(n, seed):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(images), (n,), generator=g)
        return images[idx], {}

    return AuditTarget(key=f"constructed-{images.sum().item():.6f}", model=None,
                       schedule=ctx.schedule, splits=ctx.splits, ctx=ctx, draw=draw)


def test_exact_copies_of_members_all_count(smoke_ctx):
    f = Replication(ReplicationParams(n_samples=64)).run(_target(smoke_ctx, smoke_ctx.splits.members), smoke_ctx)
    assert f.value("frac_above") == 1.0
    assert f.value("frac_above_0.97") == 1.0
    assert f["frac_above"].ci_low > 0.9 and f["frac_above"].n == 64
    assert np.allclose(f.arrays["top_sims"], 1.0, atol=1e-5)
    # the kept pairs really are (sample, its nearest member)
    assert np.allclose(f.arrays["top_samples"], f.arrays["top_members"], atol=1e-6)


def test_fresh_images_pass_about_one_percent(smoke_harness):
    ctx = smoke_harness.context("digits")
    # Samples drawn from fresh real images: about 1 − quantile of them pass, as for the holdout.
    holdout = ctx.splits.holdout
    f = Replication(ReplicationParams(n_samples=2000)).run(_target(ctx, holdout), ctx)
    assert f.value("frac_above") < 0.06
    assert f.value("holdout_frac_above") < 0.06
    assert 0.5 < f.value("threshold") < 1.0


def test_noise_is_never_a_replica(smoke_ctx):
    noise = torch.rand(200, *smoke_ctx.splits.image_shape) * 2 - 1
    f = Replication().run(_target(smoke_ctx, noise), smoke_ctx)
    assert f.value("frac_above") == 0.0
