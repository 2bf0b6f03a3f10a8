"""FID and domain Fréchet distance: torchmetrics' ``FrechetInceptionDistance`` accumulates, we solve.

torchmetrics' metric takes a custom feature module and accumulates the feature sum,
the outer-product sum and the count; those three tensors are the statistics of a
set of images, cached per (dataset splits, image size, n, feature map) so that
every defense on a dataset reuses the real images' statistics.

The distance itself is :func:`leakbench.quality.frechet.frechet_distance`:
torchmetrics' ``compute`` takes the eigenvalues of the non-symmetric 2048 × 2048
product Σ1 Σ2 (``torch.linalg.eigvals``), over a minute on a 2-core CPU, where the
symmetric form needs two ``eigh`` calls; ``tests/test_quality.py`` checks the two
agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from leakbench.quality.frechet import frechet_distance

if TYPE_CHECKING:
    from leakbench.context import RunContext

STATE = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def feature_state(module: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
                  progress: bool = False, desc: str = "features", device: str = "cpu"
                  ) -> dict[str, torch.Tensor]:
    """torchmetrics' accumulated statistics (Σf, Σffᵀ, n) of ``images`` under ``module``.

    The features and the sums are computed on ``device``; the statistics come back on the CPU.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from tqdm.auto import tqdm

    metric = FrechetInceptionDistance(feature=module, reset_real_features=False).to(device)
    for i in tqdm(range(0, len(images), batch_size), disable=not progress, desc=desc, leave=False):
        metric.update(images[i:i + batch_size].to(device), real=True)
    return {k: getattr(metric, k).detach().cpu().clone() for k in STATE}


def gaussian_from_state(state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) from accumulated sums, as torchmetrics' ``compute`` forms them (ddof = 1)."""
    n = int(state["real_features_num_samples"])
    if n < 2:
        raise ValueError(f"a covariance needs at least two images, got {n}")
    total = state["real_features_sum"].double().numpy()
    outer = state["real_features_cov_sum"].double().numpy()
    mu = total / n
    sigma = (outer - n * np.outer(mu, mu)) / (n - 1)
    return mu, sigma


def frechet_between_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Fréchet distance between the Gaussians of two accumulated statistics."""
    return frechet_distance(*gaussian_from_state(a), *gaussian_from_state(b))


def cached_state(ctx: RunContext, *, feature: str, spec: dict[str, Any],
                 module: Callable[[], nn.Module], images: Callable[[], torch.Tensor],
                 batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Real-image statistics under ``feature``, built once per ``spec`` and cached."""
    def build():
        return feature_state(module(), images(), batch_size=batch_size, progress=ctx.progress,
                             desc=f"{feature} features of real images", device=ctx.device)

    return ctx.cache.get_or_build("fid_stats", {"feature": feature, **spec}, build,
                                  label=f"{feature} statistics n={spec.get('n')}")
