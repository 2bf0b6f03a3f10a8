"""Nearest-neighbour search by cosine similarity (FAISS inner product on unit vectors).

The one place where "how close is this image to the members" is computed; the
replication and permutation attacks and the rejection defense all call it.
"""

from __future__ import annotations

import numpy as np


def nearest(queries: np.ndarray, refs: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine similarities and indices of ``refs`` for each query, best first."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    refs = np.ascontiguousarray(refs, dtype=np.float32)
    if len(refs) == 0 or len(queries) == 0:
        return np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64)
    index = faiss.IndexFlatIP(refs.shape[1])
    index.add(refs)
    sims, idx = index.search(queries, min(k, len(refs)))
    return sims, idx


def nearest_member_similarity(queries: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarity to, and index of, each query's nearest member."""
    sims, idx = nearest(queries, members, k=1)
    return sims[:, 0], idx[:, 0]


def calibrate_threshold(holdout_sims: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of how close fresh real images come to the members."""
    return float(np.quantile(np.asarray(holdout_sims, dtype=np.float64), quantile))
