"""AMG: anti-memorisation guidance (Chen, Liu & Xu, CVPR 2024, "Towards Memorization-Free
Diffusion Models", Sec. 4–5).

For an unconditional model only AMG's dissimilarity guidance applies (despecification
and caption deduplication need a prompt).  At every sampling step, on the predicted clean
image x̂₀(x_t) = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t:

    S     = x̂₀'s 50 nearest members by ℓ2 (exact FAISS search on the members' pixels),
            n₀ the nearest of them
    σ_t   = −ℓ2(x̂₀, n₀) / (α · mean_{z ∈ S} ℓ2(x̂₀, z)),  α = 0.5      (paper Eq. 8)
    ε̂     = ε_θ(x_t, t) + c₃ √(1−ᾱ_t) ∇_{x_t} σ_t    only while σ_t > λ_t  (Eqs. 10, 17)

so x̂₀ moves away from n₀ (down the gradient of its similarity) and the sampler is left
alone otherwise.  As in the official sampling script, the denominator is a constant of the
step (computed from the same search, no gradient through it); the gradient of the
numerator runs through ε_θ (autograd through the U-Net), on the guided images only.

Constants.  The paper gives none for CIFAR-10; its official sampling script
(``image_sample.py`` of the CIFAR-10 iDDPM code) has c₃ = ``classifier_scale`` = 1000 by
default, the schedule function λ(t) = a − (a − b) e^(−c t) with c = 0.025 per step of its
250-step sampler, and thresholds on nL2 of 1.5 (its plotted threshold) and 1.9 (its
comment: guidance "only called when ... mL2 < 1.9").  Its sampling loop, where a and b
are set, is not available to us.  Our defaults read those numbers as: σ_t > λ_t with
λ at t → T a = −1.9 (guide early while x̂₀ is within 1.9 of the normalised replica
distance), λ at t = 0 b = −1.5, and the rate per fraction of the schedule c = 0.025 · 250
= 6.25, so λ(t) = a − (a − b) e^(−c t / T) does not depend on T or the DDIM step count.
The ε̂ form of the guidance (score guidance) is what makes c₃ independent of the step
count: 50 DDIM steps here against the official 250 DDPM steps.

Measured on digits with 128 members (README): these constants do not transfer.  The 50
nearest of 50,000 CIFAR-10 images are all about as close as the nearest; the 50 nearest of
128 members are much farther, so ordinary samples already score nL2 < 1.9 and the guidance
runs on most steps (90 % of pairs at c₃ = 1), the always-on regime of the paper's ablation.

AMG reports unconditional CIFAR-10 memorised samples 0.93 % → 0 with FID 7.44 → 7.25, and
always-on guidance (``always=true`` here) destroying FID (257).  The released model is the
plain denoiser: the member index is the members themselves and never ships.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from leakbench.api import AuditTarget, Defense, Metric
from leakbench.diffusion.guidance import GuidedDenoiser
from leakbench.diffusion.schedule import NoiseSchedule

N_NEIGHBOURS = 50  # |S|: the normaliser averages ℓ2 to x̂₀'s 50 nearest members (Eq. 8)


class AMGGuided(GuidedDenoiser):
    """ε̂(x_t, t) = ε_θ(x_t, t) + c₃ √(1−ᾱ_t) ∇_{x_t} σ_t where σ_t > λ_t (AMG dissimilarity)."""

    def __init__(self, eps_model, members: torch.Tensor, *, schedule: NoiseSchedule,
                 scale: float, alpha: float = 0.5, lambda_a: float = -1.9,
                 lambda_b: float = -1.5, lambda_c: float = 6.25, always: bool = False,
                 n_neighbours: int = N_NEIGHBOURS):
        import faiss

        super().__init__()
        self.eps_model = eps_model
        self.schedule = schedule
        self.scale, self.alpha = float(scale), float(alpha)
        self.lambda_a, self.lambda_b, self.lambda_c = float(lambda_a), float(lambda_b), float(lambda_c)
        self.always = bool(always)
        flat = members.detach().cpu().float().flatten(1).numpy()
        if len(flat) < 2:
            raise ValueError("AMG's normalised similarity needs at least 2 members")
        self.members = members.detach().float().flatten(1)
        self.n_neighbours = min(int(n_neighbours), len(flat))
        self.index = faiss.IndexFlatL2(flat.shape[1])
        self.index.add(np.ascontiguousarray(flat))

    def threshold(self, t: torch.Tensor) -> torch.Tensor:
        """λ_t = a − (a − b) e^(−c t / T); −∞ with ``always``."""
        if self.always:
            return torch.full(t.shape, -math.inf)
        frac = t.detach().cpu().double() / self.schedule.num_timesteps
        return (self.lambda_a - (self.lambda_a - self.lambda_b) * torch.exp(-self.lambda_c * frac)).float()

    def similarity(self, x0_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ_t per image, differentiable in x̂₀; index of n₀): Eq. 8,
        −ℓ2(x̂₀, n₀) / (α · mean ℓ2 from x̂₀ to its ``n_neighbours`` nearest members)."""
        flat = x0_hat.flatten(1)
        d2, idx = self.index.search(np.ascontiguousarray(flat.detach().cpu().float().numpy()),
                                    self.n_neighbours)
        n0 = torch.from_numpy(idx[:, 0]).long()
        denom = self.alpha * np.sqrt(np.maximum(d2, 0.0)).mean(axis=1)  # constant of the step
        nearest = self.members[n0].to(flat.device, flat.dtype)
        dist = (flat - nearest).norm(dim=1)
        return -dist / torch.from_numpy(np.maximum(denom, 1e-12)).to(flat.device, flat.dtype), n0

    def x0_hat(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.schedule.at(t, x_t)
        return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # σ_t on the unguided prediction; guide only where it exceeds λ_t.
        eps = self.eps_model(x_t, t)
        sigma, _ = self.similarity(self.x0_hat(x_t, t, eps))
        guided = (sigma.cpu() > self.threshold(t.cpu())).to(x_t.device)
        self.count(guided)
        if not guided.any():
            return eps

        # ∇_{x_t} σ_t through ε_θ, on the guided images only.
        rows = guided.nonzero()[:, 0]
        with torch.enable_grad():
            x = x_t[rows].detach().requires_grad_(True)
            s, _ = self.similarity(self.x0_hat(x, t[rows], self.eps_model(x, t[rows])))
            (grad,) = torch.autograd.grad(s.sum(), x)

        # ε̂ = ε_θ + c₃ √(1−ᾱ_t) ∇σ_t: x̂₀ moves down σ_t's gradient, away from n₀.
        alpha_bar = self.schedule.at(t[rows], x_t)
        out = eps.clone()
        out[rows] = eps[rows] + self.scale * (1 - alpha_bar).sqrt() * grad.to(eps.dtype)
        return out


@dataclass(frozen=True)
class AMGParams:
    scale: float = 1000.0  # c₃, the dissimilarity guidance scale (official code's default)
    alpha: float = 0.5  # α of the normalised ℓ2 (paper: 0.5)
    lambda_a: float = -1.9  # λ at t → T (see the module docstring)
    lambda_b: float = -1.5  # λ at t = 0
    lambda_c: float = 6.25  # decay rate of λ in units of t / T (0.025 per step of 250)
    always: bool = False  # guide at every step (the paper's ablation that destroys FID)

    def __post_init__(self):
        if not self.scale >= 0.0:
            raise ValueError(f"scale={self.scale} must be a non-negative guidance scale c3")
        if not self.alpha > 0.0:
            raise ValueError(f"alpha={self.alpha} must be positive (the paper uses 0.5)")
        if not self.lambda_c >= 0.0:
            raise ValueError(f"lambda_c={self.lambda_c} must be >= 0")


class AMG(Defense):
    """DDIM with AMG's dissimilarity guidance away from the nearest member."""

    name = "amg"
    version = "2"  # 2: Eq. 8's normaliser from x̂₀'s neighbours; the official code's constants
    Params = AMGParams
    description = ("AMG: DDIM guided away from x̂₀'s nearest member while its normalised ℓ2 "
                   "similarity exceeds λ_t (dissimilarity guidance, c3 = scale)")
    paper = "Chen, Liu & Xu, Towards Memorization-Free Diffusion Models (CVPR 2024)"

    def wrap(self, artifacts, ctx) -> AuditTarget:
        from leakbench.diffusion.guidance import guided_draw

        p, model = self.params, artifacts["denoiser"]
        guided = AMGGuided(model, ctx.splits.members, schedule=ctx.schedule, scale=p.scale,
                           alpha=p.alpha, lambda_a=p.lambda_a, lambda_b=p.lambda_b,
                           lambda_c=p.lambda_c, always=p.always)

        return AuditTarget(
            key=ctx.target_key(self), model=guided, schedule=ctx.schedule, splits=ctx.splits,
            ctx=ctx, draw=guided_draw(guided, ctx), released_model=model,
            released=("the plain fine-tuned denoiser: the guidance is sampling-time and its "
                      "member index (the members themselves) does not ship"),
            info={**ctx.training_info(), "n_neighbours": N_NEIGHBOURS},
        )

    def figures(self, target: AuditTarget) -> list[Metric]:
        out = super().figures(target)
        for (_n, _seed), info in sorted(target.sample_info.items()):
            if "guided_fraction" in info:
                out.append(Metric("guided_fraction", info["guided_fraction"], n=info["pairs"],
                                  bounds=(0.0, 1.0),
                                  description="fraction of (image, DDIM step) pairs guided "
                                              "(σ_t above λ_t)"))
                break
        return out
