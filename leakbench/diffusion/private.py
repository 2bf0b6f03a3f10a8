"""Differentially private denoiser training: DP-SGD with Opacus (Abadi et al. 2016; DPDM).

Each step samples a Poisson batch (every member independently with probability
q = L / N, L the expected batch), clips every member's gradient to norm C, sums, adds
N(0, σ²C²) noise and takes an Adam step (Abadi et al. 2016, Algorithm 1).  σ is
calibrated so that the planned number of steps spends at most the target (ε, δ); the
accountant tracks what was spent.  Noise multiplicity (Dockhorn et al. 2023, DPDM,
Sec. 3.2) averages the denoising loss of one member over K draws of (t, ε) *before*
clipping: the member is still one record of the mechanism, so the accounting does not
change.  DPDM's noise-level distribution (``edm_timestep_probs``) replaces uniform t.
The EMA of the weights is post-processing and costs no privacy.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from leakbench.diffusion.schedule import NoiseSchedule
from leakbench.diffusion.training import ema_update

REPORTED_ACCOUNTANTS = ("rdp", "prv")
"""Opacus accountants whose ε the suite reports: an upper bound on the privacy spent.
Opacus' "gdp" (the Gaussian-DP CLT approximation) can underestimate ε, so it is refused."""

SECURE_MODE = False
"""Opacus ``secure_mode``: off, so the noise comes from a seeded generator and a rerun is
bit-for-bit the same.  Fine for a benchmark; a model meant for release needs a CSPRNG."""


def refused_accountant(accountant: str) -> str:
    """The sentence refusing an accountant whose ε the suite does not report."""
    why = (" can underestimate ε (Opacus warns so), and the reported ε must be an upper bound"
           if accountant == "gdp" else " is not one the suite reports")
    return (f"accountant={accountant}{why}; choose one of {', '.join(REPORTED_ACCOUNTANTS)}.")


def edm_timestep_probs(
    schedule: NoiseSchedule,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = math.sqrt(1 / 3),
) -> torch.Tensor:
    """(T,) P(t): DPDM's EDM noise-level distribution and loss weight on our DDPM timesteps.

    DPDM (Dockhorn et al. 2023; its MNIST configs, ``loss.version: edm``) draws the
    noise level as ln σ ~ N(P_mean, P_std²) (P_mean = −1.2, P_std = 1.2, Karras et al.
    2022) and weights the x₀ error by λ(σ) = (σ² + σ_d²) / (σ σ_d)², σ_d² = 1/3.
    Our forward process x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε is that diffusion at
    σ_t = √((1−ᾱ_t)/ᾱ_t) (x_t / √ᾱ_t = x₀ + σ_t ε), and the x₀ error of an ε-predictor
    is σ_t times its ε error, so the EDM objective in our ε-parameterisation is
    E_σ[(1 + σ²/σ_d²) ‖ε − ε_θ‖²].  We sample t from that weighted density instead of
    weighting the loss: the same objective up to the constant Z = E_σ[1 + σ²/σ_d²] (≈ 5.9),
    with every row's loss on the plain ε scale that ``dpsgd`` clips at C.  The weight is
    what tilts the draws toward high noise: p(σ)·σ² is a log-normal with mean
    P_mean + 2P_std², so

        P(t) ∝ Φ_t(P_mean) + exp(2P_mean + 2P_std²)/σ_d² · Φ_t(P_mean + 2P_std²),

    Φ_t(μ) the N(μ, P_std²) mass of ln σ on t's cell: between the midpoints of
    ln σ_{t−1}, ln σ_t, ln σ_{t+1} (the end cells reach ±∞, so mass beyond the schedule's
    range goes to t = 0 or T − 1).  On the default linear schedule (T = 1,000) this puts
    54 % of the draws on t ≥ T/2 (uniform t: 50 %), 46 % on 400 ≤ t < 700 (uniform: 30 %)
    and 10 % on t < 100 (from the mixture's unweighted term, 17 % of it); the tilt is mild
    because DDPM's linear schedule already spends half its uniform draws at σ_t > 3.4.
    EDM's preconditioning (c_skip, c_out, c_in) is not taken: the network, its
    ε-parameterisation and the DDIM sampler stay the ones every other defense uses.
    """
    from scipy.stats import norm

    alpha_bar = schedule.alpha_bar.double()
    log_sigma = (0.5 * torch.log((1 - alpha_bar) / alpha_bar)).numpy()
    edges = (log_sigma[1:] + log_sigma[:-1]) / 2
    lo = [-math.inf, *edges]
    hi = [*edges, math.inf]

    def cell_mass(mu: float):
        return norm.cdf(hi, loc=mu, scale=p_std) - norm.cdf(lo, loc=mu, scale=p_std)

    high = math.exp(2 * p_mean + 2 * p_std ** 2) / sigma_data ** 2
    probs = cell_mass(p_mean) + high * cell_mass(p_mean + 2 * p_std ** 2)
    probs = torch.as_tensor(probs, dtype=torch.float64)
    return probs / probs.sum()


