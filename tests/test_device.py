"""The CUDA path: exercised where a GPU is present, skipped with the reason otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leakbench.context import resolve_device
from leakbench.errors import UsageError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device on this machine; the CPU path is tested")


def test_device_names():
    assert resolve_device(None) == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(UsageError, match="use cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device is visible"):
            resolve_device("cuda")


@needs_cuda
def test_smoke_cell_on_cuda_matches_shapes(tmp_path):
    from leakbench.harness import Harness

    h = Harness.create(profile="smoke", device="cuda", cache_dir=tmp_path / "c",
                       results=tmp_path / "r", progress=False)
    f = h.run_cell("digits", "ddim", "replication")
    assert 0.0 <= f.value("frac_above") <= 1.0
    assert h.context("digits").denoiser().conv_in.weight.device.type == "cuda"


@needs_cuda
@pytest.mark.parametrize("defense", ["ddim", "cpsample", "amg"])
def test_every_attack_runs_on_cuda(tmp_path, defense):
    """Training, sampling, guidance, the MIA attacks, SAF classifiers and FID on the GPU."""
    from leakbench.harness import Harness

    h = Harness.create(profile="smoke", device="cuda", cache_dir=tmp_path / "c",
                       results=tmp_path / "r", progress=False)
    for attack in ("replication", "loss_mia", "secmi", "pia", "permutation", "fid",
                   "saf[min_tpr=0,max_fpr=1]", "sima", "loss_mia[access=released]",
                   "extraction[max_factor=4,min_cluster=3]"):
        finding = h.run_cell("digits", defense, attack)
        assert all(np.isfinite(m.value) for m in finding.metrics), attack


def test_faiss_search_on_a_cuda_device_falls_back_to_the_same_result():
    """Without GPU FAISS (the faiss-cpu wheel) a cuda search runs on the CPU, same answer."""
    import faiss

    from leakbench.features.index import faiss_gpus, nearest, on_device

    rng = np.random.default_rng(0)
    q = rng.standard_normal((50, 16)).astype(np.float32)
    r = rng.standard_normal((80, 16)).astype(np.float32)
    cpu = nearest(q, r, k=3)
    gpu = nearest(q, r, k=3, device="cuda")
    np.testing.assert_array_equal(cpu[1], gpu[1])
    np.testing.assert_allclose(cpu[0], gpu[0], rtol=1e-5, atol=1e-5)
    if faiss_gpus() == 0:
        index = faiss.IndexFlatIP(16)
        assert on_device(index, "cuda") is index  # left on the CPU, not copied
