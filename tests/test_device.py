"""The CUDA path: exercised where a GPU is present, skipped with the reason otherwise."""

from __future__ import annotations

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