def per_example_loss(
    model: nn.Module,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator,
    noise_draws: int = 1,
    timestep_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N·K,) DDPM losses ‖ε − ε_θ(x_t, t)‖²/d, K = ``noise_draws`` rows per member, in order.

    Rows i·K … i·K + K − 1 belong to member i, each with its own (t, ε).  t is uniform
    over the schedule's timesteps, or drawn from ``timestep_probs`` (T,) when given.
    """
    x0 = x0.repeat_interleave(noise_draws, dim=0)
    n = x0.shape[0]
    if timestep_probs is None:
        t = torch.randint(0, schedule.num_timesteps, (n,), generator=generator)
    else:
        t = torch.multinomial(timestep_probs.float(), n, replacement=True, generator=generator)
    t = t.to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = schedule.add_noise(x0, t, eps)
    return (model(x_t, t) - eps).pow(2).flatten(1).mean(1)


def merge_noise_draws(model: nn.Module, noise_draws: int) -> None:
    """Average each parameter's per-sample gradients over the K rows of one member (DPDM).

    With Opacus' ``loss_reduction="mean"`` over N·K rows, ``grad_sample`` row (i, k) is
    ∇ℓ(x_i; t_k, ε_k); their mean over k is the gradient of member i's K-draw loss,
    which is what gets clipped.
    """
    if noise_draws == 1:
        return
    for p in model.parameters():
        g = getattr(p, "grad_sample", None)
        if g is not None:
            p.grad_sample = g.reshape(-1, noise_draws, *g.shape[1:]).mean(1)


def dp_step(
    dp_model: nn.Module,
    optimizer,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator,
    noise_draws: int = 1,
    timestep_probs: torch.Tensor | None = None,
) -> float | None:
    """One (physical) DP-SGD step on a Poisson batch; return its mean loss (None if empty).

    ``dp_model`` and ``optimizer`` come from Opacus' ``make_private``: the optimizer
    clips every member's gradient, sums, adds the noise and steps (or, inside a
    ``BatchMemoryManager``, only accumulates until the logical batch is complete).
    """
    # Per-member loss over K noise draws, per-sample gradients merged over the draws.
    loss = per_example_loss(dp_model, x0, schedule, generator, noise_draws, timestep_probs)
    if len(loss):
        loss.mean().backward()
    else:
        _empty_grad_samples(dp_model)
    merge_noise_draws(dp_model, noise_draws)

    # Clip, sum, add N(0, σ²C²), scale by the expected batch size, and step.
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach().mean()) if len(loss) else None


def poisson_sample_rate(n_members: int, batch_size: int) -> float:
    """q = L / N: the rate at which Poisson sampling's expected batch is the profile's L.

    Opacus' ``make_private`` sets q = 1 / len(data_loader) = 1 / ⌈N / L⌉, which is L / N only
    when L divides N (at N = 264, L = 64: q = 0.2, an expected batch of 52.8, not 0.242).
    The accountant must get the q the sampler uses, so both take this one.
    """
    return min(1.0, batch_size / n_members)


def train_private_denoiser(
    model: nn.Module,
    images: torch.Tensor,
    *,
    schedule: NoiseSchedule,
    steps: int,
    batch_size: int,
    learning_rate: float,
    ema_decay: float,
    seed: int,
    target_epsilon: float,
    target_delta: float,
    max_grad_norm: float,
    noise_draws: int = 1,
    timestep_probs: torch.Tensor | None = None,
    accountant: str = "rdp",
    max_physical_batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "DP-SGD training",
) -> tuple[nn.Module, dict]:
    """Train ``model`` on ``images`` with DP-SGD for exactly ``steps`` steps; return (EMA, stats).

    The expected batch is ``batch_size`` (q = batch_size / N); σ comes from Opacus'
    ``get_noise_multiplier`` for q and the planned steps.  ``noise_draws`` (K) and
    ``timestep_probs`` are DPDM's noise multiplicity and noise-level distribution.
    ``stats`` holds ε spent (from the accountant), δ, σ, q, K, the steps and the costs.
    The training runs in fp32 whatever ``model.precision`` says (see below); the caller
    may sample the result in bf16.
    """
    from opacus import GradSampleModule
    from opacus.accountants import create_accountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers import DPOptimizer
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from opacus.validators import ModuleValidator

    from leakbench.errors import UsageError

    if accountant not in REPORTED_ACCOUNTANTS:
        raise UsageError(refused_accountant(accountant))
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise UsageError(f"The denoiser cannot be trained with DP-SGD ({errors[0]}); use a model "
                         "without BatchNorm.")
    # Opacus computes per-sample gradients from the layers' activations: under bf16 autocast
    # they, and the norms clipping measures, are bf16, and a clipped gradient could exceed
    # max_grad_norm, which ε assumes.  DP-SGD therefore trains in fp32 at every precision.
    if getattr(model, "precision", "fp32") != "fp32":
        model.precision = "fp32"
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    sample_rate = poisson_sample_rate(len(images), batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()

    # The Poisson sampler draws from the global RNG: seed it, and leave the caller's RNG alone.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*")
        warnings.filterwarnings("ignore", message=".*non-full backward hook.*")
        torch.manual_seed(int(seed))
        # What PrivacyEngine.make_private_with_epsilon assembles, built from its parts so that
        # the sampler and the accountant share q = L / N (see poisson_sample_rate).
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                     sample_rate=sample_rate, steps=steps, accountant=accountant)
        engine_accountant = create_accountant(accountant)
        dp_model = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        dp_model.forbid_grad_accumulation()
        dp_loader = DPDataLoader(torch.utils.data.TensorDataset(images), sample_rate=sample_rate)
        optimizer = DPOptimizer(
            torch.optim.Adam(model.parameters(), lr=learning_rate),
            noise_multiplier=sigma, max_grad_norm=max_grad_norm,
            expected_batch_size=min(batch_size, len(images)), loss_reduction="mean",
            generator=torch.Generator().manual_seed(int(seed) + 1), secure_mode=SECURE_MODE,
        )
        optimizer.attach_step_hook(engine_accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        calibration_seconds = time.perf_counter() - t0
        physical = max_physical_batch_size or 2 * batch_size

        done, losses = 0, []
        bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False)
        while done < steps:
            with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=physical,
                                    optimizer=optimizer) as batches:
                for (x0,) in batches:
                    loss = dp_step(dp_model, optimizer, x0.to(device), schedule, gen, noise_draws,
                                   timestep_probs)
                    if loss is not None:
                        losses.append(loss)
                    if optimizer._is_last_step_skipped:
                        continue

                    # A logical step was taken: EMA (post-processing), progress, stop on plan.
                    ema_update(ema, dp_model._module, min(ema_decay, (1 + done) / (10 + done)))
                    done += 1
                    bar.update(1)
                    if done % 50 == 0 and losses:
                        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}",
                                        eps=f"{engine_accountant.get_epsilon(target_delta):.2f}")
                    if done == steps:
                        break
        bar.close()
    tail = losses[-max(1, len(losses) // 10):]
    stats = {
        "train_seconds": time.perf_counter() - t0,
        "calibration_seconds": calibration_seconds,  # σ's search, included in train_seconds
        "train_steps": steps,
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "epsilon": float(engine_accountant.get_epsilon(target_delta)),
        "target_epsilon": float(target_epsilon),
        "delta": float(target_delta),
        "noise_multiplier": float(optimizer.noise_multiplier),
        "max_grad_norm": float(max_grad_norm),
        "sample_rate": float(sample_rate),
        "accountant": engine_accountant.mechanism(),
        "accounted_steps": int(sum(n for _, _, n in engine_accountant.history)),
        "noise_draws": int(noise_draws),
        "timesteps": "uniform" if timestep_probs is None else "weighted",
        "mean_timestep": float(
            (schedule.num_timesteps - 1) / 2 if timestep_probs is None
            else (timestep_probs.double() * torch.arange(len(timestep_probs))).sum()),
        "secure_mode": SECURE_MODE,
    }
    return ema.cpu(), stats


def _empty_grad_samples(model: nn.Module) -> None:
    """An empty Poisson batch: zero members, so zero per-sample gradients (the noise still comes)."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = p.new_zeros((0, *p.shape))
