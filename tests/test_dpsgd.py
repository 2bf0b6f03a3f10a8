"""DP-SGD: Opacus wraps the U-Net, per-member clipping, noise multiplicity, ε accounting."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from leakbench.diffusion.private import (
    dp_step,
    per_example_loss,
    planned_epochs,
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


def test_per_sample_gradients_average_the_noise_draws(schedule):
    """Opacus' per-member gradient = autograd's gradient of that member's K-draw mean loss."""
    K, x0 = 3, _images(4)
    torch.manual_seed(0)
    model = UNet(1, (8, 16))
    reference = copy.deepcopy(model)
    dp_model, _ = _private(model, x0, max_grad_norm=1.0, batch_size=4)

    from leakbench.diffusion.private import merge_noise_draws

    per_example_loss(dp_model, x0, schedule, torch.Generator().manual_seed(5), K).mean().backward()
    merge_noise_draws(dp_model, K)
    ours = torch.stack([_flat(p.grad_sample[i] for p in dp_model.parameters()) for i in range(4)])

    losses = per_example_loss(reference, x0, schedule, torch.Generator().manual_seed(5), K)
    for i in range(4):
        grads = torch.autograd.grad(losses[i * K:(i + 1) * K].mean(), list(reference.parameters()),
                                    retain_graph=True)
        assert torch.allclose(ours[i], _flat(grads), rtol=1e-3, atol=1e-6)


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


def test_epsilon_matches_an_independent_accountant(schedule):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    torch.manual_seed(0)
    _, stats = train_private_denoiser(
        UNet(1, (8, 16)), _images(32), schedule=schedule, steps=12, batch_size=8,
        learning_rate=1e-3, ema_decay=0.9, seed=0, target_epsilon=4.0, target_delta=1e-5,
        max_grad_norm=1.0, progress=False)
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


def test_noise_multiplicity_leaves_the_accounting_alone(schedule):
    def run(k):
        torch.manual_seed(0)
        return train_private_denoiser(
            UNet(1, (8, 16)), _images(16), schedule=schedule, steps=4, batch_size=8,
            learning_rate=1e-3, ema_decay=0.9, seed=0, target_epsilon=8.0, target_delta=1e-5,
            max_grad_norm=1.0, noise_draws=k, progress=False)[1]

    one, three = run(1), run(3)
    for key in ("noise_multiplier", "epsilon", "sample_rate", "accounted_steps"):
        assert one[key] == three[key]
    assert three["noise_draws"] == 3


def test_planned_epochs_give_exactly_the_planned_steps():
    for steps in (1, 7, 20, 3000, 12345):
        for q in (1.0, 0.5, 1 / 3, 1 / 7, 0.123):
            assert int(planned_epochs(steps, q) / q) == steps


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


def test_params_are_validated():
    from leakbench.errors import UsageError
    from leakbench.harness import resolve_plugin
    from leakbench.registry import DEFENSES

    assert resolve_plugin(DEFENSES, "dpsgd[accountant=prv,noise_draws=4]").params.noise_draws == 4
    with pytest.raises(UsageError, match="epsilon"):
        resolve_plugin(DEFENSES, "dpsgd[epsilon=0]")
    with pytest.raises(UsageError, match="rdp"):
        resolve_plugin(DEFENSES, "dpsgd[accountant=moments]")


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
