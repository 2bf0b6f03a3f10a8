"""Rejection sampling: redraw any DDIM sample that comes too close to a member (paper 001, Sec. 3).

"Too close" is the ``replication`` attack's own criterion: the nearest member's
cosine similarity, in the same feature space, above the threshold calibrated on
the holdout (``leakbench.features.calibration``).  A rejected image is redrawn
from fresh noise, up to ``max_tries`` draws per image.  An image that never
passes is, by ``on_exhausted``, dropped (the target returns fewer images) or kept
and flagged; either way it is counted in the defense figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from leakbench.api import AuditTarget, Defense, Metric


@dataclass(frozen=True)
class RejectionParams:
    max_tries: int = 20  # draws per image, the first included
    feature: str = "pixels"  # feature space of the nearest-member test
    quantile: float | None = None  # None: the profile's holdout_quantile
    on_exhausted: Literal["drop", "keep"] = "drop"  # images that never passed

    def __post_init__(self):
        if self.max_tries < 1:
            raise ValueError(f"max_tries={self.max_tries} must be at least 1 (the first draw)")
        if self.quantile is not None and not 0.5 <= self.quantile < 1.0:
            raise ValueError(f"quantile={self.quantile} must be in [0.5, 1)")
        if self.on_exhausted not in ("drop", "keep"):
            raise ValueError(f"on_exhausted={self.on_exhausted!r} must be 'drop' or 'keep'")


def redraw_seed(seed: int, attempt: int) -> int:
    """The sampling seed of redraw ``attempt`` (1, 2, ...) of a batch drawn with ``seed``."""
    return int(np.random.default_rng([int(seed), int(attempt), 0x4E7EC7]).integers(2**62))


def rejection_sample(draw, n: int, seed: int, *, nearest, threshold: float, max_tries: int,
                     on_exhausted: str = "drop"):
    """Draw ``n`` images, redrawing those whose nearest-member similarity exceeds ``threshold``.

    ``draw(k, seed) -> images`` samples k images; ``nearest(images) -> similarities``.
    Redraw ``attempt`` of every still-rejected image comes from one batch drawn with
    ``redraw_seed(seed, attempt)``, so the result is a deterministic function of seed.
    Returns (images, info); info counts draws and the images that never passed.
    """
    images = draw(n, seed)
    sims = np.asarray(nearest(images), dtype=np.float64)
    draws = np.ones(n, dtype=np.int64)

    # Redraw every rejected image from fresh noise until it passes or runs out of tries.
    for attempt in range(1, max_tries):
        rejected = np.flatnonzero(sims > threshold)
        if rejected.size == 0:
            break
        fresh = draw(len(rejected), redraw_seed(seed, attempt))
        images[torch.from_numpy(rejected)] = fresh
        sims[rejected] = np.asarray(nearest(fresh), dtype=np.float64)
        draws[rejected] += 1

    # Count what it cost, and deal with the images that never passed, openly.
    passed = sims <= threshold
    info = {
        "requested": n,
        "accepted": int(passed.sum()),
        "never_passed": int((~passed).sum()),
        "total_draws": int(draws.sum()),
        "accepted_draws": int(draws[passed].sum()),
        "on_exhausted": on_exhausted,
        "threshold": float(threshold),
    }
    if on_exhausted == "drop":
        images = images[torch.from_numpy(passed)]
    else:
        info["flagged_indices"] = np.flatnonzero(~passed).tolist()
    info["returned"] = len(images)
    return images, info


class Rejection(Defense):
    """DDIM with rejection of samples above the replication threshold."""

    name = "rejection"
    version = "1"
    Params = RejectionParams
    description = ("rejection sampling: DDIM samples whose nearest member exceeds the replication "
                   "attack's calibrated threshold are redrawn (up to max_tries per image)")
    paper = "Kazdan et al., CPSample (paper 001), Sec. 3: the rejection-sampling baseline"

    def wrap(self, artifacts, ctx) -> AuditTarget:
        from leakbench.diffusion.sampling import sample_images
        from leakbench.features.calibration import replication_calibration

        p, model = self.params, artifacts["denoiser"]
        cal = replication_calibration(ctx, ctx.splits, p.feature, p.quantile)

        def ddim(k: int, seed: int):
            return sample_images(
                model, k, schedule=ctx.schedule, shape=ctx.splits.image_shape,
                steps=ctx.profile.ddim_steps, seed=seed, batch_size=ctx.profile.sample_batch_size,
                clip_denoised=ctx.profile.clip_x0, device=ctx.device, progress=ctx.progress,
            )

        def draw(n: int, seed: int):
            return rejection_sample(ddim, n, seed, nearest=lambda x: cal.nearest(x)[0],
                                    threshold=cal.threshold, max_tries=p.max_tries,
                                    on_exhausted=p.on_exhausted)

        return AuditTarget(
            key=ctx.target_key(self), model=model, schedule=ctx.schedule, splits=ctx.splits,
            ctx=ctx, draw=draw,
            released=("the plain fine-tuned denoiser (the filter acts on samples only, and its "
                      "member index does not ship)"),
            info={**ctx.training_info(),
                  "threshold": cal.threshold, "quantile": cal.quantile, "feature": p.feature},
        )

    def figures(self, target: AuditTarget) -> list[Metric]:
        out = super().figures(target)
        for (_n, _seed), info in sorted(target.sample_info.items()):
            if "total_draws" not in info:
                continue
            accepted, requested = info["accepted"], info["requested"]
            out += [
                Metric("acceptance_rate", accepted / max(info["total_draws"], 1), n=info["total_draws"],
                       bounds=(0.0, 1.0), description="accepted images per DDIM draw"),
                Metric("draws_per_accepted", info["accepted_draws"] / max(accepted, 1), n=accepted,
                       description="mean DDIM draws per accepted image (1 = never rejected)"),
                Metric("never_passed", info["never_passed"], n=requested,
                       description=f"images above the threshold after {self.params.max_tries} "
                                   f"draws ({'dropped' if info['on_exhausted'] == 'drop' else 'kept, flagged'})"),
                Metric("draws_per_returned", info["total_draws"] / max(info["returned"], 1),
                       n=info["returned"], description="DDIM draws spent per returned image"),
            ]
            break
        return out
