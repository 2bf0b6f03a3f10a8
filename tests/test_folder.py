"""The ``folder:`` dataset: PNG/JPEG files split by seed, or by members/, holdout/, public/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leakbench.data.sources import Folder, open_dataset
from leakbench.data.splits import SplitOptions, make_splits
from leakbench.errors import DataError


def write_pngs(folder: Path, images: np.ndarray, prefix: str = "img") -> list[Path]:
    """(N, H, W[, C]) floats in [0, 1] -> one PNG each (grey or RGB), named by index."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        arr = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        paths.append(folder / f"{prefix}{i:04d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def digits_as_pngs(folder: Path, n: int, start: int = 0) -> np.ndarray:
    """scikit-learn digits ``start..start+n`` as 8×8 grey PNGs; returns the uint8 pixels."""
    from sklearn.datasets import load_digits

    pixels = np.round(load_digits().images[start:start + n] / 16.0 * 255) / 255
    write_pngs(folder, pixels)
    return pixels


def test_one_folder_is_read_in_path_order_and_split_by_seed(tmp_path):
    pixels = digits_as_pngs(tmp_path / "d", 120)
    raw = open_dataset(f"folder:{tmp_path / 'd'}").load(8)
    assert raw.images.shape == (120, 8, 8, 1) and raw.assigned is None
    np.testing.assert_allclose(raw.images[..., 0], pixels, atol=1e-6)
    assert raw.names[:2] == ["img0000.png", "img0001.png"]
    s1 = make_splits(Folder(str(tmp_path / "d")), image_size=8, n_members=20, pool_size=100,
                     n_public=10, seed=0, options=SplitOptions(canary=False))
    s2 = make_splits(Folder(str(tmp_path / "d")), image_size=8, n_members=20, pool_size=100,
                     n_public=10, seed=1, options=SplitOptions(canary=False))
    assert s1.hash != s2.hash and len(s1.members) == 20 and s1.n_public == 10
    files = s1.manifest["files"]
    assert files["members"] == [f"img{i:04d}.png" for i in s1.manifest["members"]]
    assert not set(files["members"]) & set(files["holdout"]) | set(files["public"]) & set(
        files["members"])


def test_explicit_subfolders_are_the_split_exactly(tmp_path):
    root = tmp_path / "scans"
    members = digits_as_pngs(root / "members", 12)
    holdout = digits_as_pngs(root / "holdout", 9, start=12)
    digits_as_pngs(root / "public", 5, start=30)
    (root / "notes.txt").write_text("ignored")
    for profile_members, public in ((4, 0), (64, 100)):  # the profile's counts do not apply
        s = make_splits(Folder(str(root)), image_size=8, n_members=profile_members, pool_size=999,
                        n_public=public, seed=3, options=SplitOptions(canary=False))
        assert (len(s.members), len(s.holdout), s.n_public) == (12, 9, 5)
        np.testing.assert_allclose((s.members[:, 0].numpy() + 1) / 2, members, atol=1e-6)
        np.testing.assert_allclose((s.holdout[:, 0].numpy() + 1) / 2, holdout, atol=1e-6)
        assert s.manifest["files"]["members"][0] == "members/img0000.png"
        assert s.manifest["files"]["public"][-1] == "public/img0004.png"
    with pytest.raises(DataError, match="members= and public= do not apply"):
        make_splits(Folder(str(root)), image_size=8, n_members=4, pool_size=99, seed=0,
                    options=SplitOptions(members=4))


def test_explicit_split_without_public_has_no_pretraining_split(tmp_path):
    digits_as_pngs(tmp_path / "members", 6)
    digits_as_pngs(tmp_path / "holdout", 6, start=6)
    s = make_splits(Folder(str(tmp_path)), image_size=8, n_members=4, pool_size=99, n_public=50,
                    seed=0)
    assert s.n_public == 0 and s.public_hash is None and s.canary is not None


def test_rgb_and_16_bit_grey_files(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (3, 10, 10, 3), dtype=np.uint8)
    write_pngs(tmp_path / "rgb", rgb / 255.0)
    raw = Folder(str(tmp_path / "rgb")).load(10)
    np.testing.assert_allclose(raw.images, rgb / 255.0, atol=1e-6)
    (tmp_path / "deep").mkdir()
    deep = np.array([[0, 65535], [32768, 1000]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep" / "a.png")
    raw = Folder(str(tmp_path / "deep")).load(2)
    np.testing.assert_allclose(raw.images[0, ..., 0], deep / 65535.0, atol=1e-6)


def test_fingerprint_changes_with_a_file_and_its_place(tmp_path):
    digits_as_pngs(tmp_path / "members", 4)
    digits_as_pngs(tmp_path / "holdout", 4, start=4)
    before = Folder(str(tmp_path)).fingerprint(8)
    (tmp_path / "holdout" / "img0003.png").rename(tmp_path / "members" / "moved.png")
    moved = Folder(str(tmp_path)).fingerprint(8)
    assert moved != before
    write_pngs(tmp_path / "members", np.zeros((1, 8, 8)), prefix="moved")
    assert Folder(str(tmp_path)).fingerprint(8) not in (before, moved)


def _broken(root: Path) -> Path:
    digits_as_pngs(root, 5)
    (root / "img0002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root / "img0002.png"


def _mixed_size(root: Path) -> Path:
    digits_as_pngs(root, 5)
    write_pngs(root, np.zeros((1, 12, 12)), prefix="z")
    return root / "z0000.png"


def _mixed_mode(root: Path) -> Path:
    digits_as_pngs(root, 5)
    write_pngs(root, np.zeros((1, 8, 8, 3)), prefix="z")
    return root / "z0000.png"


def _not_square(root: Path) -> Path:
    write_pngs(root, np.zeros((1, 8, 6)), prefix="wide")
    return root / "wide0000.png"


@pytest.mark.parametrize("make, message", [
    (_broken, "cannot be read"),
    (_mixed_size, "is 12×12 grey but img0000.png is 8×8 grey"),
    (_mixed_mode, "is 8×8 RGB but img0000.png is 8×8 grey"),
    (_not_square, "must be square"),
], ids=["unreadable", "mixed-size", "mixed-mode", "not-square"])
def test_bad_files_are_one_sentence_naming_the_file(tmp_path, make, message):
    bad = make(tmp_path / "d")
    with pytest.raises(DataError, match=message) as exc:
        Folder(str(tmp_path / "d")).load(8)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("layout, message", [
    ({}, "holds no PNG or JPEG images"),
    ({"members": 3}, "has members/ but no holdout/"),
    ({"holdout": 3}, "has holdout/ but no members/"),
    ({"members": 3, "holdout": 0}, "holdout holds no PNG or JPEG"),
    ({"members": 1, "holdout": 3}, "1 image\\(s\\) in members/"),
], ids=["empty", "no-holdout", "no-members", "empty-holdout", "one-member"])
def test_bad_layouts_are_one_sentence(tmp_path, layout, message):
    for split, n in layout.items():
        (tmp_path / split).mkdir()
        digits_as_pngs(tmp_path / split, n)
    with pytest.raises(DataError, match=message) as exc:
        make_splits(Folder(str(tmp_path)), image_size=8, n_members=1, pool_size=9, seed=0)
    assert "\n" not in str(exc.value)


def test_missing_folder_and_a_file_instead(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Folder(str(tmp_path / "nope")).load(8)
    (tmp_path / "f.npz").write_bytes(b"")
    with pytest.raises(DataError, match="is a file; give folder:"):
        Folder(str(tmp_path / "f.npz")).load(8)
