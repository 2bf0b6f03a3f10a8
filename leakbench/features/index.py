"""Nearest-neighbour search by cosine similarity (FAISS inner product on unit vectors).

The one place where "how close is this image to the members" is computed; the
replication and permutation attacks and the rejection defense all call it.

With ``device="cuda[:N]"`` the exact index moves to that GPU when the installed FAISS
was built with GPU support (``faiss-gpu``); the ``faiss-cpu`` wheel has none, and the
search then stays on the CPU (same results: both are exact inner-product searches).
"""

from __future__ import annotations

import functools

import numpy as np


def nearest(queries: np.ndarray, refs: np.ndarray, k: int = 1, *, device: str = "cpu"
            ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine similarities and indices of ``refs`` for each query, best first."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    refs = np.ascontiguousarray(refs, dtype=np.float32)
    if len(refs) == 0 or len(queries) == 0:
        return np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64)
    index = on_device(faiss.IndexFlatIP(refs.shape[1]), device)
    index.add(refs)
    sims, idx = index.search(queries, min(k, len(refs)))
    return sims, idx


def faiss_gpus() -> int:
    """Number of GPUs the installed FAISS can use (0 for the ``faiss-cpu`` wheel)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


@functools.cache
def _gpu_resources():
    import faiss

    return faiss.StandardGpuResources()


def on_device(index, device: str):
    """``index`` moved to the GPU ``device`` names when FAISS has GPU support, else unchanged."""
    if not str(device).startswith("cuda") or faiss_gpus() == 0:
        return index
    import faiss

    gpu = int(device.split(":", 1)[1]) if ":" in device else 0
    return faiss.index_cpu_to_gpu(_gpu_resources(), gpu, index)


def nearest_member_similarity(queries: np.ndarray, members: np.ndarray, *, device: str = "cpu"
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Similarity to, and index of, each query's nearest member."""
    sims, idx = nearest(queries, members, k=1, device=device)
    return sims[:, 0], idx[:, 0]


def calibrate_threshold(holdout_sims: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of how close fresh real images come to the members."""
    return float(np.quantile(np.asarray(holdout_sims, dtype=np.float64), quantile))
