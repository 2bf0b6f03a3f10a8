"""CPSample guidance as a denoiser wrapper (paper 001, Sec. 3.1 and Appendix D).

``cpsample_guided(eps_model, classifier, ...)`` returns a noise predictor with the
same ``(x_t, t) -> ε`` contract, so the one DDIM sampler runs it unchanged and
white-box attacks see the guided ε̂ the paper's membership test sees.  ``GuidedDenoiser``
is the bookkeeping every guided defense shares (CPSample, AMG): how many (image, step)
pairs it saw and guided; ``guided_draw`` samples a defense's ``draw`` through it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from leakbench.diffusion.schedule import NoiseSchedule

TAU = 0.001  # Appendix D: keeps log(τ + p) finite when the classifier outputs exactly 0 or 1

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GuidedDenoiser:
    """A guided ε-predictor that counts the (image, step) pairs it sees and guides.

    Subclasses call ``count(guided)`` once per call with the boolean mask of the images
    they guide; ``pairs``/``guided`` accumulate until ``reset_counts``.
    """

    def __init__(self):
        self.pairs = 0
        self.guided = 0

    def count(self, guided: torch.Tensor) -> None:
        self.pairs += len(guided)
        self.guided += int(guided.sum())

    def reset_counts(self) -> None:
        self.pairs = self.guided = 0

    @property
    def guided_fraction(self) -> float:
        return self.guided / self.pairs if self.pairs else 0.0


def guided_draw(guided: GuidedDenoiser, ctx) -> Callable[[int, int], tuple]:
    """A defense's ``draw(n, seed)``: the one DDIM sampler on the guided ε̂, with the counts.

    Each draw resets the counts, so its info holds the guided fraction of its own
    (image, DDIM step) pairs.
    """
    from leakbench.diffusion.sampling import sample_images

    def draw(n: int, seed: int):
        guided.reset_counts()
        images = sample_images(
            guided, n, schedule=ctx.schedule, shape=ctx.splits.image_shape,
            steps=ctx.profile.ddim_steps, seed=seed, batch_size=ctx.profile.sample_batch_size,
            clip_denoised=ctx.profile.clip_x0, device=ctx.device, progress=ctx.progress,
        )
        return images, {"guided_fraction": guided.guided_fraction,
                        "guided_pairs": guided.guided, "pairs": guided.pairs}

    return draw


class CPSampleGuided(GuidedDenoiser):
    """ε̂_{θ,φ}(x_t, t) = ε_θ(x_t, t) − s √(1−ᾱ_t) ∇_{x_t} log(τ + p_φ(y | x_t, t)).

    Applied per image: toward y = 0 where p_φ(y=0 | x_t, t) < α, toward y = 1
    where p_φ(y=1 | x_t, t) < α, and ε_θ unchanged otherwise (Appendix D).
    """

    # At or above this fraction of guided images the input gradient is taken through the
    # deciding forward pass of the whole batch; below it that graph is dropped and rebuilt
    # on the guided images only.  A backward pass costs about one forward, so the whole
    # batch's backward (≈ n forwards) beats forward + backward of the g guided (≈ 2g) from
    # g ≥ n / 2 (benchmarks/perf/test_guidance_cost.py).
    full_graph_fraction = 0.5

    def __init__(self, eps_model: EpsModel, classifier: torch.nn.Module, *,
                 schedule: NoiseSchedule, alpha: float, scale: float, tau: float = TAU):
        super().__init__()
        self.eps_model = eps_model
        self.classifier = classifier
        self.schedule = schedule
        self.alpha = float(alpha)
        self.scale = float(scale)
        self.tau = float(tau)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.eps_model(x_t, t)
        grad, guided = self.log_prob_gradient(x_t, t)
        self.count(guided)
        if not guided.any():
            return eps

        # ε̂ = ε_θ − s √(1−ᾱ_t) ∇ log(τ + p_φ(y | x_t, t)) on the guided images only.
        rows = guided.nonzero()[:, 0]
        alpha_bar = self.schedule.at(t[rows], x_t)
        out = eps.clone()
        out[rows] = eps[rows] - self.scale * (1 - alpha_bar).sqrt() * grad[rows].to(eps.dtype)
        return out

    def targets(self, p: torch.Tensor) -> torch.Tensor:
        """y* per image from p_φ(· | x_t, t): the label with probability below α, else −1."""
        toward = torch.full((len(p),), -1, dtype=torch.long, device=p.device)
        toward[p[:, 0] < self.alpha] = 0
        toward[p[:, 1] < self.alpha] = 1
        return toward

    def log_prob_gradient(self, x_t: torch.Tensor, t: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇_{x_t} log(τ + p_φ(y* | x_t, t)), guided mask); zero where not guided.

        y* is the label the classifier finds unlikely (p_φ(y* | x_t, t) < α).  One
        classifier forward over the batch decides which images are guided; the backward
        pass runs only if one is, and over the guided images only when they are fewer than
        ``full_graph_fraction`` of the batch (their graph rebuilt alone).  The sampler runs
        under ``torch.no_grad``, so grad mode is switched back on here, on a detached x_t.
        """
        with torch.enable_grad():
            # Decide: who is guided, and toward which label.
            x = x_t.detach().requires_grad_(True)
            p = self.classifier(x, t).float().softmax(dim=1)
            toward = self.targets(p.detach())
            guided = toward >= 0
            n_guided = int(guided.sum())
            if n_guided == 0:
                return torch.zeros_like(x_t), guided

            # Few guided: drop the batch's graph and build one on the guided images alone.
            rows = guided.nonzero()[:, 0]
            if n_guided < self.full_graph_fraction * len(x_t):
                del p
                x = x_t[rows].detach().requires_grad_(True)
                p = self.classifier(x, t[rows]).float().softmax(dim=1)
                toward_rows, keep = toward[rows], slice(None)
            else:
                toward_rows, keep = toward[rows], rows

            # log(τ + p_φ(y* | x_t, t)), summed over the guided images (each image's
            # gradient depends only on its own term: the classifier is per-sample).
            log_p = torch.log(self.tau + p[keep].gather(1, toward_rows[:, None])[:, 0])
            (grad,) = torch.autograd.grad(log_p.sum(), x)

        out = torch.zeros_like(x_t)
        out[rows] = grad.detach()[keep].to(x_t.dtype)
        return out, guided


def cpsample_guided(eps_model: EpsModel, classifier: torch.nn.Module, *, schedule: NoiseSchedule,
                    alpha: float, scale: float, tau: float = TAU) -> CPSampleGuided:
    """Wrap ``eps_model`` with CPSample's classifier guidance (paper 001, Appendix D)."""
    return CPSampleGuided(eps_model, classifier, schedule=schedule, alpha=alpha, scale=scale,
                          tau=tau)
