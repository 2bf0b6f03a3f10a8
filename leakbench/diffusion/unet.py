"""A small DDPM U-Net (Ho et al. 2020): GroupNorm, SiLU, sinusoidal time embedding.

No BatchNorm and no fused attention modules, so Opacus can wrap it unchanged.
``TimeEncoder`` is the U-Net's encoder half on its own; CPSample's classifier
(paper 001, Appendix C) is built from it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from leakbench.diffusion.precision import autocast


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head spatial self-attention from plain convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("nqk,nck->ncq", attn, v).reshape(n, c, h, w)
        return x + self.proj(out)


class _Level(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, attention: bool, dropout: float):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, dropout)
        self.attn = SelfAttention(c_out) if attention else nn.Identity()

    def forward(self, x, emb):
        return self.attn(self.res(x, emb))


class TimeEmbedding(nn.Module):
    def __init__(self, base: int):
        super().__init__()
        self.base = base
        self.mlp = nn.Sequential(nn.Linear(base, 4 * base), nn.SiLU(), nn.Linear(4 * base, 4 * base))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.base))


class UNet(nn.Module):
    """ε-prediction U-Net: ``model(x_t, t) -> ε̂`` with x_t (N, C, H, W) and t (N,) int.

    ``precision="bf16"`` runs the forward pass under bf16 autocast; ε̂ is returned in fp32
    (see :mod:`leakbench.diffusion.precision`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] = (32, 64, 64),
        attention: bool = False,
        dropout: float = 0.0,
        out_channels: int | None = None,
        precision: str = "fp32",
    ):
        super().__init__()
        self.config = dict(in_channels=in_channels, channels=tuple(channels), attention=attention,
                           dropout=dropout, out_channels=out_channels)
        self.precision = precision
        base, emb_dim = channels[0], 4 * channels[0]
        self.time = TimeEmbedding(base)
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)
        # Attention only at the lowest resolution (where it is cheapest).
        attn_at = len(channels) - 1 if attention else -1
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = base
        for i, c in enumerate(channels):
            self.down.append(_Level(c_prev, c, emb_dim, i == attn_at, dropout))
            last = i == len(channels) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c
        self.mid1 = ResBlock(c_prev, c_prev, emb_dim, dropout)
        self.mid_attn = SelfAttention(c_prev) if attention else nn.Identity()
        self.mid2 = ResBlock(c_prev, c_prev, emb_dim, dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(channels))):
            c = channels[i]
            self.up.append(_Level(c_prev + c, c, emb_dim, i == attn_at, dropout))
            c_next = channels[i - 1] if i > 0 else c
            self.upsample.append(nn.Conv2d(c, c_next, 3, padding=1) if i > 0 else nn.Identity())
            c_prev = c_next
        self.norm_out = _norm(c_prev)
        self.conv_out = nn.Conv2d(c_prev, out_channels or in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, self.time(t))

    def denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The network given the embedding every residual block reads (time, and any condition).

        Under ``precision="bf16"`` it runs in bf16 autocast and returns fp32.
        """
        with autocast(x.device.type, self.precision):
            out = self._denoise(x, emb)
        return out.float()

    def _denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        skips = []
        for level, down in zip(self.down, self.downsample):
            h = level(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample):
            h = level(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class TimeEncoder(nn.Module):
    """The U-Net's encoder half with a pooled linear head: ``f(x_t, t) -> logits``.

    Timestep embedding, downsampling residual blocks, a middle block, then
    GroupNorm + SiLU + global average pooling and a linear head.  ``precision`` as for
    :class:`UNet` (logits in fp32).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] = (32, 64, 64),
        num_classes: int = 2,
        attention: bool = False,
        dropout: float = 0.0,
        precision: str = "fp32",
    ):
        super().__init__()
        self.config = dict(in_channels=in_channels, channels=tuple(channels),
                           num_classes=num_classes, attention=attention, dropout=dropout)
        self.precision = precision
        base, emb_dim = channels[0], 4 * channels[0]
        self.time = TimeEmbedding(base)
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = base
        for i, c in enumerate(channels):
            self.down.append(_Level(c_prev, c, emb_dim, attention and i == len(channels) - 1, dropout))
            last = i == len(channels) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c
        self.mid = ResBlock(c_prev, c_prev, emb_dim, dropout)
        self.norm_out = _norm(c_prev)
        self.head = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(x.device.type, self.precision):
            logits = self._forward(x, t)
        return logits.float()

    def _forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(t)
        h = self.conv_in(x)
        for level, down in zip(self.down, self.downsample):
            h = down(level(h, emb))
        h = self.mid(h, emb)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
