"""A small encoder trained locally on the dataset, for the domain Fréchet distance ``fd_domain``.

Inception-v3 has never seen 16-pixel grey digits or pathology tiles; a Fréchet
distance in the features of an encoder trained on the dataset itself is more
sensitive there.  It is trained on the *population* (members and holdout) — a
label classifier when the dataset has labels, a linear-decoder autoencoder when
not — and cached.  Its numbers are comparable only with other ``fd_domain``
numbers of the same dataset, profile and seed, never with published FIDs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from leakbench.context import RunContext

DOMAIN_ENCODER_VERSION = "1"
DOMAIN_FEATURES = 64


class DomainEncoder(nn.Module):
    """(N, C, H, W) in [-1, 1] -> (N, 64) features: three convs, global average pool."""

    num_features = DOMAIN_FEATURES

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, DOMAIN_FEATURES, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float())


def _population_labels(splits) -> np.ndarray | None:
    if splits.member_labels is None or splits.holdout_labels is None:
        return None
    return np.concatenate([splits.member_labels, splits.holdout_labels]).astype(np.int64)


def train_domain_encoder(images: torch.Tensor, labels: np.ndarray | None, *, steps: int,
                         seed: int, batch_size: int = 128, learning_rate: float = 2e-3,
                         progress: bool = False, device: str = "cpu"
                         ) -> tuple[DomainEncoder, dict[str, Any]]:
    """Fit the encoder: cross-entropy on ``labels`` if given, binary cross-entropy per column
    on multi-label ones (N, k) (MedMNIST's ChestMNIST), else reconstruction (MSE).

    Returns the encoder on the CPU, whatever ``device`` it was trained on.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, c, h, w = images.shape
    encoder = DomainEncoder(c)

    # A linear head: class logits, or the pixels back (a linear-decoder autoencoder).
    multi_label = labels is not None and np.ndim(labels) == 2 and np.shape(labels)[1] > 1
    if multi_label:
        y = torch.as_tensor(labels, dtype=torch.float32)
        head = nn.Linear(DOMAIN_FEATURES, y.shape[1])
        objective = "multi-label classification"
    elif labels is not None:
        y = torch.as_tensor(labels).reshape(-1)
        head = nn.Linear(DOMAIN_FEATURES, int(y.max()) + 1)
        objective = "classification"
    else:
        y = None
        head = nn.Linear(DOMAIN_FEATURES, c * h * w)
        objective = "reconstruction"
    encoder, head, images = encoder.to(device), head.to(device), images.to(device)
    y = None if y is None else y.to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=learning_rate)

    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="training domain encoder", leave=False):
        idx = torch.randint(n, (min(batch_size, n),), generator=g).to(device)
        out = head(encoder(images[idx]))
        if multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(out, y[idx])
        elif y is not None:
            loss = nn.functional.cross_entropy(out, y[idx])
        else:
            loss = nn.functional.mse_loss(out, images[idx].reshape(len(idx), -1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tail = losses[-max(1, len(losses) // 10):]
    stats = {"objective": objective, "steps": steps, "final_loss": float(np.mean(tail))}
    return encoder.cpu().eval().requires_grad_(False), stats


def domain_encoder(ctx: RunContext) -> DomainEncoder:
    """The dataset's encoder, trained on the population once and cached."""
    splits = ctx.splits
    steps = ctx.profile.domain_encoder_steps
    spec = {"version": DOMAIN_ENCODER_VERSION, "splits": splits.hash, "seed": ctx.seed,
            "steps": steps}

    def build():
        labels = _population_labels(splits)
        encoder, stats = train_domain_encoder(splits.population, labels, steps=steps,
                                              seed=ctx.seed, progress=ctx.progress,
                                              device=ctx.device)
        return {"state_dict": encoder.state_dict(), "stats": stats}

    payload = ctx.cache.get_or_build("domain_encoder", spec, build,
                                     label=f"domain encoder {ctx.dataset}")
    encoder = DomainEncoder(splits.channels)
    encoder.load_state_dict(payload["state_dict"])
    return encoder.eval().requires_grad_(False)
