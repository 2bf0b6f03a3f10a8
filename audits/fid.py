"""Image quality of a defended target: FID (Heusel et al. 2017) and a domain Fréchet distance.

Registered as an attack so that quality is a column for every defense.  It is not
an attack and says nothing about safety: its metrics have no safer direction
(``direction=None``); lower means samples closer to the data distribution.

- ``fid``: Fréchet distance of Inception-v3 pool features (the TensorFlow FID weights,
  loaded offline) between ``n`` samples and ``n`` holdout images.  FID is biased
  upwards at small n, so ``n`` is always reported and ``fid_real`` gives the same
  statistic between two disjoint sets of ``n`` real holdout images: the floor a
  perfect generator would reach at this n.
- ``fd_domain``: the same distance in the features of a small encoder trained on
  this dataset (see ``leakbench.quality.domain``); comparable only within one
  dataset, profile and seed, never with published FIDs.  ``fd_domain_real`` is its
  real-vs-real floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from leakbench.api import Attack, AuditTarget, Finding, Metric
from leakbench.errors import DataError
from leakbench.quality.domain import DOMAIN_ENCODER_VERSION, domain_encoder
from leakbench.quality.fid import cached_state, feature_state, frechet_between_states
from leakbench.quality.inception import INCEPTION_FILE, InceptionFeatures

GRID_SIZE = 64


@dataclass(frozen=True)
class FIDParams:
    n_samples: int | None = None  # None: the profile's fid_n

    def __post_init__(self):
        if self.n_samples is not None and self.n_samples < 2:
            raise ValueError(f"n_samples={self.n_samples} must be at least 2 (a covariance needs two)")


def reference_indices(n_holdout: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, seeded sets of ``n`` holdout indices: the reference and the floor set."""
    perm = np.random.default_rng([seed, 0xF1D]).permutation(n_holdout)
    return np.sort(perm[:n]), np.sort(perm[n:2 * n])


class FID(Attack):
    """FID and domain Fréchet distance of the samples against fresh real images."""

    name = "fid"
    version = "1"
    access = "black-box"
    Params = FIDParams
    description = ("image quality: FID (standard Inception-v3, offline) and fd_domain (encoder "
                   "trained on the dataset) of samples vs holdout images; not a safety metric")
    paper = "Heusel et al. 2017 (FID); CPSample paper 001, Sec. 4.4, Table 4"

    def run(self, target: AuditTarget, ctx) -> Finding:
        n = self.params.n_samples or ctx.profile.fid_n
        splits = target.splits
        holdout = splits.holdout
        if 2 * n > len(holdout):
            raise DataError(
                f"FID with n={n} needs {2 * n} holdout images but the split has {len(holdout)}; "
                f"pass fid[n_samples={len(holdout) // 2}] or use a larger pool."
            )
        ref_idx, floor_idx = reference_indices(len(holdout), n, ctx.seed)
        base = {"splits": splits.hash, "image_size": splits.image_shape[-1], "n": n,
                "seed": ctx.seed}

        # Draw the samples: the first n of the suite's shared sample set when it is large enough.
        n_draw = max(n, ctx.profile.n_samples)
        samples = target.sample(n_draw)[:n]

        # FID: Inception statistics of the reference and floor sets (cached), then the samples.
        inception = InceptionFeatures()
        inc_spec = {**base, "weights": INCEPTION_FILE}
        ref = cached_state(ctx, feature="inception", spec={**inc_spec, "set": "reference"},
                           module=lambda: inception, images=lambda: holdout[ref_idx])
        floor = cached_state(ctx, feature="inception", spec={**inc_spec, "set": "floor"},
                             module=lambda: inception, images=lambda: holdout[floor_idx])
        fake = feature_state(inception, samples, progress=ctx.progress,
                             desc="inception features of samples", device=ctx.device)
        fid = frechet_between_states(ref, fake)
        fid_real = frechet_between_states(ref, floor)

        # Domain Fréchet distance: same sets, features of the dataset's own encoder.
        encoder = domain_encoder(ctx)
        dom_spec = {**base, "encoder": DOMAIN_ENCODER_VERSION,
                    "encoder_steps": ctx.profile.domain_encoder_steps}
        d_ref = cached_state(ctx, feature="domain", spec={**dom_spec, "set": "reference"},
                             module=lambda: encoder, images=lambda: holdout[ref_idx],
                             batch_size=256)
        d_floor = cached_state(ctx, feature="domain", spec={**dom_spec, "set": "floor"},
                               module=lambda: encoder, images=lambda: holdout[floor_idx],
                               batch_size=256)
        fd = frechet_between_states(d_ref, feature_state(encoder, samples, batch_size=256,
                                                         device=ctx.device))
        fd_real = frechet_between_states(d_ref, d_floor)

        metrics = [
            Metric("fid", fid, n=n, direction=None, bounds=(0.0, None),
                   description=f"FID of {n} samples vs {n} holdout images (Inception-v3, TF "
                               "weights); biased upwards at small n"),
            Metric("fid_real", fid_real, n=n, direction=None, bounds=(0.0, None),
                   description=f"FID between two disjoint sets of {n} holdout images: the floor "
                               "at this n"),
            Metric("fd_domain", fd, n=n, direction=None, bounds=(0.0, None),
                   description="Fréchet distance in a locally trained encoder's features; not "
                               "comparable with published FIDs"),
            Metric("fd_domain_real", fd_real, n=n, direction=None, bounds=(0.0, None),
                   description="fd_domain between two disjoint sets of holdout images"),
        ]
        grid = samples[:GRID_SIZE].to(torch.float32).numpy()
        info = {"n_samples": n, "n_reference": n, "reference": "holdout",
                "inception_weights": INCEPTION_FILE}
        return Finding(metrics, arrays={"sample_grid": grid}, info=info, headline="fid")
