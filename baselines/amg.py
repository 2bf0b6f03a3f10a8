"""AMG: anti-memorisation guidance (Chen, Liu & Xu, CVPR 2024, "Towards Memorization-Free
Diffusion Models", Sec. 4).

For an unconditional model only AMG's dissimilarity guidance applies (despecification
and caption deduplication need a prompt).  At every sampling step, on the predicted clean
image x̂₀(x_t) = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t:

    n₀    = the member nearest to x̂₀ (ℓ2, exact FAISS search on the members' pixels)
    σ_t   = −ℓ2(x̂₀, n₀) / (α · m(n₀)),  m(n₀) = mean ℓ2 from n₀ to its 50 nearest members,
            α = 0.5 (the paper's normalised ℓ2; σ_t > −1 means x̂₀ is a replica of n₀
            by that criterion)
    ε̂     = ε_θ(x_t, t) + c₃ √(1−ᾱ_t) ∇_{x_t} σ_t    only while σ_t > λ_t,

so x̂₀ moves away from n₀ (down the gradient of its similarity) and the sampler is left
alone otherwise.  The gradient runs through ε_θ (autograd through the U-Net), on the
guided images only.

Threshold schedule.  The official code uses λ_t = a − (a − b) e^(−c t).  Here t is taken
as a fraction of the schedule's T (so a, b, c do not depend on T or on the DDIM step
count): λ(t) = a − (a − b) e^(−c t / T).  At t = 0 it is b = −1: guide exactly when x̂₀ would
count as a replica.  Early x̂₀ are blurred averages, farther from every member, so the
threshold relaxes toward a = −2 (guide when x̂₀ is within twice the replica distance),
with c = 5 putting the midpoint near t = 0.14 T.  These are this suite's adaptation, not
the paper's values (which are for Stable Diffusion's 50 steps and SSCD similarity).

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

N_NEIGHBOURS = 50  # m(n₀): mean ℓ2 to n₀'s 50 nearest members (paper Sec. 4)


def member_scales(members: np.ndarray, n_neighbours: int = N_NEIGHBOURS) -> np.ndarray:
    """m(n) for every member: mean ℓ2 to its ``n_neighbours`` nearest other members (FAISS)."""
    import faiss

    x = np.ascontiguousarray(members, dtype=np.float32)
    k = min(n_neighbours, len(x) - 1)
    if k < 1:
        raise ValueError("AMG's normalised similarity needs at least 2 members")
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    d2, _ = index.search(x, k + 1)  # the first is the member itself
    return np.sqrt(np.maximum(d2[:, 1:], 0.0)).mean(axis=1)


class AMGGuided(GuidedDenoiser):
    """ε̂(x_t, t) = ε_θ(x_t, t) + c₃ √(1−ᾱ_t) ∇_{x_t} σ_t where σ_t > λ_t (AMG dissimilarity)."""

    def __init__(self, eps_model, members: torch.Tensor, *, schedule: NoiseSchedule,
                 scale: float, alpha: float = 0.5, lambda_a: float = -2.0,
                 lambda_b: float = -1.0, lambda_c: float = 5.0, always: bool = False):
        import faiss

        super().__init__()
        self.eps_model = eps_model
        self.schedule = schedule
        self.scale, self.alpha = float(scale), float(alpha)
        self.lambda_a, self.lambda_b, self.lambda_c = float(lambda_a), float(lambda_b), float(lambda_c)
        self.always = bool(always)
        flat = members.detach().cpu().float().flatten(1).numpy()
        self.members = members.detach().float().flatten(1)
        self.m = torch.from_numpy(member_scales(flat)).float()
        self.index = faiss.IndexFlatL2(flat.shape[1])
        self.index.add(np.ascontiguousarray(flat))

    def threshold(self, t: torch.Tensor) -> torch.Tensor:
        """λ_t = a − (a − b) e^(−c t / T); −∞ with ``always``."""
        if self.always:
            return torch.full(t.shape, -math.inf)
        frac = t.detach().cpu().double() / self.schedule.num_timesteps
        return (self.lambda_a - (self.lambda_a - self.lambda_b) * torch.exp(-self.lambda_c * frac)).float()

    def similarity(self, x0_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ_t per image, differentiable in x̂₀; index of n₀): −ℓ2(x̂₀, n₀) / (α m(n₀))."""
        flat = x0_hat.flatten(1)
        _, idx = self.index.search(np.ascontiguousarray(flat.detach().cpu().float().numpy()), 1)
        n0 = torch.from_numpy(idx[:, 0]).long()
        nearest = self.members[n0].to(flat.device, flat.dtype)
        dist = (flat - nearest).norm(dim=1)
        return -dist / (self.alpha * self.m[n0].to(flat.device, flat.dtype)), n0

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
    scale: float = 100.0  # c₃, the dissimilarity guidance scale
    alpha: float = 0.5  # α of the normalised ℓ2 (paper: 0.5)
    lambda_a: float = -2.0  # λ at t → T (see the module docstring)
    lambda_b: float = -1.0  # λ at t = 0: guide exactly when x̂₀ counts as a replica
    lambda_c: float = 5.0  # decay rate of λ in units of t / T
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
    version = "1"
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
