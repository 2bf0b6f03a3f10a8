"""Noise schedules: small pure functions returning ᾱ_t (DDPM, Ho et al. 2020; Nichol & Dhariwal 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear β schedule, rescaled so that T != 1000 keeps the same end points of ᾱ."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved-DDPM cosine schedule: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t for t = 0..T-1 (float64 on the CPU; index with integer timesteps)."""

    name: str
    alpha_bar: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.alpha_bar.shape[0])

    def at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcast to the shape, dtype and device of ``like`` (N, C, H, W)."""
        a = self.alpha_bar.to(like.device)[t.to(like.device).long()].to(like.dtype)
        return a.view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε."""
        a = self.at(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def make_schedule(name: str, num_timesteps: int) -> NoiseSchedule:
    if name == "linear":
        betas = linear_betas(num_timesteps)
    elif name == "cosine":
        betas = cosine_betas(num_timesteps)
    else:
        from leakbench.errors import UsageError

        raise UsageError(f"Unknown noise schedule {name!r}; choose 'linear' or 'cosine'.")
    return NoiseSchedule(name, torch.cumprod(1 - betas, dim=0))
