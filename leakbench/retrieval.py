"""DP-RDM's retrieval (paper 002): a public encoder and a differentially private k-NN mean.

The pieces that are not the denoiser:

* ``PublicEncoder``: images -> unit-norm embeddings, trained on the ``public`` split only
  (SimCLR's NT-Xent on two augmented views; Chen et al. 2020).  Paper 002 embeds with CLIP;
  no CLIP weights ship in a package here, so a small contrastive encoder stands in for it.
  Its cache key holds the public images' hash and never the members'.
* ``PrivateRetrieval``: the mechanism.  Per query: Poisson-subsample the datastore with rate
  q, take the k nearest records (inner product on unit vectors, FAISS), sum them and divide
  by k, add N(0, σ²I).  Replacing one record changes the top-k set by at most one element,
  so the mean moves by at most 2/k (the vectors have norm 1): the Gaussian mechanism's
  noise multiplier is σk/2, and one query is one subsampled Gaussian mechanism.  The
  mechanism answers at most ``budget`` queries and then refuses.
* ``calibrate_sigma`` / ``retrieval_epsilon``: σ for a target (ε, δ) over T queries and the
  ε that σ spends, both by Opacus's RDP accountant (Mironov 2017; Mironov, Talwar & Zhang
  2019 for the subsampled Gaussian), the accountant family paper 002 uses.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import trange

from leakbench.errors import UsageError
from leakbench.features.base import FeatureExtractor, l2_normalise

if TYPE_CHECKING:
    from leakbench.context import RunContext

EMBED_DIM = 16  # small: the noise a query gets grows with √d, the signal stays at norm ≤ 1
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256]


class QueryBudgetExceeded(UsageError):
    """The private datastore was asked more distinct queries than its accounted budget."""


# ---------------------------------------------------------------------------------------------
# The encoder (public data only)


class PublicEncoder(nn.Module):
    """A small CNN: (N, C, H, W) in [-1, 1] -> (N, dim) unit vectors."""

    def __init__(self, channels: int, dim: int = EMBED_DIM, width: int = 32):
        super().__init__()
        self.config = dict(channels=channels, dim=dim, width=width)
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, 2 * width), nn.SiLU(),
            nn.Linear(2 * width, dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(images), dim=1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view: a shift of up to 1/8 of the side, contrast and brightness jitter, noise."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    views = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    contrast = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    bright = 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    noise = 0.05 * torch.randn(x.shape, generator=gen)
    return (views * contrast + bright + noise).clamp(-1, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2N − 1 others."""
    z = torch.cat([z1, z2])
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_encoder(images: torch.Tensor, *, steps: int, batch_size: int = 128, seed: int = 0,
                  learning_rate: float = 1e-3, progress: bool = True) -> tuple[PublicEncoder, dict]:
    """Contrastive training of a ``PublicEncoder`` on ``images`` (CPU; the encoder is tiny)."""
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    enc = PublicEncoder(images.shape[1])
    opt = torch.optim.Adam(enc.parameters(), lr=learning_rate)
    t0, losses = time.perf_counter(), []
    bar = trange(steps, desc=f"training retrieval encoder on {len(images)} public images",
                 unit="step", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        x = images[idx]
        loss = nt_xent(enc(augment(x, gen)), enc(augment(x, gen)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tail = losses[-max(1, len(losses) // 10):]
    return enc.eval().requires_grad_(False), {
        "encoder_seconds": time.perf_counter() - t0, "encoder_steps": steps,
        "encoder_final_loss": sum(tail) / len(tail) if tail else float("nan")}


def encoder_spec(ctx: RunContext) -> dict[str, Any]:
    """What determines the encoder: the public images (hash), seed and steps; never the members."""
    if not ctx.splits.n_public:
        raise UsageError(
            f"The retrieval encoder is trained on the public split, and dataset {ctx.dataset} "
            "has none; give it public images (dataset param public=N, N > 0).")
    return {"public": ctx.splits.public_hash, "seed": ctx.seed, "dim": EMBED_DIM,
            "steps": ctx.profile.domain_encoder_steps, "version": "1"}


def public_encoder(ctx: RunContext) -> tuple[PublicEncoder, dict]:
    """The encoder trained on ``public`` (cached by :func:`encoder_spec`), and its training stats."""
    spec = encoder_spec(ctx)

    def build():
        enc, stats = train_encoder(ctx.splits.public, steps=spec["steps"], seed=ctx.seed,
                                   progress=ctx.progress)
        return {"state_dict": enc.state_dict(), "config": enc.config, "stats": stats}

    payload = ctx.cache.get_or_build("retrieval-encoder", spec, build,
                                     label=f"retrieval encoder {ctx.dataset}")
    enc = PublicEncoder(**payload["config"])
    enc.load_state_dict(payload["state_dict"])
    return enc.eval().requires_grad_(False), dict(payload["stats"])


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Unit-norm float32 embeddings of ``images`` (CPU)."""
    out = [encoder(images[i:i + batch_size].cpu()).numpy() for i in range(0, len(images), batch_size)]
    return l2_normalise(np.concatenate(out)) if out else np.zeros((0, EMBED_DIM), np.float32)


class PublicEncoderFeatures(FeatureExtractor):
    """The DP-RDM retrieval encoder as a feature space (trained on ``public`` only)."""

    name = "public_encoder"
    description = "the contrastive retrieval encoder trained on the public split only (DP-RDM)"

    _encoder: PublicEncoder | None = None

    def __call__(self, images) -> np.ndarray:
        if self.ctx is None:
            raise UsageError("The public_encoder feature needs a run context (it is trained "
                             "on the dataset's public split).")
        if self._encoder is None:  # loaded from the cache once per extractor, not per call
            self._encoder, _ = public_encoder(self.ctx)
        return embed(self._encoder, images)


# ---------------------------------------------------------------------------------------------
# Neighbours for training on public data


def public_neighbour_means(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each public image, the mean of its k nearest *other* public embeddings (self excluded).

    Returns (means (N, d), neighbour indices (N, k)).
    """
    from leakbench.features.index import nearest

    if len(embeddings) <= k:
        raise UsageError(f"The public split has {len(embeddings)} images, too few for k={k} "
                         "neighbours besides each image; use more public images or a smaller k.")
    _, idx = nearest(embeddings, embeddings, k=k + 1)
    own = np.arange(len(embeddings))[:, None]
    # Drop each image itself (normally rank 0, but a duplicate image can tie with it).
    keep = np.array([row[row != i][:k] for row, i in zip(idx, own[:, 0])])
    return embeddings[keep].sum(axis=1) / k, keep


# ---------------------------------------------------------------------------------------------
# Privacy accounting


def calibrate_sigma(*, epsilon: float, delta: float, q: float, queries: int, k: int
                    ) -> tuple[float, float]:
    """(σ, noise multiplier z = σk/2) that spends at most (ε, δ) over ``queries`` at rate q."""
    from opacus.accountants.utils import get_noise_multiplier

    z = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q,
                             steps=queries, accountant="rdp", epsilon_tolerance=0.01)
    return 2.0 * z / k, float(z)


def retrieval_epsilon(*, sigma: float, k: int, q: float, queries: int, delta: float) -> float:
    """ε after ``queries`` subsampled Gaussian queries with noise σ on a mean of sensitivity 2/k."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    z = sigma * k / 2.0
    rdp = compute_rdp(q=q, noise_multiplier=z, steps=queries, orders=RDP_ORDERS)
    eps, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


# ---------------------------------------------------------------------------------------------
# The mechanism


class PrivateRetrieval:
    """Answers queries with the noisy mean of their k nearest datastore records, at most
    ``budget`` times.

    ``answer(queries)`` -> (len(queries), d): for each query an independent Poisson subsample
    (rate q) of the datastore, its k nearest records by inner product, their sum / k (fewer
    than k in the subsample: the sum of those, still / k, which keeps the sensitivity 2/k),
    plus N(0, σ²I).  With q = 1 and σ = 0 this is plain (non-private) retrieval.
    """

    def __init__(self, datastore: np.ndarray, *, k: int, q: float, sigma: float, budget: int,
                 seed: int, device: str = "cpu"):
        self.datastore = np.ascontiguousarray(datastore, dtype=np.float32)
        self.k, self.q, self.sigma, self.budget = int(k), float(q), float(sigma), int(budget)
        self.device = device
        self.used = 0
        self._rng = np.random.default_rng([int(seed), 0xD9])

    def answer(self, queries: np.ndarray) -> np.ndarray:
        from leakbench.features.index import nearest

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.used + len(queries) > self.budget:
            raise QueryBudgetExceeded(
                f"The private datastore's budget is {self.budget} queries (the ε it reports is "
                f"for that many) and {self.used} are spent; {len(queries)} more would exceed it. "
                "Reuse the released conditionings, or set a larger queries= (a larger ε or σ).")
        self.used += len(queries)
        n, d = len(self.datastore), self.datastore.shape[1]
        out = np.zeros((len(queries), d), np.float64)
        # Search the whole store once per query, deep enough to find k survivors of the
        # subsample almost always; fall back to the full ranking when it is not.
        depth = min(n, max(4 * self.k, int(np.ceil(4 * self.k / max(self.q, 1e-9)))))
        _, ranked = nearest(queries, self.datastore, k=depth, device=self.device)
        for i, q_vec in enumerate(queries):
            keep = self._rng.random(n) < self.q
            order = ranked[i][keep[ranked[i]]]
            if len(order) < self.k and depth < n:
                full = np.argsort(-(self.datastore @ q_vec), kind="stable")
                order = full[keep[full]]
            out[i] = self.datastore[order[: self.k]].sum(axis=0) / self.k
        if self.sigma > 0:
            out += self._rng.normal(0.0, self.sigma, size=out.shape)
        return out.astype(np.float32)
