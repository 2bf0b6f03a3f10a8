"""The one DDIM sampler (Song et al. 2021, Eq. 12).  Guidance is added by wrapping the model."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from leakbench.diffusion.schedule import NoiseSchedule


def ddim_timesteps(num_timesteps: int, steps: int, t_start: int | None = None) -> list[int]:
    """``steps`` evenly spaced timesteps from ``t_start`` (default T−1) down to 0."""
    top = num_timesteps - 1 if t_start is None else int(t_start)
    steps = max(1, min(steps, top + 1))
    ts = np.unique(np.round(np.linspace(0, top, steps)).astype(np.int64))
    return ts[::-1].tolist()


@torch.no_grad()
def ddim_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    timesteps: Sequence[int],
    *,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    clip_denoised: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Run DDIM from x at ``timesteps[0]`` down through ``timesteps`` to x₀.

    ``model(x_t, t) -> ε̂``.  At η = 0 the update is deterministic given x.
    ``clip_denoised`` clamps x̂₀ to [-1, 1] at every step and recomputes ε̂ from it (as
    diffusers' ``clip_sample`` does); the DDIM code of Song et al. and paper 001 do not.
    ``callback`` receives ``{"i", "t", "x", "x0", "eps"}`` after every step.
    """
    alpha_bar = schedule.alpha_bar
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t = float(alpha_bar[t])
        a_prev = float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)

        # Predict the noise, and from it the clean image x̂₀.
        eps = model(x, t_batch)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5

        # Step to t_prev along the DDIM trajectory (σ = η · the DDPM posterior std).
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = x + sigma * noise
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "eps": eps})
    return x


def sample_images(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n: int,
    *,
    schedule: NoiseSchedule,
    shape: tuple[int, int, int],
    steps: int,
    seed: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    eta: float = 0.0,
    clip_denoised: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``n`` images in [-1, 1] (CPU tensor); same seed ⇒ same images on the same machine.

    The starting noise for all ``n`` images is drawn up front from one seeded CPU
    generator, so the result does not depend on the device's RNG.  With ``condition``
    (n, d), image i is drawn from ``model(x_t, t, condition[i])`` (a conditional denoiser).
    """
    gen = torch.Generator().manual_seed(int(seed))
    x_T = torch.randn((n, *shape), generator=gen)
    timesteps = ddim_timesteps(schedule.num_timesteps, steps)
    out = []
    bar = tqdm(total=n, desc="DDIM sampling", unit="img", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        x = x_T[start : start + batch_size].to(device)
        step_model = model
        if condition is not None:
            c = condition[start : start + batch_size].to(device)
            step_model = functools.partial(_conditioned, model, c)
        x0 = ddim_sample(step_model, x, timesteps, schedule=schedule, eta=eta,
                         clip_denoised=clip_denoised, generator=gen, callback=callback)
        out.append(x0.clamp(-1, 1).cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out) if out else torch.empty((0, *shape))


def _conditioned(model, c: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return model(x, t, c)
