"""The replication threshold: how close fresh real images come to the members.

The ``replication`` attack measures with it and the ``rejection`` defense filters
with it, so both call :func:`calibrate` (CPSample paper 001, Sec. 4.1, Table 1).
Half of the holdout calibrates the threshold (its ``quantile`` of nearest-member
cosine similarity); the other half is left to measure how often fresh real images
pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from leakbench.features.index import calibrate_threshold, nearest_member_similarity

if TYPE_CHECKING:
    import torch

    from leakbench.data.splits import Splits
    from leakbench.features.base import FeatureExtractor


def split_holdout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (calibration, evaluation) halves of the holdout indices, seeded."""
    perm = np.random.default_rng([seed, 0x5EED]).permutation(n)
    half = n // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and the member features it was calibrated against."""

    threshold: float
    quantile: float
    extract: FeatureExtractor
    members: np.ndarray  # (n_members, d) unit feature vectors
    holdout_sims: np.ndarray  # nearest-member similarity of every holdout image
    calib_idx: np.ndarray
    eval_idx: np.ndarray
    device: str = "cpu"  # where the nearest-neighbour search runs (FAISS GPU when available)

    def nearest(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(similarity, index) of each image's nearest member in this feature space."""
        return nearest_member_similarity(self.extract(images), self.members, device=self.device)


def calibrate(splits: Splits, extract: FeatureExtractor, quantile: float, seed: int,
              device: str = "cpu") -> Calibration:
    """The ``quantile`` of the calibration half's nearest-member similarities."""
    # Embed members and holdout in the same feature space.
    members = extract(splits.members)
    holdout = extract(splits.holdout)

    # Calibrate on one half of the holdout; the other half is for measuring.
    calib, evaluate = split_holdout(len(holdout), seed)
    holdout_sims, _ = nearest_member_similarity(holdout, members, device=device)
    threshold = calibrate_threshold(holdout_sims[calib], quantile)
    return Calibration(threshold, quantile, extract, members, holdout_sims, calib, evaluate,
                       device)


def replication_calibration(ctx, splits: Splits, feature: str = "pixels",
                            quantile: float | None = None) -> Calibration:
    """:func:`calibrate` with the suite's defaults: the profile's quantile and the run's seed."""
    from leakbench.features.extractors import get_extractor

    q = ctx.profile.holdout_quantile if quantile is None else quantile
    return calibrate(splits, get_extractor(feature, ctx), q, ctx.seed, ctx.device)
