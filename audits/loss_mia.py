"""Loss-based membership inference (CPSample paper 001, Algorithm 1 and Sec. 4.3).

After Matsumoto et al. (2023): a model that memorised x predicts the noise added to
x better.  Per image, the noise-prediction error at one timestep t,

    e(x) = ‖ε − ε̂(√ᾱ_t x + √(1−ᾱ_t) ε, t)‖²,

averaged over several noise draws ε ~ N(0, I), with the target's *effective* noise
predictor (for CPSample, guidance included).  Members are compared with as many
holdout images by the one-sided two-sample Z test of Sec. 4.3, and by ROC metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from leakbench.api import Attack, AuditTarget, Finding, ModelAccess
from leakbench.membership import (
    check_membership_params,
    check_timestep,
    run_membership_attack,
    timestep_batch,
    timestep_grid,
)


@dataclass(frozen=True)
class LossMIAParams:
    t: int | None = None  # None: chosen on the calibration split from a grid
    grid_size: int = 8  # timesteps tried on the calibration split
    noise_draws: int | None = None  # None: the profile's mia_noise_draws
    calibration_fraction: float = 0.25  # of the members (and as many holdout images)
    max_members: int | None = None  # None: all members
    n_bootstrap: int = 1000
    access: ModelAccess = "effective"  # "released": the published weights, no sampling-time parts

    def __post_init__(self):
        if self.t is not None and self.t < 0:
            raise ValueError(f"t={self.t} must be a timestep >= 0 (or None to calibrate it)")
        if self.noise_draws is not None and self.noise_draws < 1:
            raise ValueError(f"noise_draws={self.noise_draws} must be at least 1")
        check_membership_params(self)


def noise_errors(
    predict_noise,
    schedule,
    images: torch.Tensor,
    timesteps: list[int],
    *,
    draws: int,
    seed: int,
    batch_size: int,
    device="cpu",
    bar=None,
) -> dict[int, np.ndarray]:
    """Algorithm 1's per-image error e(x) at each t, averaged over ``draws`` noise draws.

    The same seeded draws ε are used at every t (common random numbers), so the
    timestep comparison is not blurred by noise.
    """
    gen = torch.Generator().manual_seed(int(seed))
    eps_all = torch.randn((draws, *images.shape), generator=gen)
    out = {}
    for t in timesteps:
        errors = []
        for start in range(0, len(images), batch_size):
            x0 = images[start : start + batch_size].to(device)
            t_batch = timestep_batch(t, x0)
            total = torch.zeros(len(x0), dtype=torch.float64)
            for d in range(draws):
                # Diffuse x to x_t with a fresh ε, and measure how well ε̂ recovers it.
                eps = eps_all[d, start : start + batch_size].to(device)
                x_t = schedule.add_noise(x0, t_batch, eps)
                with torch.no_grad():
                    eps_hat = predict_noise(x_t, t_batch)
                total += ((eps - eps_hat) ** 2).flatten(1).sum(1).double().cpu()
            errors.append(total / draws)
            if bar is not None:
                bar.update(len(x0) / len(timesteps))
        out[t] = torch.cat(errors).numpy()
    return out


class LossMIA(Attack):
    """Noise-prediction error of members vs holdout images: Z test, ROC AUC, TPR@FPR, ε."""

    name = "loss_mia"
    version = "1"
    access = "white-box"
    Params = LossMIAParams
    description = ("per-image noise-prediction error at a calibrated t (Algorithm 1), members vs "
                   "holdout: one-sided Z test, ROC AUC, TPR at 1 % / 0.1 % FPR, empirical ε")
    paper = "Kazdan et al., CPSample (paper 001), Sec. 4.3, Algorithm 1; Matsumoto et al. 2023"

    def run(self, target: AuditTarget, ctx) -> Finding:
        p = self.params
        draws = p.noise_draws or ctx.profile.mia_noise_draws
        T = target.schedule.num_timesteps
        check_timestep("loss_mia", p.t, T)

        def statistic(images, timesteps, seed, bar):
            return noise_errors(target.noise_predictor(p.access), target.schedule, images,
                                timesteps,
                                draws=draws, seed=seed, batch_size=ctx.profile.sample_batch_size,
                                device=target.device, bar=bar)

        metrics, arrays, info = run_membership_attack(
            target, ctx, statistic, grid=timestep_grid(T, p.grid_size), fixed_t=p.t,
            calibration_fraction=p.calibration_fraction, n_bootstrap=p.n_bootstrap,
            max_members=p.max_members, statistic_name="noise-prediction error")
        info["noise_draws"] = draws
        return Finding(metrics, arrays=arrays, info=info, headline="auc")
