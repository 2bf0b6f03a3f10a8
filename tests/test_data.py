from __future__ import annotations

import numpy as np
import pytest

from leakbench.data.sources import MedMNIST, Npz, open_dataset
from leakbench.data.splits import make_splits
from leakbench.errors import DataError


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_digits_resized_to_profile_size():
    raw = open_dataset("digits").load(16)
    assert raw.images.shape == (1797, 16, 16, 1)
    assert raw.images.dtype == np.float32
    assert 0.0 <= raw.images.min() and raw.images.max() <= 1.0
    assert raw.labels.shape == (1797,)


def test_npz_uint8_and_float_layouts(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (50, 12, 12, 3), dtype=np.uint8)
    raw = Npz(str(_npz(tmp_path, images=imgs, labels=np.arange(50)))).load(12)
    np.testing.assert_allclose(raw.images, imgs / 255.0, atol=1e-6)
    assert raw.labels.tolist() == list(range(50))
    grey = rng.random((40, 10, 10)).astype(np.float32)
    raw = Npz(str(_npz(tmp_path, "g.npz", images=grey))).load(8)
    assert raw.images.shape == (40, 8, 8, 1) and raw.labels is None


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pictures": np.zeros((5, 8, 8), np.uint8)}, "has no 'images' array"),
        ({"images": np.zeros((5, 8), np.uint8)}, "expected N×H×W or N×H×W×C"),
        ({"images": np.zeros((5, 8, 8, 4), np.uint8)}, "4 channels"),
        ({"images": np.zeros((5, 3, 8, 8), np.uint8)}, "channels-first"),
        ({"images": np.zeros((5, 8, 8), np.int32)}, "dtype int32"),
        ({"images": np.full((5, 8, 8), 2.0, np.float32)}, "range over"),
        ({"images": np.full((5, 8, 8), np.nan, np.float32)}, "NaN"),
        ({"images": np.zeros((0, 8, 8), np.uint8)}, "empty"),
        ({"images": np.zeros((5, 8, 6), np.uint8)}, "square"),
        ({"images": np.zeros((5, 8, 8), np.uint8), "labels": np.zeros(3)}, "3 labels for 5"),
    ],
)
def test_npz_bad_input_is_one_clear_sentence(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message) as exc:
        Npz(str(_npz(tmp_path, **arrays))).load(8)
    assert "\n" not in str(exc.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Npz(str(tmp_path / "nope.npz")).load(8)


def _official(tmp_path, flag, shape, n_train):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", n_train), ("val", 10), ("test", 10)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    return _npz(tmp_path, f"{flag}.npz", **arrays)


@pytest.mark.parametrize("flag, shape", [("pneumoniamnist", (28, 28)), ("pathmnist", (28, 28, 3))])
def test_medmnist_official_layout(tmp_path, flag, shape):
    path = _official(tmp_path, flag, shape, 60)
    src = open_dataset(f"medmnist:{flag}", data_root=tmp_path)
    raw = src.load(28)
    channels = 1 if len(shape) == 2 else 3
    assert raw.images.shape == (60, 28, 28, channels)
    np.testing.assert_allclose(raw.images[0].reshape(shape), np.load(path)["train_images"][0] / 255.0,
                               atol=1e-6)
    assert raw.labels.shape == (60,)
    assert raw.info["n_channels"] == channels and raw.info["matches_official_size"] is False
    assert src.load(16).images.shape == (60, 16, 16, channels)


def test_medmnist_missing_file_names_path_url_md5(tmp_path):
    import medmnist

    with pytest.raises(DataError) as exc:
        MedMNIST("pathmnist", data_root=tmp_path).load(28)
    msg = str(exc.value)
    assert "pathmnist.npz" in msg and str(tmp_path) in msg
    assert medmnist.INFO["pathmnist"]["url"] in msg and medmnist.INFO["pathmnist"]["MD5"] in msg
    with pytest.raises(DataError) as exc:
        MedMNIST("pathmnist", data_root=tmp_path).load(64)
    assert "pathmnist_64.npz" in str(exc.value) and medmnist.INFO["pathmnist"]["MD5_64"] in str(exc.value)


def test_medmnist_unknown_flag_suggests():
    with pytest.raises(DataError, match="Did you mean 'pathmnist'"):
        MedMNIST("pathmnst").load(28)


def test_medmnist_wrong_channels(tmp_path):
    _official(tmp_path, "pathmnist", (28, 28), 30)  # grey file under an RGB flag
    with pytest.raises(DataError, match="1 channel"):
        open_dataset("medmnist:pathmnist", data_root=tmp_path).load(28)


def test_splits_deterministic_disjoint_and_sized():
    src = open_dataset("digits")
    a = make_splits(src, image_size=8, n_members=32, pool_size=256, seed=3)
    b = make_splits(src, image_size=8, n_members=32, pool_size=256, seed=3)
    c = make_splits(src, image_size=8, n_members=32, pool_size=256, seed=4)
    assert a.hash == b.hash and a.manifest == b.manifest
    assert a.hash != c.hash
    assert (a.members == b.members).all() and (a.holdout == b.holdout).all()
    assert not set(a.manifest["members"]) & set(a.manifest["holdout"])
    assert len(a.members) == 32 and len(a.holdout) == 256 - 32
    assert a.members.shape[1:] == (1, 8, 8)
    assert -1.0 <= float(a.members.min()) and float(a.members.max()) <= 1.0


def test_more_members_than_images(tmp_path):
    src = Npz(str(_npz(tmp_path, images=np.zeros((10, 8, 8), np.uint8))))
    with pytest.raises(DataError, match="has 10 images but the profile needs 32 members"):
        make_splits(src, image_size=8, n_members=32, pool_size=256, seed=0)
