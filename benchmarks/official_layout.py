"""Write a MedMNIST-layout ``.npz`` with a flag's official split sizes, from real images.

No MedMNIST file can be downloaded here, so this builds a stand-in the loader reads
exactly as the official one: ``train_images``/``train_labels``, ``val_…``, ``test_…`` in
the flag's official sizes (``medmnist.INFO``), uint8, 28×28.  The images are
scikit-learn's bundled handwritten digits (real scans, 8×8, 17 grey levels) upsampled to
28 px, each used once; the labels are the digits' parity (a binary task like
BreastMNIST's).  They are not medical images: the file shows that a run with the
official sizes works (e.g. ``medmnist:breastmnist[split=official]``, the whole train
split as members), not what a model trained on the real scans does.  Its MD5 is not
the official one, so the loader warns and records both.

    python benchmarks/official_layout.py breastmnist DIR
    pytest benchmarks/ --dataset 'medmnist:breastmnist[split=official]' --data-root DIR \\
        --defense ddim --attack saf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_official_layout(flag: str, folder: str | Path, *, seed: int = 0) -> Path:
    """``folder/<flag>.npz`` in the official layout and sizes, from upsampled digits."""
    import medmnist
    from sklearn.datasets import load_digits

    from leakbench.data.base import resize

    info = medmnist.INFO[flag]
    if info["n_channels"] != 1:
        raise ValueError(f"{flag} has {info['n_channels']} channels; the digits stand-in is "
                         "grey, so build it only for a grey flag (e.g. breastmnist).")
    sizes = [info["n_samples"][s] for s in ("train", "val", "test")]
    digits = load_digits()
    if sum(sizes) > len(digits.images):
        raise ValueError(f"{flag} has {sum(sizes)} images; the digits stand-in has only "
                         f"{len(digits.images)}.")
    order = np.random.default_rng(seed).permutation(len(digits.images))[: sum(sizes)]
    images = resize((digits.images[order] / 16.0).astype(np.float32)[..., None], 28)
    images = np.round(images[..., 0] * 255).astype(np.uint8)  # the official N×28×28 uint8
    labels = (digits.target[order] % 2).astype(np.uint8)[:, None]  # official (N, 1) labels
    arrays, start = {}, 0
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = images[start:start + n]
        arrays[f"{split}_labels"] = labels[start:start + n]
        start += n
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{flag}.npz"
    np.savez_compressed(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flag", help="a grey 2D MedMNIST flag, e.g. breastmnist")
    parser.add_argument("folder", help="where to write <flag>.npz (give it as --data-root)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_official_layout(args.flag, args.folder, seed=args.seed))


if __name__ == "__main__":
    main()
