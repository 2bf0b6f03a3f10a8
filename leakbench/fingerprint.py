"""Fingerprint (SAF) classifiers: the circle, the augmentations and the ResNet training loop.

Paper 003 (Sec. 3.3–3.4, Appendix A) trains two randomly initialised ResNets: C_SAF,
which detects the synthetic anatomical fingerprint (a filled circle of one grey
level), and C_ID, a one-vs-all classifier that recognises the private image x_p.
Both are trained on the population with augmentation and Gaussian noise so they
survive diffusion artefacts.  Images here are (N, C, H, W) tensors in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leakbench.stats import clopper_pearson

RESNET_DEPTHS = (18, 34, 50)


def resnet_small(depth: int, in_channels: int) -> torch.nn.Module:
    """Randomly initialised torchvision ResNet-``depth`` for tiny images (3×3 stride-1 stem, no pool).

    Paper 003 uses ResNet-50 at 28 px and larger; images here are 8–64 px, so the
    ImageNet stem (7×7 stride 2 plus max-pool) is replaced.  Grey images are repeated
    to three channels inside the model.
    """
    import torchvision

    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth {depth} is not supported; choose one of {RESNET_DEPTHS}.")
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=2)
    net.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = torch.nn.Identity()
    return _ToRGB(net) if in_channels == 1 else net


class _ToRGB(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, 3, -1, -1))


def circle_masks(size: int, centers: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean (N, 1, H, W) masks of filled circles (y − cy)² + (x − cx)² ≤ r², centers (N, 2)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy = centers[:, 0].view(-1, 1, 1)
    cx = centers[:, 1].view(-1, 1, 1)
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).unsqueeze(1)


def random_centers(n: int, size: int, radius: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 2) circle centers with the whole circle inside a size × size image."""
    return torch.randint(radius, size - radius, (n, 2), generator=gen)


def add_circles(x: torch.Tensor, which: torch.Tensor, radius: int, grey: float,
                gen: torch.Generator) -> torch.Tensor:
    """Paint a circle of ``grey`` (in [0, 1]) at a random inside position on images ``which``."""
    masks = circle_masks(x.shape[-1], random_centers(len(x), x.shape[-1], radius, gen), radius)
    masks = masks & which.view(-1, 1, 1, 1)
    return torch.where(masks, torch.full_like(x, grey * 2.0 - 1.0), x)


def augmix(x: torch.Tensor, group: int = 8) -> torch.Tensor:
    """torchvision's AugMix (Hendrycks et al.) on groups of ``group`` images.

    Within a group the images share the sampled operation chains, but each image gets
    its own Dirichlet chain weights and Beta mixing weight (torchvision samples those
    per image); one call per group instead of one per image makes it ~50× faster.
    AugMix works on uint8 images, so [-1, 1] is quantised to 256 levels and back.
    Its randomness comes from torch's global generator (seeded by the caller).
    """
    from torchvision.transforms import AugMix

    mix = AugMix()
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return torch.cat([mix(chunk) for chunk in u8.split(group)]).float() / 127.5 - 1.0


