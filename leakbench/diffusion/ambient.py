"""Ambient Diffusion: learn from masked members only (Daras et al. 2023, "Ambient Diffusion").

Each member x₀ carries one fixed inpainting mask A (1 = visible).  Every training
step erases a further fraction δ of the visible pixels with a fresh mask B, and the
network h_θ sees only the further-corrupted noisy image Ã x_t and the mask Ã = BA.
It predicts x₀, and the loss counts only the pixels A shows (paper Sec. 3, J_corr):

    L(θ) = E ‖A (h_θ(Ã x_t, Ã, t) − x₀)‖²,   x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε.

Because h_θ never knows which erased pixels A hid, it must predict all of them, and
it never sees a member's hidden pixels.  Sampling keeps one mask Ã per image for all
steps (the paper's "fixed mask sampling", Sec. 3) and drives the one DDIM sampler by
turning the x₀ prediction into a noise prediction, ε̂ = (x_t − √ᾱ_t x̂₀) / √(1−ᾱ_t).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from leakbench.diffusion.sampling import ddim_sample, ddim_timesteps
from leakbench.diffusion.schedule import NoiseSchedule


def erasure_masks(
    n: int, size: tuple[int, int], p: float, generator: torch.Generator
) -> torch.Tensor:
    """(n, 1, H, W) masks in {0, 1}: each pixel erased (0) with probability ``p``, all channels alike."""
    return (torch.rand((n, 1, *size), generator=generator) >= p).float()


def member_masks(n: int, size: tuple[int, int], p: float, seed: int, *,
                 salt: int = 0xA4B1E4) -> torch.Tensor:
    """The members' fixed masks A, from a stream of their own (independent of training's).

    ``salt`` names the stream: the public images get masks of another stream.
    """
    stream = int(np.random.SeedSequence([int(seed), int(salt)]).generate_state(1)[0])
    return erasure_masks(n, size, p, torch.Generator().manual_seed(stream))


def further_corrupt(A: torch.Tensor, delta: float, generator: torch.Generator) -> torch.Tensor:
    """Ã = BA: erase each pixel with a further probability δ (only visible ones change)."""
    B = erasure_masks(A.shape[0], tuple(A.shape[-2:]), delta, generator).to(A.device)
    return B * A


def sampling_masks(
    n: int, size: tuple[int, int], p: float, delta: float, generator: torch.Generator
) -> torch.Tensor:
    """Masks Ã = BA drawn as in training: the ones the fixed-mask sampler holds per image."""
    return further_corrupt(erasure_masks(n, size, p, generator), delta, generator)


def network_input(x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The network sees [Ã x_t, Ã] as 2C channels (the mask repeated over the C channels)."""
    mask = mask.expand_as(x_t)
    return torch.cat([mask * x_t, mask], dim=1)


def ambient_loss(
    model: nn.Module,
    batch: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator,
    *,
    delta: float,
) -> torch.Tensor:
    """Ambient Diffusion loss J_corr (Daras et al. 2023, Sec. 3) on a batch of corrupted members.

    ``batch`` is (N, C + 1, H, W): the members' visible pixels A x₀ (C channels) and
    their fixed masks A (last channel).  This is all the training data there is:
    pixels erased by A never reach the network or the loss.
    """
    x0, A = batch[:, :-1], batch[:, -1:]
    x0 = A * x0
    n = x0.shape[0]

    # Noise the visible image: x_t = √ᾱ_t A x₀ + √(1−ᾱ_t) ε.
    t = torch.randint(0, schedule.num_timesteps, (n,), generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = schedule.add_noise(x0, t, eps)

    # Corrupt further with a fresh B, and predict x₀ from Ã x_t and Ã.
    A_tilde = further_corrupt(A, delta, generator)
    x0_hat = model(network_input(x_t, A_tilde), t)

    # Count only the pixels that A shows.
    visible = A.expand_as(x0)
    return (visible * (x0_hat - x0)).pow(2).sum() / visible.sum().clamp(min=1)


class FixedMaskDenoiser(nn.Module):
    """ε-predictor from the x₀-predictor h_θ with one fixed mask Ã per image of the batch.

    ``masks`` is (N, 1, H, W): row i belongs to image i of every batch passed in, so a
    wrapper serves exactly one batch of N images.  ε̂ = (x_t − √ᾱ_t x̂₀) / √(1−ᾱ_t).
    """

    def __init__(self, net: nn.Module, masks: torch.Tensor, schedule: NoiseSchedule):
        super().__init__()
        self.net = net
        self.masks = masks
        self.schedule = schedule

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[0] != self.masks.shape[0]:
            raise ValueError(f"this wrapper holds {self.masks.shape[0]} masks, got a batch of "
                             f"{x_t.shape[0]} images")
        alpha_bar = self.schedule.at(t, x_t)
        x0_hat = self.net(network_input(x_t, self.masks.to(x_t.device)), t)
        return (x_t - alpha_bar.sqrt() * x0_hat) / (1 - alpha_bar).sqrt()


class SeededMaskDenoiser(nn.Module):
    """The ε-predictor an auditor queries: every call draws its masks from the same seed.

    Row i of any batch gets mask i of one seeded stream, so the prediction is a
    deterministic function of (x_t, t): the same batch gives the same answer, and
    members and non-members queried in equal-sized batches see the same masks.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, *, p: float, delta: float,
                 seed: int):
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.p, self.delta, self.seed = p, delta, int(seed)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        masks = sampling_masks(x_t.shape[0], tuple(x_t.shape[-2:]), self.p, self.delta, gen)
        return FixedMaskDenoiser(self.net, masks, self.schedule)(x_t, t)


@torch.no_grad()
def sample_fixed_mask(
    net: nn.Module,
    n: int,
    *,
    schedule: NoiseSchedule,
    shape: tuple[int, int, int],
    steps: int,
    p: float,
    delta: float,
    seed: int,
    batch_size: int = 256,
    clip_denoised: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Draw ``n`` images in [-1, 1] with fixed mask sampling (Daras et al. 2023, Sec. 3).

    The starting noise x_T is drawn exactly as ``sample_images`` draws it for the same
    seed; the n masks Ã come next from the same generator, one per image, held for
    all DDIM steps.  Same seed ⇒ same images on the same machine.
    """
    gen = torch.Generator().manual_seed(int(seed))
    x_T = torch.randn((n, *shape), generator=gen)
    masks = sampling_masks(n, tuple(shape[-2:]), p, delta, gen)
    timesteps = ddim_timesteps(schedule.num_timesteps, steps)
    out = []
    bar = tqdm(total=n, desc="DDIM sampling (fixed masks)", unit="img", disable=not progress,
               leave=False)
    for start in range(0, n, batch_size):
        x = x_T[start : start + batch_size].to(device)
        model = FixedMaskDenoiser(net, masks[start : start + batch_size].to(device), schedule)
        out.append(ddim_sample(model, x, timesteps, schedule=schedule, generator=gen,
                               clip_denoised=clip_denoised).clamp(-1, 1).cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out) if out else torch.empty((0, *shape))
