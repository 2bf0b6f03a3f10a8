"""Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, Eq. 6).

    d²((μ1, Σ1), (μ2, Σ2)) = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})

With Inception-v3 pool features it is the FID; with any other feature map it is a
Fréchet distance in that space (not comparable with published FIDs).
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof = 1) of (n, d) features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (n, d) features with n >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ1 Σ2)^{1/2}) through the symmetric form Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}).

    Σ1 Σ2 is similar to the symmetric PSD matrix Σ1^{1/2} Σ2 Σ1^{1/2}, so both have the
    same non-negative eigenvalues; the symmetric form lets ``eigh`` find them stably
    even when n < d makes the covariances singular.
    """
    # Square root of Σ1 from its eigendecomposition (clip rounding noise below zero).
    lam, v = np.linalg.eigh(np.asarray(sigma1, dtype=np.float64))
    root1 = (v * np.sqrt(np.clip(lam, 0.0, None))) @ v.T

    # Eigenvalues of Σ1^{1/2} Σ2 Σ1^{1/2}; their square roots sum to the trace.
    m = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    mu = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(mu, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """d² between N(μ1, Σ1) and N(μ2, Σ2) (Heusel et al. 2017, Eq. 6)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    diff = mu1 - mu2
    tr = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + tr)


def frechet_distance_features(x: np.ndarray, y: np.ndarray) -> float:
    """d² between Gaussians fitted to two (n, d) feature sets."""
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
