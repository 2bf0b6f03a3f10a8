"""Fréchet distance maths, torchmetrics agreement, the real FID weights, the fid audit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leakbench.quality.fid import feature_state, frechet_between_states, gaussian_from_state
from leakbench.quality.frechet import frechet_distance, frechet_distance_features, gaussian_stats


def _spd(rng, d, eigenvalues=None, basis=None):
    q = basis if basis is not None else np.linalg.qr(rng.normal(size=(d, d)))[0]
    lam = eigenvalues if eigenvalues is not None else rng.uniform(0.1, 3.0, size=d)
    return (q * lam) @ q.T, q


def test_closed_form_for_two_gaussians_with_shared_eigenvectors():
    # Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ ⇒ d² = ‖μ1 − μ2‖² + Σ (√a − √b)².
    rng = np.random.default_rng(0)
    d = 12
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    s1, q = _spd(rng, d, a)
    s2, _ = _spd(rng, d, b, basis=q)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_one_dimensional_gaussians():
    # d²(N(m1, s1²), N(m2, s2²)) = (m1 − m2)² + (s1 − s2)².
    got = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert got == pytest.approx(9.0 + 1.0)


def test_agrees_with_scipy_sqrtm_on_non_commuting_covariances():
    import scipy.linalg

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 20)) @ rng.normal(size=(20, 20))
    y = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)) + 0.5
    (mu1, s1), (mu2, s2) = gaussian_stats(x), gaussian_stats(y)
    root = scipy.linalg.sqrtm(s1 @ s2)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(root))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-7)


@pytest.mark.parametrize("n,d", [(500, 16), (40, 64)], ids=["full-rank", "singular"])
def test_distance_of_a_set_to_itself_is_zero(n, d):
    x = np.random.default_rng(2).normal(size=(n, d))
    scale = np.trace(gaussian_stats(x)[1])
    # With n < d the null space's eigenvalues are rounding noise ~1e-16·scale, and each
    # contributes its square root, so the singular case is zero only to ~1e-6 relative.
    assert abs(frechet_distance_features(x, x)) < 1e-6 * scale


def test_distance_grows_with_a_mean_shift():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    near, far = frechet_distance_features(x, y), frechet_distance_features(x, y + 2.0)
    assert near < 0.5 < far
    assert far == pytest.approx(near + 8 * 4.0, rel=0.1)


def test_agrees_with_torchmetrics_compute_on_the_same_statistics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Flat(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x.reshape(len(x), -1).float()

    g = torch.Generator().manual_seed(4)
    real = torch.rand(200, 1, 4, 4, generator=g)
    fake = torch.rand(150, 1, 4, 4, generator=g) ** 2
    metric = FrechetInceptionDistance(feature=Flat())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    reference = float(metric.compute())
    ours = frechet_between_states(feature_state(Flat(), real), feature_state(Flat(), fake))
    assert ours == pytest.approx(reference, rel=1e-4)
    mu, sigma = gaussian_from_state(feature_state(Flat(), real))
    np.testing.assert_allclose(mu, real.reshape(200, -1).double().mean(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(real.reshape(200, -1).double().numpy(),
                                             rowvar=False), atol=1e-10)


def _digits(n: int, size: int = 16) -> torch.Tensor:
    from leakbench.data.sources import open_dataset

    raw = open_dataset("digits").load(size)
    x = torch.from_numpy(raw.images[: n]).permute(0, 3, 1, 2).float()
    return x * 2 - 1


def _blur(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    import torchvision.transforms.functional as tf

    return tf.gaussian_blur(x, kernel_size=7, sigma=sigma)


def test_domain_encoder_separates_real_from_noise_and_blur():
    from leakbench.data.sources import open_dataset
    from leakbench.quality.domain import train_domain_encoder

    raw = open_dataset("digits").load(8)
    images = torch.from_numpy(raw.images[:600]).permute(0, 3, 1, 2).float() * 2 - 1
    encoder, stats = train_domain_encoder(images[:400], raw.labels[:400], steps=150, seed=0)
    assert stats["objective"] == "classification"
    a, b = images[400:500], images[500:600]
    noise = torch.rand(b.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def fd(x, y):
        return frechet_between_states(feature_state(encoder, x), feature_state(encoder, y))

    assert fd(a, b) < fd(a, _blur(b, 1.0)) < fd(a, noise)


def test_domain_encoder_without_labels_is_an_autoencoder():
    from leakbench.quality.domain import train_domain_encoder

    images = _digits(64, 8)
    _, stats = train_domain_encoder(images, None, steps=60, seed=0)
    _, short = train_domain_encoder(images, None, steps=5, seed=0)
    assert stats["objective"] == "reconstruction"
    assert stats["final_loss"] < short["final_loss"]


@pytest.mark.slow
def test_real_inception_weights_order_real_blurred_and_noise():
    """FID(real, real) < FID(real, blurred) < FID(real, noise) with the standard weights."""
    from leakbench.quality.inception import InceptionFeatures

    n = 24
    images = _digits(3 * n)
    reference, other = images[:n], images[n:2 * n]
    noise = torch.rand(other.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    inception = InceptionFeatures()
    ref = feature_state(inception, reference)
    assert int(ref["real_features_num_samples"]) == n
    fid = {name: frechet_between_states(ref, feature_state(inception, x))
           for name, x in [("real", other), ("blurred", _blur(other)), ("noise", noise)]}
    assert fid["real"] < fid["blurred"] < fid["noise"], fid


@pytest.mark.slow
def test_fid_audit_reports_n_and_no_direction_and_caches_real_statistics(smoke_harness):
    finding = smoke_harness.run_cell("digits", "ddim", "fid")
    n = smoke_harness.profile.fid_n
    for name in ("fid", "fid_real", "fd_domain", "fd_domain_real"):
        m = finding[name]
        assert m.n == n and m.direction is None and m.value >= -1e-6
    assert finding.headline == "fid"
    grid = finding.arrays["sample_grid"]
    assert grid.ndim == 4 and grid.shape[0] == n and grid.min() >= -1 and grid.max() <= 1
    built = [e for e in smoke_harness.cache.events if e.kind == "fid_stats"]
    assert len(built) == 4 and all(e.status == "built" for e in built)
    # A second defense on the same dataset reuses the real images' statistics.
    smoke_harness.run_cell("digits", "ambient", "fid")
    again = [e for e in smoke_harness.cache.events if e.kind == "fid_stats"][4:]
    assert len(again) == 4 and all(e.status == "hit" for e in again)
