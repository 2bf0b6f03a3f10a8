"""Dataset sources: where images come from, validated into one layout."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leakbench.errors import DataError


@dataclass
class RawData:
    """Validated images: float32 (N, H, W, C) in [0, 1], optional int64 labels, provenance."""

    images: np.ndarray
    labels: np.ndarray | None
    info: dict[str, Any]
    # Sources that know their split (a folder with members/ and holdout/): split name ->
    # indices into ``images``, and each image's name (its path relative to the folder).
    assigned: dict[str, np.ndarray] | None = None
    names: list[str] | None = None


class DatasetSource(ABC):
    """A registered dataset; ``name`` or ``name:<argument>`` on the command line."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    needs_argument: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, argument: str | None = None, *, data_root: str | os.PathLike | None = None):
        if self.needs_argument and not argument:
            raise DataError(f"Dataset {self.name!r} needs an argument: write {self.usage()}.")
        if not self.needs_argument and argument:
            raise DataError(f"Dataset {self.name!r} takes no argument; write just {self.name!r}.")
        self.argument = argument
        self.data_root = Path(data_root).expanduser() if data_root else None

    @classmethod
    def usage(cls) -> str:
        return cls.name

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.argument}" if self.argument else self.name

    @abstractmethod
    def load(self, image_size: int) -> RawData:
        """Read the images at (or resized to) ``image_size`` pixels."""

    @abstractmethod
    def fingerprint(self, image_size: int) -> dict[str, Any]:
        """Everything that identifies the data's content (goes into cache keys)."""

    def load_official(self, image_size: int) -> RawData:
        """Every image of the source's published split, with ``assigned`` = split name ->
        indices (``train``, ``val``, ``test``); sources without one refuse."""
        raise DataError(f"Dataset {self.spec} has no official split; drop split=official "
                        "(the split is then drawn by seed), or use a medmnist:<flag> dataset.")


def validate_images(images: Any, origin: str) -> np.ndarray:
    """Check shape, dtype and range; return float32 (N, H, W, C) in [0, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise DataError(
            f"{origin}: images have shape {tuple(arr.shape)}; expected N×H×W or N×H×W×C."
        )
    if arr.shape[0] == 0:
        raise DataError(f"{origin}: the dataset is empty; give it at least a few hundred images.")
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        raise DataError(
            f"{origin}: images have shape {tuple(arr.shape)}, which looks channels-first; "
            "store them as N×H×W×C."
        )
    if arr.shape[-1] not in (1, 3):
        raise DataError(
            f"{origin}: images have {arr.shape[-1]} channels; expected 1 (grey) or 3 (RGB)."
        )
    if arr.shape[1] != arr.shape[2]:
        raise DataError(f"{origin}: images are {arr.shape[1]}×{arr.shape[2]}; expected square images.")
    if arr.shape[1] == 0:
        raise DataError(f"{origin}: images are 0×0 pixels; store the pixels as N×H×W×C.")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(
            f"{origin}: images have dtype {arr.dtype}; expected uint8 (0–255) or float in [0, 1]."
        )
    # Check in the file's own precision: a cast first would turn 1e300 into inf.
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(1).sum())
        raise DataError(f"{origin}: {bad} image(s) contain NaN or infinite values; remove or fix them.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{origin}: float images range over [{lo:.3g}, {hi:.3g}]; expected [0, 1] "
            "(divide uint8 data by 255, or store it as uint8)."
        )
    return arr.astype(np.float32)


def validate_labels(labels: Any, n_images: int, origin: str, *,
                    multi_label: bool = False) -> np.ndarray:
    """Check class labels (one per image, integer-valued); return int64 of shape (N,).

    A label array of shape (N, 1) (MedMNIST's layout) or (N, k) keeps the first column,
    unless ``multi_label`` (MedMNIST's ``multi-label`` task, e.g. ChestMNIST's 14
    findings): then every column is kept, shape (N, k), each a 0/1 indicator.
    """
    arr = np.asarray(labels)
    if arr.ndim == 0 or len(arr) != n_images:
        given = "a single value" if arr.ndim == 0 else f"{len(arr)} labels"
        raise DataError(f"{origin}: {given} for {n_images} images; give one label per image "
                        "or none.")
    arr = arr.reshape(n_images, -1)
    if arr.shape[1] == 0:
        raise DataError(f"{origin}: the labels have shape {tuple(np.shape(labels))}, with no "
                        "value per image; give one label per image or none.")
    if not multi_label:
        arr = arr[:, 0]
    elif not np.isin(arr, (0, 1)).all():
        raise DataError(f"{origin}: multi-label labels must be 0 or 1 in every column; "
                        "give one 0/1 indicator per finding.")
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() \
            and (arr == np.round(arr)).all() and (np.abs(arr) < 2**53).all():
        return arr.astype(np.int64)
    raise DataError(f"{origin}: labels have dtype {arr.dtype} and are not all whole numbers; "
                    "give integer class labels, or none.")


def resize(images: np.ndarray, image_size: int) -> np.ndarray:
    """Resize (N, H, W, C) float images to ``image_size`` with antialiased bilinear filtering."""
    if images.shape[1] == image_size:
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                      align_corners=False)
    return y.clamp(0, 1).permute(0, 2, 3, 1).contiguous().numpy()


_HASH_MEMO: dict[tuple[str, str, int, float], str] = {}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """A hashlib digest of a file (hex), memoised on (algorithm, path, size, mtime)."""
    st = path.stat()
    memo_key = (algorithm, str(path.resolve()), st.st_size, st.st_mtime)
    if memo_key not in _HASH_MEMO:
        h = hashlib.new(algorithm)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_MEMO[memo_key] = h.hexdigest()
    return _HASH_MEMO[memo_key]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime)."""
    return file_digest(path, "sha256")
