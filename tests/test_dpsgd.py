"""DP-SGD and DPDM: Opacus wraps the U-Net, per-member clipping, noise multiplicity, DPDM's
noise levels, ε accounting."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from leakbench.diffusion.private import (
    dp_step,
    edm_timestep_probs,
    per_example_loss,
    poisson_sample_rate,
    train_private_denoiser,
)
from leakbench.diffusion.schedule import make_schedule
from leakbench.diffusion.unet import UNet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def schedule():
    return make_schedule("linear", 100)


def _images(n, size=8, seed=0):
    return torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _private(model, images, *, max_grad_norm, batch_size):
    """Opacus' model and SGD(lr = 1) optimizer with σ = 0: a step moves θ by −Σ clipped / B."""
    from opacus import PrivacyEngine

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images),
                                         batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dp_model, opt, _ = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            data_loader=loader, noise_multiplier=0.0, max_grad_norm=max_grad_norm)
    return dp_model, opt


def _flat(params):
    return torch.cat([p.detach().flatten() for p in params])


@pytest.mark.parametrize("attention", [False, True])
def test_unet_passes_opacus_validator_unchanged(attention):
    from opacus.validators import ModuleValidator

    ModuleValidator.validate(UNet(1, (16, 32), attention), strict=True)
    ModuleValidator.validate(UNet(6, (16, 32), attention, out_channels=3), strict=True)


@pytest.mark.parametrize("timesteps", ["uniform", "edm"])
def test_per_sample_gradients_average_the_noise_draws(schedule, timesteps):
    """Opacus' per-member gradient = the mean of its K single-draw gradients (same t, ε)."""
    K, x0 = 3, _images(4)
    probs = edm_timestep_probs(schedule) if timesteps == "edm" else None
    torch.manual_seed(0)
    model = UNet(1, (8, 16))
    reference = copy.deepcopy(model)
    dp_model, _ = _private(model, x0, max_grad_norm=1.0, batch_size=4)

    from leakbench.diffusion.private import merge_noise_draws

    per_example_loss(dp_model, x0, schedule, torch.Generator().manual_seed(5), K,
                     probs).mean().backward()
    merge_noise_draws(dp_model, K)
    ours = torch.stack([_flat(p.grad_sample[i] for p in dp_model.parameters()) for i in range(4)])

    # The same (t, ε) draws (same generator), one row = one draw: average its K gradients.
    losses = per_example_loss(reference, x0, schedule, torch.Generator().manual_seed(5), K, probs)
    for i in range(4):
        single = [_flat(torch.autograd.grad(losses[i * K + k], list(reference.parameters()),
                                            retain_graph=True)) for k in range(K)]
        assert torch.allclose(ours[i], torch.stack(single).mean(0), rtol=1e-3, atol=1e-6)
        assert not torch.allclose(single[0], single[1], rtol=1e-3, atol=1e-6)  # draws differ


@pytest.mark.parametrize("noise_draws", [1, 2])
def test_every_clipped_per_sample_gradient_is_at_most_max_grad_norm(schedule, noise_draws):
    """One member per step with σ = 0 and SGD(lr = 1): −Δθ · B is that member's clipped gradient."""
    C, x0 = 0.05, _images(8)
    torch.manual_seed(0)
    dp_model, opt = _private(UNet(1, (8, 16)), x0, max_grad_norm=C, batch_size=2)
    B = opt.expected_batch_size
    norms = []
    for i in range(len(x0)):
        before = _flat(dp_model.parameters())
        dp_step(dp_model, opt, x0[i:i + 1], schedule, torch.Generator().manual_seed(i),
                noise_draws)
        norms.append(float((before - _flat(dp_model.parameters())).norm() * B))
    # Every member's gradient is clipped to norm ≤ C; these are far larger, so each sits at C.
    assert max(norms) <= C * (1 + 1e-4)
    assert min(norms) >= C * (1 - 1e-3)


def _private_stats(schedule, *, n_images: int, steps: int) -> dict:
    """Training statistics of a small DP-SGD run at (ε, δ) = (4, 1e-5), batch 8, C = 1."""
    torch.manual_seed(0)
    _, stats = train_private_denoiser(
        UNet(1, (8, 16)), _images(n_images), schedule=schedule, steps=steps, batch_size=8,
        learning_rate=1e-3, ema_decay=0.9, seed=0, target_epsilon=4.0, target_delta=1e-5,
        max_grad_norm=1.0, progress=False)
    return stats