def augment(x: torch.Tensor, gen: torch.Generator, *, max_shift: int, noise_std: float,
            flip: bool, mix: float = 0.5, max_blur: float = 0.0) -> torch.Tensor:
    """Strong augmentation (paper 003, App. A): AugMix, shifts, flips, blur, Gaussian noise.

    AugMix goes to a random fraction ``mix`` of the images (its paper trains on clean
    and augmented views together).  Applied after the fingerprint is painted, so the
    classifiers learn circles that diffusion has shifted, re-toned or made noisy.
    """
    n, _, h, w = x.shape

    # Mix chains of photometric and geometric operations (AugMix).
    if mix > 0:
        chosen = torch.rand(n, generator=gen) < mix
        if chosen.any():
            x = x.clone()
            x[chosen] = augmix(x[chosen])

    # Shift each image by up to max_shift pixels: pad, then crop at a random offset.
    if max_shift > 0:
        padded = F.pad(x, (max_shift,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])

    # Flip half of the images left–right.
    if flip:
        flips = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)

    # Blur with a Gaussian of random width up to max_blur pixels, as a denoiser smooths.
    if max_blur > 0:
        sigma = max_blur * torch.rand(n, generator=gen)
        x = torch.stack([gaussian_blur(x[i], float(sigma[i])) for i in range(n)])

    # Add Gaussian noise of a random strength up to noise_std, as diffusion artefacts would.
    if noise_std > 0:
        std = noise_std * torch.rand(n, 1, 1, 1, generator=gen)
        x = x + std * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur one (C, H, W) image with a 3×3 Gaussian of width sigma (identity for sigma ≈ 0)."""
    if sigma < 1e-3:
        return img
    k1 = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * sigma**2))
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :]).expand(img.shape[0], 1, 3, 3)
    out = F.conv2d(F.pad(img[None], (1, 1, 1, 1), mode="replicate"), kernel, groups=img.shape[0])
    return out[0]


Batch = Callable[[int, torch.Generator], "tuple[torch.Tensor, torch.Tensor]"]
"""``make_batch(batch_size, gen) -> (images, labels)``: one freshly augmented training batch."""


def train_classifier(model: torch.nn.Module, make_batch: Batch, *, steps: int, batch_size: int,
                     learning_rate: float, seed: int, device: str = "cpu",
                     progress: bool = True, desc: str = "training classifier") -> torch.nn.Module:
    """Adam (cosine-decayed learning rate) on the cross-entropy of freshly generated batches.

    Channels-last memory format (about 25 % faster on CPU); returns the model in eval mode.
    """
    gen = torch.Generator().manual_seed(int(seed))
    model = model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    # Cosine decay to zero: a short run ends at a settled minimum, not mid-step.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        x, y = make_batch(batch_size, gen)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def positive_prob(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int = 500,
                  device: str = "cpu") -> np.ndarray:
    """P(class 1 | x) for every image, as a float64 array."""
    model.eval()
    out = [F.softmax(model(x[i:i + batch_size].to(device)), dim=1)[:, 1].cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


@dataclass(frozen=True)
class Validation:
    """A classifier's true- and false-positive rates, each with its Clopper–Pearson 95 % CI.

    Accuracy is kept as a figure only: with few positives it hides misses (10 % positives,
    half of them missed, is still 95 % accurate), so gates read the two rates.
    """

    tpr: float
    tpr_ci: tuple[float, float]
    fpr: float
    fpr_ci: tuple[float, float]
    accuracy: float
    n_positive: int
    n_negative: int


def validate(fires: np.ndarray, labels: np.ndarray) -> Validation:
    """True- and false-positive rates (with CIs) and accuracy of decisions against 0/1 labels.

    A rate without trials is 0 with the uninformative interval [0, 1].
    """
    fires = np.asarray(fires, dtype=bool)
    labels = np.asarray(labels, dtype=bool)
    tp, n_pos = int(fires[labels].sum()), int(labels.sum())
    fp_, n_neg = int(fires[~labels].sum()), int((~labels).sum())
    return Validation(tpr=tp / n_pos if n_pos else 0.0, tpr_ci=clopper_pearson(tp, n_pos),
                      fpr=fp_ / n_neg if n_neg else 0.0, fpr_ci=clopper_pearson(fp_, n_neg),
                      accuracy=float((fires == labels).mean()) if labels.size else 0.0,
                      n_positive=n_pos, n_negative=n_neg)


def upper_darboux(t: np.ndarray, p: np.ndarray) -> float:
    """Upper Darboux sum of p over the grid t, normalised to [0, 1] (paper 003, Sec. 3.3).

    Σ_i max(p_i, p_{i+1}) · (t_{i+1} − t_i) / (t_max − t_min): the integral of p over
    the diffusion time bounded from above with the grid's values.
    """
    t = np.asarray(t, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if t.size < 2 or t[-1] == t[0]:
        return float(p.max()) if p.size else 0.0
    heights = np.maximum(p[:-1], p[1:])
    return float((heights * np.diff(t)).sum() / (t[-1] - t[0]))
