"""CPSample guidance as a denoiser wrapper (paper 001, Sec. 3.1 and Appendix D).

``cpsample_guided(eps_model, classifier, ...)`` returns a noise predictor with the
same ``(x_t, t) -> ε`` contract, so the one DDIM sampler runs it unchanged and
white-box attacks see the guided ε̂ the paper's membership test sees.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from leakbench.diffusion.schedule import NoiseSchedule

TAU = 0.001  # Appendix D: keeps log(τ + p) finite when the classifier outputs exactly 0 or 1

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CPSampleGuided:
    """ε̂_{θ,φ}(x_t, t) = ε_θ(x_t, t) − s √(1−ᾱ_t) ∇_{x_t} log(τ + p_φ(y | x_t, t)).

    Applied per image: toward y = 0 where p_φ(y=0 | x_t, t) < α, toward y = 1
    where p_φ(y=1 | x_t, t) < α, and ε_θ unchanged otherwise (Appendix D).
    Counts the (image, step) pairs it sees and guides in ``pairs``/``guided``.
    """

    def __init__(self, eps_model: EpsModel, classifier: torch.nn.Module, *,
                 schedule: NoiseSchedule, alpha: float, scale: float, tau: float = TAU):
        self.eps_model = eps_model
        self.classifier = classifier
        self.schedule = schedule
        self.alpha = float(alpha)
        self.scale = float(scale)
        self.tau = float(tau)
        self.pairs = 0
        self.guided = 0

    def reset_counts(self) -> None:
        self.pairs = self.guided = 0

    @property
    def guided_fraction(self) -> float:
        return self.guided / self.pairs if self.pairs else 0.0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.eps_model(x_t, t)
        grad, guided = self.log_prob_gradient(x_t, t)
        self.pairs += len(x_t)
        self.guided += int(guided.sum())
        if not guided.any():
            return eps

        # ε̂ = ε_θ − s √(1−ᾱ_t) ∇ log(τ + p_φ(y | x_t, t)) on the guided images only.
        alpha_bar = self.schedule.at(t, x_t)
        return eps - self.scale * (1 - alpha_bar).sqrt() * grad

    def log_prob_gradient(self, x_t: torch.Tensor, t: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇_{x_t} log(τ + p_φ(y* | x_t, t)), guided mask); zero where not guided.

        y* is the label the classifier finds unlikely (p_φ(y* | x_t, t) < α).  The
        sampler runs under ``torch.no_grad``, so the gradient is taken here with
        grad mode switched back on, on a detached copy of x_t.
        """
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            p = self.classifier(x, t).float().softmax(dim=1)

            # Steer toward whichever label has probability below α.
            toward = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
            toward[p[:, 0] < self.alpha] = 0
            toward[p[:, 1] < self.alpha] = 1
            guided = toward >= 0
            if not guided.any():
                return torch.zeros_like(x_t), guided

            # log(τ + p_φ(y* | x_t, t)), summed over the guided images (each image's
            # gradient depends only on its own term: the classifier is per-sample).
            p_target = p.gather(1, toward.clamp(min=0)[:, None])[:, 0]
            log_p = torch.log(self.tau + p_target)
            (grad,) = torch.autograd.grad(log_p[guided].sum(), x)
        return grad.detach() * guided.view(-1, *([1] * (x_t.ndim - 1))), guided


def cpsample_guided(eps_model: EpsModel, classifier: torch.nn.Module, *, schedule: NoiseSchedule,
                    alpha: float, scale: float, tau: float = TAU) -> CPSampleGuided:
    """Wrap ``eps_model`` with CPSample's classifier guidance (paper 001, Appendix D)."""
    return CPSampleGuided(eps_model, classifier, schedule=schedule, alpha=alpha, scale=scale,
                          tau=tau)