def test_epsilon_matches_an_independent_accountant(schedule):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    stats = _private_stats(schedule, n_images=32, steps=12)
    assert stats["sample_rate"] == 8 / 32
    assert stats["accounted_steps"] == 12
    assert stats["accountant"] == "rdp"
    assert stats["epsilon"] <= 4.0

    # The same σ, q and steps through a fresh accountant give the same ε ...
    acc = RDPAccountant()
    acc.history = [(stats["noise_multiplier"], 8 / 32, 12)]
    assert stats["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    # ... and σ is the one calibrated for (ε, δ) at q over exactly 12 steps.
    sigma = get_noise_multiplier(target_epsilon=4.0, target_delta=1e-5, sample_rate=8 / 32,
                                 steps=12, accountant="rdp")
    assert stats["noise_multiplier"] == pytest.approx(sigma, rel=1e-9)
    assert stats["epsilon"] > 4.0 - 0.05  # the budget is spent, not wasted by a loose σ


def test_sample_rate_is_batch_over_members_when_the_batch_does_not_divide_them(schedule):
    """N = 33, L = 8: q = 8/33 for sampler and accountant (Opacus' make_private: 1/⌈33/8⌉ = 0.2)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    assert poisson_sample_rate(264, 64) == 64 / 264  # the one-run audit's members (0.2 before)
    assert poisson_sample_rate(128, 64) == 0.5 and poisson_sample_rate(8, 64) == 1.0
    stats = _private_stats(schedule, n_images=33, steps=5)
    assert stats["sample_rate"] == 8 / 33
    sigma = get_noise_multiplier(target_epsilon=4.0, target_delta=1e-5, sample_rate=8 / 33,
                                 steps=5, accountant="rdp")
    assert stats["noise_multiplier"] == pytest.approx(sigma, rel=1e-9)
    acc = RDPAccountant()
    acc.history = [(sigma, 8 / 33, 5)]
    assert stats["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_the_poisson_batches_have_the_profiles_expected_size():
    """Opacus' sampler at q = L / N draws batches of mean L (64 of 264, not 52.8)."""
    from opacus.data_loader import DPDataLoader

    data = torch.utils.data.TensorDataset(torch.arange(264))
    torch.manual_seed(0)
    loader = DPDataLoader(data, sample_rate=poisson_sample_rate(264, 64))
    sizes = torch.tensor([float(len(b)) for _ in range(20) for (b,) in loader])
    se = (264 * (64 / 264) * (1 - 64 / 264)) ** 0.5 / len(sizes) ** 0.5
    assert abs(float(sizes.mean()) - 64) < 4 * se
    assert abs(float(sizes.mean()) - 52.8) > 4 * se


@pytest.mark.parametrize("timesteps", ["uniform", "edm"])
def test_noise_multiplicity_leaves_the_accounting_alone(schedule, timesteps):
    probs = edm_timestep_probs(schedule) if timesteps == "edm" else None

    def run(k):
        torch.manual_seed(0)
        return train_private_denoiser(
            UNet(1, (8, 16)), _images(16), schedule=schedule, steps=4, batch_size=8,
            learning_rate=1e-3, ema_decay=0.9, seed=0, target_epsilon=8.0, target_delta=1e-5,
            max_grad_norm=1.0, noise_draws=k, timestep_probs=probs, progress=False)

    (m1, one), (m3, three) = run(1), run(3)
    for key in ("noise_multiplier", "epsilon", "sample_rate", "accounted_steps"):
        assert one[key] == three[key]
    assert three["noise_draws"] == 3 and one["noise_draws"] == 1
    # ... while the training itself did change.
    assert not torch.equal(_flat(m1.parameters()), _flat(m3.parameters()))


def test_edm_timesteps_put_more_mass_on_high_noise_than_uniform():
    """DPDM's EDM noise levels with EDM's weight, on the default profile's schedule."""
    T = 1000
    probs = edm_timestep_probs(make_schedule("linear", T))
    assert probs.shape == (T,) and bool((probs >= 0).all())
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(probs[T // 2:].sum()) > 0.52  # uniform: 0.50
    assert float(probs[400:700].sum()) > 0.40  # uniform: 0.30
    # Unweighted, the same log-normal sits at σ ≈ 0.3 (low t): the weight is what tilts it.
    unweighted = edm_timestep_probs(make_schedule("linear", T), sigma_data=1e6)
    assert float(unweighted[T // 2:].sum()) < 0.05


def test_edm_timesteps_match_a_quadrature_of_the_edm_objective():
    """∫ N(ln σ; −1.2, 1.2²)(1 + σ²/σ_d²) d ln σ on a fine grid, σ to the nearest σ_t: same P(t)."""
    import numpy as np

    schedule = make_schedule("linear", 100)
    probs = edm_timestep_probs(schedule).numpy()
    a = schedule.alpha_bar.numpy()
    log_sigma_t = 0.5 * np.log((1 - a) / a)
    u = np.linspace(-12.0, 12.0, 400_001)  # ln σ
    density = np.exp(-0.5 * ((u + 1.2) / 1.2) ** 2) * (1 + np.exp(2 * u) * 3.0)
    t = np.searchsorted((log_sigma_t[1:] + log_sigma_t[:-1]) / 2, u)  # nearest ln σ_t
    quad = np.bincount(t, weights=density, minlength=100)
    assert np.abs(quad / quad.sum() - probs).max() < 1e-4


def test_per_example_loss_draws_timesteps_from_the_given_distribution(schedule):
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t):
            seen.append(t.clone())
            return torch.zeros_like(x)

    probs = torch.zeros(100)
    probs[3], probs[90] = 0.8, 0.2
    per_example_loss(Recorder(), _images(1000), schedule, torch.Generator().manual_seed(0), 4,
                     probs)
    t = seen[0]
    assert t.shape == (4000,) and set(t.unique().tolist()) == {3, 90}
    assert abs(float((t == 3).float().mean()) - 0.8) < 4 * (0.8 * 0.2 / 4000) ** 0.5


def test_dpsgd_defense_at_smoke_size(smoke_harness):
    built = smoke_harness.target("digits", "dpsgd[epsilon=5]")
    ctx = smoke_harness.context("digits")
    figures = {m.name: m for m in built.defense.figures(built.target)}
    assert figures["epsilon"].value <= 5.0 and figures["epsilon"].direction == "lower"
    assert figures["steps"].value == ctx.profile.train_steps
    assert figures["delta"].value == 1e-5
    assert figures["noise_multiplier"].value > 0
    assert "rdp" in figures["epsilon"].description
    assert built.target.info["accountant"] == "rdp"
    assert built.target.info["secure_mode"] is False
    assert "secure_mode=False" in figures["epsilon"].description
    images = built.target.sample(4, seed=0)
    assert images.shape == (4, *ctx.splits.image_shape) and bool(images.isfinite().all())


def test_dpdm_defense_at_smoke_size(smoke_harness):
    built = smoke_harness.target("digits", "dpdm[epsilon=5]")
    ctx = smoke_harness.context("digits")
    figures = {m.name: m for m in built.defense.figures(built.target)}
    info = built.target.info
    assert figures["epsilon"].value <= 5.0 and "secure_mode=False" in figures["epsilon"].description
    assert "K = 4 noise draws per member" in figures["epsilon"].description
    assert figures["noise_draws"].value == 4 and info["timesteps"] == "weighted"
    expected = edm_timestep_probs(ctx.schedule)
    assert figures["mean_timestep"].value == pytest.approx(
        float((expected * torch.arange(len(expected))).sum()))
    assert figures["steps"].value == ctx.profile.train_steps
    images = built.target.sample(4, seed=0)
    assert images.shape == (4, *ctx.splits.image_shape) and bool(images.isfinite().all())

    # Same ε budget, σ and q as plain DP-SGD: K and the noise levels cost no privacy.
    plain = smoke_harness.target("digits", "dpsgd[epsilon=5]").target.info
    for key in ("epsilon", "noise_multiplier", "sample_rate", "accounted_steps"):
        assert info[key] == plain[key]
    assert plain["noise_draws"] == 1 and plain["timesteps"] == "uniform"


def test_params_are_validated():
    from leakbench.errors import UsageError
    from leakbench.harness import resolve_plugin
    from leakbench.registry import DEFENSES

    assert resolve_plugin(DEFENSES, "dpsgd[accountant=prv,noise_draws=4]").params.noise_draws == 4
    with pytest.raises(UsageError, match="epsilon"):
        resolve_plugin(DEFENSES, "dpsgd[epsilon=0]")
    with pytest.raises(UsageError, match="rdp"):
        resolve_plugin(DEFENSES, "dpsgd[accountant=moments]")
    assert resolve_plugin(DEFENSES, "dpdm").params.noise_draws == 4
    assert resolve_plugin(DEFENSES, "dpdm[noise_draws=32]").params.noise_draws == 32
    with pytest.raises(UsageError, match="p_std"):
        resolve_plugin(DEFENSES, "dpdm[p_std=0]")
    with pytest.raises(UsageError, match=r"gdp can underestimate ε.*choose one of rdp, prv\."):
        resolve_plugin(DEFENSES, "dpdm[accountant=gdp]")


def test_gdp_accountant_is_refused_with_its_reason(schedule):
    from leakbench.errors import UsageError
    from leakbench.harness import resolve_plugin
    from leakbench.registry import DEFENSES

    with pytest.raises(UsageError, match=r"gdp can underestimate ε.*choose one of rdp, prv\."):
        resolve_plugin(DEFENSES, "dpsgd[accountant=gdp]")
    assert resolve_plugin(DEFENSES, "dpsgd[accountant=prv]").params.accountant == "prv"
    # The training function refuses it too, before any work.
    model = UNet(1, (8, 16))
    with pytest.raises(UsageError, match="accountant=gdp can underestimate"):
        train_private_denoiser(model, torch.zeros(8, 1, 8, 8), schedule=schedule, steps=1,
                               batch_size=4, learning_rate=1e-3, ema_decay=0.9, seed=0,
                               target_epsilon=5.0, target_delta=1e-5, max_grad_norm=1.0,
                               accountant="gdp")
