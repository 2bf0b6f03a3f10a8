"""DDPM ε-prediction training with EMA (Ho et al. 2020, Algorithm 1)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn as nn
from tqdm.auto import trange

from leakbench.diffusion.schedule import NoiseSchedule


def ddpm_loss(
    model: nn.Module,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator,
) -> torch.Tensor:
    """‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖² with t ~ U{0..T−1}, ε ~ N(0, I)."""
    n = x0.shape[0]
    t = torch.randint(0, schedule.num_timesteps, (n,), generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = schedule.add_noise(x0, t, eps)
    return (model(x_t, t) - eps).pow(2).mean()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def train_denoiser(
    model: nn.Module,
    images: torch.Tensor,
    *,
    schedule: NoiseSchedule,
    steps: int,
    batch_size: int,
    learning_rate: float,
    ema_decay: float,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    loss_fn: Callable[..., torch.Tensor] = ddpm_loss,
    desc: str = "training denoiser",
    extra: torch.Tensor | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``model`` on ``images`` (N, C, H, W) in [-1, 1]; return (EMA model, stats).

    Batches are drawn with replacement from a seeded generator, so the same seed
    gives the same weights on the same machine.  ``extra`` (N, ...) is per-image side
    data (a conditional denoiser's condition), passed to ``loss_fn`` as ``extra=`` rows.
    A model built with ``precision="bf16"`` runs its forward pass under bf16 autocast and
    returns fp32, so the loss, the Adam state and the EMA weights stay fp32.
    """
    gen = torch.Generator().manual_seed(int(seed))
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    data = images.to(device)
    t0 = time.perf_counter()
    losses = []
    bar = trange(steps, desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen)
        kwargs = {} if extra is None else {"extra": extra[idx]}
        loss = loss_fn(model, data[idx.to(data.device)], schedule, gen, **kwargs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # EMA with the usual warm-up, so short runs are not dominated by the initial weights.
        ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    bar.close()
    tail = losses[-max(1, len(losses) // 10):]
    stats = {
        "train_seconds": time.perf_counter() - t0,
        "train_steps": steps,
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
    }
    return ema.cpu(), stats
