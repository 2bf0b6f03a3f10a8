"""SimA: single-query score-based membership inference (Rao, Qu & Moyer 2025).

A diffusion model's score vanishes at the modes its training put on the members, so at a
small timestep the predicted noise *at the clean image itself*,

    s(x) = ‖ε̂(x, t)‖₂     (x un-noised, one query per image),

is smaller for members than for fresh images.  t is chosen on the calibration split from
a grid of small timesteps; the metrics come from the shared membership runner.  Under
``access=released`` it queries the published weights instead of the sampler's predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

from leakbench.api import Attack, AuditTarget, Finding, ModelAccess
from leakbench.membership import (
    batched_statistic,
    check_membership_params,
    check_timestep,
    run_membership_attack,
    timestep_batch,
    timestep_grid,
)


@dataclass(frozen=True)
class SimAParams:
    t: int | None = None  # None: chosen on the calibration split from small timesteps
    grid_size: int = 8
    calibration_fraction: float = 0.25
    max_members: int | None = None
    n_bootstrap: int = 1000
    access: ModelAccess = "effective"  # "released": the published weights, no sampling-time parts

    def __post_init__(self):
        if self.t is not None and self.t < 0:
            raise ValueError(f"t={self.t} must be a timestep >= 0 (or None to calibrate it)")
        check_membership_params(self)


def score_norms(predict_noise, images, timesteps: list[int], *, batch_size: int, device="cpu",
                bar=None) -> dict:
    """‖ε̂(x, t)‖₂ of every clean image x at each t (one query per image and t)."""
    out = {}
    for t in timesteps:
        def norm(batch, _rows, t=t):
            x = batch.to(device)
            return predict_noise(x, timestep_batch(t, x)).flatten(1).norm(dim=1)

        out[t] = batched_statistic(norm, images, batch_size=batch_size,
                                   bar=None if bar is None else _Scaled(bar, len(timesteps)))
    return out


class _Scaled:
    """A progress bar that advances 1/k per image (k timesteps per image)."""

    def __init__(self, bar, k: int):
        self.bar, self.k = bar, k

    def update(self, n: int) -> None:
        self.bar.update(n / self.k)


class SimA(Attack):
    """Norm of the predicted noise at the clean image, at a small t: lower for members."""

    name = "sima"
    version = "1"
    access = "white-box"
    Params = SimAParams
    description = ("SimA: ‖ε̂(x, t)‖ at the un-noised image and a small calibrated t (one query); "
                   "Z test, ROC AUC, TPR at 1 % / 0.1 % FPR, empirical ε")
    paper = ("Rao, Qu & Moyer 2025, SimA: score-based membership inference on diffusion models "
             "with a single query")

    def run(self, target: AuditTarget, ctx) -> Finding:
        p = self.params
        T = target.schedule.num_timesteps
        check_timestep("sima", p.t, T)
        predict = target.noise_predictor(p.access)

        def statistic(images, timesteps, seed, bar):
            return score_norms(predict, images, timesteps,
                               batch_size=ctx.profile.sample_batch_size, device=target.device,
                               bar=bar)

        metrics, arrays, info = run_membership_attack(
            target, ctx, statistic, grid=timestep_grid(T, p.grid_size, low=0.001, high=0.2),
            fixed_t=p.t, calibration_fraction=p.calibration_fraction, n_bootstrap=p.n_bootstrap,
            max_members=p.max_members, statistic_name="‖ε̂(x, t)‖")
        return Finding(metrics, arrays=arrays, info=info, headline="auc")
