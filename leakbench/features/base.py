"""Feature extractors: images in [-1, 1] -> L2-normalised feature vectors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from leakbench.context import RunContext


class FeatureExtractor(ABC):
    """Maps (N, C, H, W) images in [-1, 1] to float32 (N, d) unit vectors (cosine = dot)."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""

    def __init__(self, ctx: RunContext | None = None):
        self.ctx = ctx

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> np.ndarray: ...


def l2_normalise(feats: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return (feats / np.maximum(norms, 1e-12)).astype(np.float32)
