"""Built-in feature extractors."""

from __future__ import annotations

import numpy as np

from leakbench.features.base import FeatureExtractor, l2_normalise


class Pixels(FeatureExtractor):
    """Raw pixels, centred per image and L2-normalised (cosine = Pearson correlation)."""

    name = "pixels"
    description = "pixels, centred per image and L2-normalised"

    def __call__(self, images) -> np.ndarray:
        x = images.detach().cpu().double().reshape(len(images), -1).numpy()
        x = x - x.mean(axis=1, keepdims=True)
        return l2_normalise(x)


def get_extractor(name: str, ctx=None) -> FeatureExtractor:
    from leakbench.registry import FEATURES

    return FEATURES.get(name)(ctx)
