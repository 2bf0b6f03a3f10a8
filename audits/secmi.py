"""SecMI_stat: step-wise error comparing membership inference (Duan et al., ICML 2023).

With the deterministic DDIM steps (σ = 0; the letters follow our own reading)

    ψ_θ(x_t, t) = √ᾱ_{t+k} x̂₀(x_t, t) + √(1−ᾱ_{t+k}) ε̂(x_t, t)   (deterministic reverse, t → t+k)
    φ_θ(x_t, t) = √ᾱ_{t−k} x̂₀(x_t, t) + √(1−ᾱ_{t−k}) ε̂(x_t, t)   (deterministic denoise, t → t−k)

the image is first carried to x̃_t = Ψ_θ(x₀, t) by repeated ψ steps of size k from
t = 0 (DDIM inversion), then the t-error (Duan et al., Sec. 4.1, "t-error" definition)

    ℓ_{t,x₀} = ‖φ_θ(ψ_θ(x̃_t, t), t+k) − x̃_t‖²

measures how well one reverse-then-denoise round trip returns to x̃_t.  Members have
smaller t-errors; SecMI_stat (Sec. 4.2) thresholds ℓ_{t,x₀} directly.  The official code
uses k = T/100 and t = 90 of T = 1000 (``t_sec`` = 100); here t is chosen on a calibration
split from multiples of k, and ε̂ is the target's effective predictor (guidance included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from leakbench.api import Attack, AuditTarget, Finding, ModelAccess
from leakbench.membership import (
    check_membership_params,
    check_timestep,
    ddim_step,
    run_membership_attack,
    timestep_grid,
)


@dataclass(frozen=True)
class SecMIParams:
    t: int | None = None  # None: chosen on the calibration split (a multiple of the interval)
    interval: int | None = None  # k; None: T // 100 (10 at T = 1000, as in the paper)
    grid_size: int = 8
    calibration_fraction: float = 0.25
    max_members: int | None = None
    n_bootstrap: int = 1000
    access: ModelAccess = "effective"  # "released": the published weights, no sampling-time parts

    def __post_init__(self):
        if self.t is not None and self.t < 1:
            raise ValueError(f"t={self.t} must be a timestep >= 1 (or None to calibrate it)")
        if self.interval is not None and self.interval < 1:
            raise ValueError(f"interval={self.interval} must be at least 1")
        check_membership_params(self)


def t_errors(predict_noise, schedule, images: torch.Tensor, timesteps: list[int], *,
             interval: int, batch_size: int, device="cpu", bar=None) -> dict[int, np.ndarray]:
    """ℓ_{t,x₀} for every t in ``timesteps`` (multiples of ``interval``), one inversion path."""
    k = interval
    wanted = sorted(set(timesteps))
    out: dict[int, list[torch.Tensor]] = {t: [] for t in wanted}
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        with torch.no_grad():
            # Carry x₀ along the deterministic reverse path 0 → k → 2k → ...
            s = 0
            for t in wanted:
                while s < t:
                    x = ddim_step(predict_noise, x, s, s + k, schedule)
                    s += k
                # Round trip x̃_t → x̃_{t+k} → back to t, and its squared error.
                x_up = ddim_step(predict_noise, x, t, t + k, schedule)
                x_back = ddim_step(predict_noise, x_up, t + k, t, schedule)
                out[t].append(((x_back - x) ** 2).flatten(1).sum(1).double().cpu())
        if bar is not None:
            bar.update(len(x))
    return {t: torch.cat(v).numpy() for t, v in out.items()}


class SecMI(Attack):
    """SecMI_stat: t-error of a deterministic reverse-and-denoise round trip, members vs holdout."""

    name = "secmi"
    version = "1"
    access = "white-box"
    Params = SecMIParams
    description = ("SecMI_stat: t-error of a DDIM inversion round trip at a calibrated t; Z test, "
                   "ROC AUC, TPR at 1 % / 0.1 % FPR, empirical ε")
    paper = "Duan et al. 2023, Are Diffusion Models Vulnerable to Membership Inference Attacks?"

    def run(self, target: AuditTarget, ctx) -> Finding:
        p = self.params
        T = target.schedule.num_timesteps
        k = p.interval or max(1, T // 100)
        check_timestep("secmi", p.t, T, interval=k)
        grid = [t for t in timestep_grid(T, p.grid_size, low=0.01, high=0.3, multiple_of=k)
                if t + k < T]

        def statistic(images, timesteps, seed, bar):
            return t_errors(target.noise_predictor(p.access), target.schedule, images,
                                timesteps, interval=k,
                            batch_size=ctx.profile.sample_batch_size, device=target.device,
                            bar=bar)

        metrics, arrays, info = run_membership_attack(
            target, ctx, statistic, grid=grid, fixed_t=p.t,
            calibration_fraction=p.calibration_fraction, n_bootstrap=p.n_bootstrap,
            max_members=p.max_members, statistic_name="t-error")
        info["interval"] = k
        return Finding(metrics, arrays=arrays, info=info, headline="auc")
