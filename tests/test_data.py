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


# -- MedMNIST: MD5, the default folder, multi-label flags, the official split -------------------

def _write_official(folder, flag, sizes=(30, 8, 12), shape=(28, 28), label_columns=1, seed=1,
                    **overrides):
    """A file in the official layout: {split}_images (uint8) and {split}_labels (n, columns)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, label_columns))
    arrays.update(overrides)
    return _npz(folder, f"{flag}.npz", **arrays)


def test_medmnist_md5_mismatch_warns_and_is_recorded(tmp_path):
    import hashlib

    import medmnist

    from leakbench.errors import DataWarning

    path = _write_official(tmp_path, "breastmnist")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    official = medmnist.INFO["breastmnist"]["MD5"]
    src = open_dataset("medmnist:breastmnist", data_root=tmp_path)
    with pytest.warns(DataWarning, match=f"MD5 {md5} is not the official {official}") as caught:
        splits = make_splits(src, image_size=28, n_members=8, pool_size=30, seed=0)
    # The warning points at the data file, not at a line of the loader's source.
    assert [(w.filename, w.lineno) for w in caught] == [(str(path), 0)]
    recorded = splits.manifest["dataset"]
    assert recorded["md5"] == md5 and recorded["md5_official"] == official
    assert recorded["md5_matches"] is False
    assert splits.extras["source_info"]["md5_matches"] is False


def test_medmnist_official_md5_is_silent_and_recorded(tmp_path, monkeypatch):
    import hashlib
    import warnings

    import medmnist

    path = _write_official(tmp_path, "breastmnist")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    # This file stands in for the official one: INFO lists its MD5.
    monkeypatch.setitem(medmnist.INFO, "breastmnist", {**medmnist.INFO["breastmnist"], "MD5": md5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = make_splits(open_dataset("medmnist:breastmnist", data_root=tmp_path),
                             image_size=28, n_members=8, pool_size=30, seed=0)
    assert splits.manifest["dataset"]["md5"] == md5
    assert splits.manifest["dataset"]["md5_matches"] is True


def _run_with_home(home, code: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("LEAKBENCH_DATA_ROOT", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


def test_no_medmnist_folder_is_left_in_home(tmp_path):
    """A digits run, and a MedMNIST run from --data-root, leave no ~/.medmnist behind."""
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    _write_official(data, "breastmnist")
    code = (
        "from leakbench.registry import ATTACKS, DATASETS, DEFENSES\n"
        "from leakbench.data.sources import open_dataset\n"
        "from leakbench.data.splits import make_splits\n"
        "[r.names() for r in (ATTACKS, DATASETS, DEFENSES)]\n"
        "make_splits(open_dataset('digits'), image_size=8, n_members=8, pool_size=64, seed=0)\n"
        "import pathlib; assert not (pathlib.Path.home() / '.medmnist').exists(), 'digits'\n"
        f"src = open_dataset('medmnist:breastmnist', data_root={str(data)!r})\n"
        "make_splits(src, image_size=8, n_members=8, pool_size=30, seed=0)\n"
        "assert not (pathlib.Path.home() / '.medmnist').exists(), 'medmnist'\n"
    )
    r = _run_with_home(home, code)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(home.iterdir()) == []
    # A folder the user made stays (and is searched).
    (home / ".medmnist").mkdir()
    r = _run_with_home(home, code.replace("assert not", "assert"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_medmnist_without_a_default_folder_says_where_it_looked(tmp_path):
    """medmnist sets DEFAULT_ROOT to None where it cannot make ~/.medmnist: no crash."""
    home = tmp_path / "home-file"
    home.write_text("not a folder")  # makedirs(~/.medmnist) fails: DEFAULT_ROOT is None
    r = _run_with_home(home, (
        "from leakbench.data.sources import open_dataset\n"
        "from leakbench.errors import DataError\n"
        "try:\n"
        f"    open_dataset('medmnist:breastmnist', data_root={str(tmp_path)!r}).load(28)\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
        "import medmnist.info; assert medmnist.info.DEFAULT_ROOT is None\n"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"breastmnist.npz not found (looked in {tmp_path});" in r.stdout
    assert "Failed to setup default root" not in r.stderr


def test_multi_label_flag_keeps_every_label_column(tmp_path):
    import medmnist

    from leakbench.quality.domain import train_domain_encoder

    columns = len(medmnist.INFO["chestmnist"]["label"])
    path = _write_official(tmp_path, "chestmnist", label_columns=columns)
    raw = open_dataset("medmnist:chestmnist", data_root=tmp_path).load(28)
    assert raw.labels.shape == (30, columns)
    np.testing.assert_array_equal(raw.labels, np.load(path)["train_labels"])
    # a single-label flag still gives one label per image
    _write_official(tmp_path, "breastmnist")
    assert open_dataset("medmnist:breastmnist", data_root=tmp_path).load(28).labels.shape == (30,)
    # the domain encoder learns all findings at once
    splits = make_splits(open_dataset("medmnist:chestmnist", data_root=tmp_path), image_size=8,
                         n_members=8, pool_size=30, seed=0)
    assert splits.member_labels.shape == (8, columns)
    x = splits.population
    labels = np.concatenate([splits.member_labels, splits.holdout_labels])
    _, stats = train_domain_encoder(x, labels, steps=2, seed=0)
    assert stats["objective"] == "multi-label classification"


def test_multi_label_values_must_be_indicators(tmp_path):
    labels = np.full((30, 14), 2)
    _write_official(tmp_path, "chestmnist", label_columns=14, train_labels=labels)
    with pytest.raises(DataError, match="must be 0 or 1 in every column"):
        open_dataset("medmnist:chestmnist", data_root=tmp_path).load(28)


def _official_options(text: str):
    from leakbench.data.sources import parse_dataset_spec

    return parse_dataset_spec(text)[2]


def test_official_split_members_are_the_train_split(tmp_path):
    path = _write_official(tmp_path, "breastmnist", sizes=(40, 6, 10))
    src = open_dataset("medmnist:breastmnist", data_root=tmp_path)
    opts = _official_options("medmnist:breastmnist[split=official,canary=false]")
    # the profile's sizes (n_members, pool, public) do not apply
    s = make_splits(src, image_size=28, n_members=8, pool_size=20, n_public=10, seed=3,
                    options=opts)
    z = np.load(path)
    assert s.manifest["split"] == "official" and s.manifest["official_sizes"] == {
        "train": 40, "val": 6, "test": 10}
    assert s.n_public == 0 and s.public is None
    np.testing.assert_allclose((s.members[:, 0].numpy() + 1) / 2, z["train_images"] / 255.0,
                               atol=1e-6)
    holdout = np.concatenate([z["val_images"], z["test_images"]]) / 255.0
    np.testing.assert_allclose((s.holdout[:, 0].numpy() + 1) / 2, holdout, atol=1e-6)
    assert s.member_labels.tolist() == z["train_labels"][:, 0].tolist()
    # the same split from the same file, whatever the seed (no canary)
    again = make_splits(src, image_size=28, n_members=8, pool_size=20, seed=4, options=opts)
    assert again.manifest["members"] == s.manifest["members"]
    # a canary is one of the members, as in the seeded split
    c = make_splits(src, image_size=28, n_members=8, pool_size=20, seed=3,
                    options=_official_options("medmnist:breastmnist[split=official]"))
    assert len(c.members) == 40 and c.canary["source_index"] in c.manifest["members"]


def test_official_split_public_and_member_subsets_stay_disjoint(tmp_path):
    _write_official(tmp_path, "breastmnist", sizes=(40, 6, 10))
    src = open_dataset("medmnist:breastmnist", data_root=tmp_path)
    s = make_splits(src, image_size=28, n_members=8, pool_size=20, seed=0, options=_official_options(
        "medmnist:breastmnist[split=official,members=25,public=5]"))
    members, holdout, public = (set(s.manifest[k]) for k in ("members", "holdout", "public"))
    assert len(members) == 25 and members <= set(range(40))  # a subset of the train split
    assert len(public) == 5 and len(holdout) == 11 and public | holdout == set(range(40, 56))
    assert not (members & holdout or members & public or holdout & public)
    assert s.public_hash is not None and s.n_public == 5


@pytest.mark.parametrize("spec, message", [
    ("medmnist:breastmnist[split=official,members=41]", "fewer than members=41"),
    ("medmnist:breastmnist[split=official,public=15]", "leaves fewer than 2 for the holdout"),
    ("medmnist:breastmnist[split=official,audit_canaries=4]", "audit_canaries= does not apply"),
])
def test_official_split_refusals(tmp_path, spec, message):
    _write_official(tmp_path, "breastmnist", sizes=(40, 6, 10))
    with pytest.raises(DataError, match=message):
        make_splits(open_dataset(spec, data_root=tmp_path), image_size=28, n_members=8,
                    pool_size=20, seed=0, options=_official_options(spec))


def test_official_split_needs_val_and_test(tmp_path):
    path = _write_official(tmp_path, "breastmnist")
    arrays = dict(np.load(path))
    del arrays["val_images"]
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="has no 'val_images'"):
        open_dataset("medmnist:breastmnist", data_root=tmp_path).load_official(28)


def test_official_split_is_refused_where_there_is_none():
    with pytest.raises(DataError, match="digits has no official split; drop split=official"):
        make_splits(open_dataset("digits"), image_size=8, n_members=8, pool_size=64, seed=0,
                    options=_official_options("digits[split=official]"))


def test_official_layout_builder_has_the_official_sizes(tmp_path):
    import importlib.util
    from pathlib import Path

    import medmnist

    # by path: an unrelated site-packages module is also called "benchmarks"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "official_layout.py"
    spec = importlib.util.spec_from_file_location("official_layout", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    write_official_layout = module.write_official_layout
    path = write_official_layout("breastmnist", tmp_path)
    z = np.load(path)
    sizes = medmnist.INFO["breastmnist"]["n_samples"]
    for split in ("train", "val", "test"):
        assert z[f"{split}_images"].shape == (sizes[split], 28, 28)
        assert z[f"{split}_images"].dtype == np.uint8
        assert z[f"{split}_labels"].shape == (sizes[split], 1)
    everything = np.concatenate([z[f"{s}_images"] for s in ("train", "val", "test")])
    assert len(np.unique(everything.reshape(len(everything), -1), axis=0)) == len(everything)
    s = make_splits(open_dataset("medmnist:breastmnist", data_root=tmp_path), image_size=16,
                    n_members=128, pool_size=2048, n_public=1000, seed=0,
                    options=_official_options("medmnist:breastmnist[split=official]"))
    assert (len(s.members), len(s.holdout), s.n_public) == (546, 234, 0)


def test_findings_record_the_data_md5(tmp_path, smoke_harness):
    """Every stored finding names the data it was measured on, MD5 beside the official one."""
    import hashlib
    import json

    import medmnist

    from leakbench.errors import DataWarning

    path = _write_official(tmp_path, "breastmnist", sizes=(40, 20, 20))
    h = smoke_harness
    h.data_root = tmp_path
    with pytest.warns(DataWarning, match="is not the official"):
        h.run_cell("medmnist:breastmnist[split=official]", "ddim", "replication")
    (finding,) = [f for f in h.store.findings() if f["attack"] == "replication"]
    data = json.loads(finding["info"])["data"]
    assert data["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert data["md5_official"] == medmnist.INFO["breastmnist"]["MD5"]
    assert data["md5_matches"] is False
