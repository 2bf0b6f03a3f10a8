"""PIA: proximal initialization membership inference (Kong et al., ICLR 2024).

The model's own prediction at t = 0, ε̂(x₀, 0), serves as the "proximal initial"
noise: x₀ is diffused deterministically with it,

    x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε̂(x₀, 0),

and the attack statistic is how far the prediction at t moves away from it,

    R_{t,p} = ‖ε̂(x₀, 0) − ε̂(x_t, t)‖_p        (Kong et al., Sec. 4, the PIA statistic),

small for members.  The authors' code uses p = 4 and t in multiples of 10 up to 300 of
T = 1000; here t is chosen on a calibration split and ε̂ is the target's effective
noise predictor (guidance included).
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
class PIAParams:
    t: int | None = None  # None: chosen on the calibration split
    p: int = 4  # the ℓ_p norm of the statistic
    grid_size: int = 8
    calibration_fraction: float = 0.25
    max_members: int | None = None
    n_bootstrap: int = 1000
    access: ModelAccess = "effective"  # "released": the published weights, no sampling-time parts

    def __post_init__(self):
        if self.t is not None and self.t < 1:
            raise ValueError(f"t={self.t} must be a timestep >= 1 (or None to calibrate it)")
        if self.p < 1:
            raise ValueError(f"p={self.p} must be a norm order >= 1 (the paper uses 4)")
        check_membership_params(self)


def pia_distances(predict_noise, schedule, images: torch.Tensor, timesteps: list[int], *,
                  p: int, batch_size: int, device="cpu", bar=None) -> dict[int, np.ndarray]:
    """R_{t,p} for every t in ``timesteps``; ε̂(x₀, 0) is computed once per image."""
    out: dict[int, list[torch.Tensor]] = {t: [] for t in timesteps}
    for start in range(0, len(images), batch_size):
        x0 = images[start : start + batch_size].to(device)
        with torch.no_grad():
            # The proximal initial noise: the prediction at t = 0.
            eps0 = predict_noise(x0, timestep_batch(0, x0)).to(x0.dtype)
            for t in timesteps:
                # Diffuse deterministically with it and compare the prediction at t.
                t_batch = timestep_batch(t, x0)
                x_t = schedule.add_noise(x0, t_batch, eps0)
                eps_t = predict_noise(x_t, t_batch).to(x0.dtype)
                dist = (eps0 - eps_t).abs().flatten(1).double().pow(p).sum(1).pow(1.0 / p)
                out[t].append(dist.cpu())
        if bar is not None:
            bar.update(len(x0))
    return {t: torch.cat(v).numpy() for t, v in out.items()}


class PIA(Attack):
    """PIA: distance between ε̂(x₀, 0) and ε̂ at the deterministically diffused x_t."""

    name = "pia"
    version = "1"
    access = "white-box"
    Params = PIAParams
    description = ("PIA: ‖ε̂(x₀,0) − ε̂(x_t,t)‖_p with x_t diffused by ε̂(x₀,0), at a calibrated t; "
                   "Z test, ROC AUC, TPR at 1 % / 0.1 % FPR, empirical ε")
    paper = ("Kong et al. 2024, An Efficient Membership Inference Attack for the Diffusion Model "
             "by Proximal Initialization")

    def run(self, target: AuditTarget, ctx) -> Finding:
        p = self.params
        T = target.schedule.num_timesteps
        check_timestep("pia", p.t, T, low=1)
        k = max(1, T // 100)

        def statistic(images, timesteps, seed, bar):
            return pia_distances(target.noise_predictor(p.access), target.schedule, images,
                                timesteps,
                                 p=p.p, batch_size=ctx.profile.sample_batch_size,
                                 device=target.device, bar=bar)

        metrics, arrays, info = run_membership_attack(
            target, ctx, statistic, grid=timestep_grid(T, p.grid_size, low=0.01, high=0.3,
                                                       multiple_of=k),
            fixed_t=p.t, calibration_fraction=p.calibration_fraction, n_bootstrap=p.n_bootstrap,
            max_members=p.max_members, statistic_name=f"ℓ_{p.p} PIA distance")
        info["p"] = p.p
        return Finding(metrics, arrays=arrays, info=info, headline="auc")
