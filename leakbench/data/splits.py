"""Members / holdout / population splits with a hashed manifest.

The pool is a seeded random subset of the source (``pool_size`` images); members
are the first ``n_members`` of it (what the denoiser trains on), holdout the rest
(same distribution, never trained on), population all of the pool.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leakbench.data.base import DatasetSource
from leakbench.errors import DataError

SPLIT_VERSION = "1"


@dataclass
class Splits:
    """Images as float32 tensors (N, C, H, W) in [-1, 1], with the manifest that made them."""

    members: Any
    holdout: Any
    member_labels: np.ndarray | None
    holdout_labels: np.ndarray | None
    manifest: dict[str, Any]
    hash: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def population(self):
        import torch

        return torch.cat([self.members, self.holdout])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.members.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.members.shape[1])


def manifest_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def make_splits(
    source: DatasetSource,
    *,
    image_size: int,
    n_members: int,
    pool_size: int,
    seed: int,
) -> Splits:
    """Deterministic splits: same source, sizes and seed give the same manifest and hash."""
    import torch

    raw = source.load(image_size)
    n = len(raw.images)
    if n_members < 1:
        raise DataError(f"The profile asks for {n_members} members; it needs at least 1.")
    if n < 2 * n_members:
        raise DataError(
            f"Dataset {source.spec} has {n} images but the profile needs {n_members} members plus "
            f"at least as many holdout images ({2 * n_members} in all); use a smaller profile or "
            "a larger dataset."
        )
    rng = np.random.default_rng(seed)
    pool = rng.permutation(n)[: max(min(pool_size, n), 2 * n_members)]
    member_idx = np.sort(pool[:n_members])
    holdout_idx = np.sort(pool[n_members:])
    manifest = {
        "version": SPLIT_VERSION,
        "dataset": source.fingerprint(image_size),
        "seed": int(seed),
        "image_size": int(image_size),
        "n_source": int(n),
        "members": member_idx.tolist(),
        "holdout": holdout_idx.tolist(),
    }

    def to_tensor(idx: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(raw.images[idx])).permute(0, 3, 1, 2)
        return (x * 2.0 - 1.0).contiguous()

    labels = raw.labels
    return Splits(
        members=to_tensor(member_idx),
        holdout=to_tensor(holdout_idx),
        member_labels=None if labels is None else labels[member_idx],
        holdout_labels=None if labels is None else labels[holdout_idx],
        manifest=manifest,
        hash=manifest_hash(manifest),
        extras={"source_info": raw.info},
    )
