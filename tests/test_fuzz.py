"""Property-based fuzzing (hypothesis) of every input surface a user types or hands over.

Two properties throughout: no input raises anything but leakbench's own errors (each one
sentence, shown without a traceback), and every valid spec round-trips through its
canonical form.  Example counts are kept modest so the suite stays fast; ``EXAMPLES``
says how many each test runs (``pytest tests/test_fuzz.py --hypothesis-show-statistics``
prints what ran; ``LEAKBENCH_FUZZ_SCALE=20`` runs twenty times as many).

The dataset loaders are fuzzed through :data:`LOADERS`: one function per loader that
writes the generated arrays in that loader's layout and returns the source to load.  A
new loader (e.g. a folder of images) is one more entry there.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from leakbench.errors import DataError, LeakbenchError, UsageError
from leakbench.harness import expand, resolve_plugin, validate_dataset
from leakbench.registry import ATTACKS, DATASETS, DEFENSES, FEATURES
from leakbench.specs import parse_spec, split_specs

EXAMPLES = {
    "spec_text": 300,
    "plugin_text": 200,
    "plugin_round_trip": 200,
    "dataset_text": 200,
    "dataset_round_trip": 150,
    "loader_arrays": 60,
    "loader_bytes": 40,
}


SCALE = float(os.environ.get("LEAKBENCH_FUZZ_SCALE", "1"))  # e.g. 20 for a deeper local run


def fuzz(name: str, **extra):
    """The settings of one fuzz test: its example count, no deadline (the machine is shared)."""
    return settings(max_examples=max(1, int(EXAMPLES[name] * SCALE)), deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow], **extra)


# -- spec text: name[key=value,...], comma-separated lists ------------------------------------

SPEC_CHARS = "abcdz_-019 ,[]=.:'\"\\\t\né∂😀\x00"
spec_text = st.one_of(st.text(), st.text(alphabet=SPEC_CHARS, max_size=40))


@fuzz("spec_text")
@given(spec_text)
def test_any_spec_text_parses_or_fails_with_a_usage_error(text):
    try:
        pieces = split_specs(text)
    except UsageError:
        return
    for piece in pieces:
        try:
            spec = parse_spec(piece)
        except UsageError:
            continue
        assert spec.name and spec.name == spec.name.strip()
        assert parse_spec(str(spec)) == spec  # the parsed form prints and parses back


REGISTRIES = {"defense": DEFENSES, "attack": ATTACKS}


def _fields(registry, name):
    params = registry.get(name).Params
    return dataclasses.fields(params), typing.get_type_hints(params)


@st.composite
def plugin_text(draw):
    """A --defense/--attack value: real names and keys, any values (or anything at all)."""
    kind = draw(st.sampled_from(sorted(REGISTRIES)))
    reg = REGISTRIES[kind]
    name = draw(st.one_of(st.sampled_from(reg.names()), st.text(max_size=12)))
    keys = [f.name for f in _fields(reg, name)[0]] if name in reg else []
    items = draw(st.lists(st.tuples(st.one_of(st.sampled_from(keys or ["x"]), st.text(max_size=8)),
                                    st.one_of(st.text(max_size=12),
                                              st.sampled_from(["nan", "inf", "-inf", "1e400",
                                                               "none", "True", "0x10", "1_000",
                                                               "9007199254740993", "-0", "",
                                                               "٣", "１"]))),
                          max_size=4))
    body = ",".join(f"{k}={v}" for k, v in items)
    return kind, f"{name}[{body}]" if items or draw(st.booleans()) else name


@fuzz("plugin_text")
@given(plugin_text())
def test_any_plugin_spec_resolves_or_fails_with_one_sentence(kind_text):
    kind, text = kind_text
    try:
        specs = expand([text], REGISTRIES[kind])
    except LeakbenchError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    for spec in specs:
        assert expand([spec], REGISTRIES[kind]) == [spec]


def _value_text(draw, kind, key: str):
    """A valid value of type ``kind`` and a way of writing it a user might choose."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        if draw(st.booleans()):
            return None, draw(st.sampled_from(["none", "None", "null", "NONE"]))
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        v = draw(st.sampled_from(args))
        return v, str(v)
    if kind is bool:
        v = draw(st.booleans())
        return v, draw(st.sampled_from(["true", "True", "1", "yes", "on"] if v
                                       else ["false", "FALSE", "0", "no", "off"]))
    if kind is int:
        v = draw(st.one_of(st.integers(1, 64), st.integers(-(2**62), 2**62)))
        forms = [str(v)] + ([f"{v}.0"] if abs(v) < 2**53 else [])
        return v, draw(st.sampled_from(forms))
    if kind is float:
        v = draw(st.one_of(st.floats(0, 1), st.floats(allow_nan=False, allow_infinity=False)))
        return v, draw(st.sampled_from([repr(v), f"{v:.17g}", f"{v:e}" if v == float(f"{v:e}")
                                        else repr(v)]))
    if kind is str:
        if key == "feature":
            v = draw(st.sampled_from(FEATURES.names()))
        else:
            v = draw(st.text(alphabet="abcxyz_-0123456789", min_size=1, max_size=8))
        return v, v
    raise AssertionError(f"no strategy for {kind}")


@st.composite
def valid_plugin_spec(draw):
    kind = draw(st.sampled_from(sorted(REGISTRIES)))
    reg = REGISTRIES[kind]
    name = draw(st.sampled_from(reg.names()))
    fields, hints = _fields(reg, name)
    chosen = draw(st.lists(st.sampled_from(fields), unique_by=lambda f: f.name,
                           max_size=len(fields))) if fields else []
    items, values = [], {}
    for f in chosen:
        v, text = _value_text(draw, hints[f.name], f.name)
        pad = draw(st.sampled_from(["", " ", "\t"]))
        items.append(f"{pad}{f.name}{pad}={pad}{text}{pad}")
        values[f.name] = v
    text = f"{name}[{','.join(items)}]" if items else name
    return kind, name, values, text


@fuzz("plugin_round_trip")
@given(valid_plugin_spec())
def test_valid_plugin_specs_round_trip_through_canonical_form(spec):
    kind, name, values, text = spec
    reg = REGISTRIES[kind]
    try:
        plugin = resolve_plugin(reg, text)
    except UsageError as exc:  # a value its params class refuses (a range): one sentence
        assert str(exc).startswith(f"{kind} {name!r}")
        assume(False)
    for key, v in values.items():
        assert getattr(plugin.params, key) == v, (key, text)
    [c] = expand([text], reg)
    assert expand([c], reg) == [c]  # canonical is a fixed point
    assert resolve_plugin(reg, c).params == plugin.params  # and means the same plugin


# -- dataset specs: name[:argument][key=value,...] ---------------------------------------------

@st.composite
def dataset_text(draw):
    name = draw(st.one_of(st.sampled_from(DATASETS.names()), st.text(max_size=10)))
    arg = draw(st.one_of(st.none(), st.text(max_size=12),
                         st.sampled_from(["pathmnist", "/no/such.npz", "x.npz"])))
    params = draw(st.lists(st.tuples(st.sampled_from(["members", "canary", "x", " "]),
                                     st.one_of(st.text(max_size=6),
                                               st.sampled_from(["2", "1", "-3", "true", "none",
                                                                "64.0", "nan", "1e9"]))),
                           max_size=3))
    text = name + (f":{arg}" if arg is not None else "")
    if params or draw(st.booleans()):
        text += "[" + ",".join(f"{k}={v}" for k, v in params) + "]"
    return text


@fuzz("dataset_text")
@given(dataset_text())
def test_any_dataset_spec_validates_or_fails_with_one_sentence(text):
    try:
        specs = split_specs(text)
        checked = [validate_dataset(s) for s in specs]
    except LeakbenchError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    from leakbench.data.sources import open_dataset

    for spec in checked:
        assert validate_dataset(spec) == spec  # canonical is a fixed point
        try:  # validated up front => the source can at least be constructed
            open_dataset(spec)
        except DataError as exc:
            pytest.fail(f"{spec!r} passed validation but the source refused it: {exc}")


@st.composite
def valid_dataset_spec(draw):
    name = draw(st.sampled_from(DATASETS.names()))
    cls = DATASETS.get(name)
    arg = draw(st.text(alphabet="abcxyz_-./0123456789", min_size=1, max_size=12)) \
        if cls.needs_argument else None
    from leakbench.data.splits import SplitOptions

    fields, hints = dataclasses.fields(SplitOptions), typing.get_type_hints(SplitOptions)
    chosen = draw(st.lists(st.sampled_from(fields), unique_by=lambda f: f.name))
    items, values = [], {}
    for f in chosen:
        v, text = _value_text(draw, hints[f.name], f.name)
        items.append(f"{f.name}={text}")
        values[f.name] = v
    text = name + (f":{arg}" if arg else "") + (f"[{','.join(items)}]" if items else "")
    return name, arg, values, text


@fuzz("dataset_round_trip")
@given(valid_dataset_spec())
def test_valid_dataset_specs_round_trip_through_canonical_form(spec):
    from leakbench.data.sources import parse_dataset_spec

    name, arg, values, text = spec
    try:
        c = validate_dataset(text)
    except UsageError:  # a value SplitOptions refuses (members < 2): one sentence
        assume(False)
    n2, a2, options = parse_dataset_spec(c)
    assert (n2, a2) == (name, arg)
    for key, v in values.items():
        assert getattr(options, key) == v
    assert validate_dataset(c) == c
    assert parse_dataset_spec(c)[2] == parse_dataset_spec(text)[2]


# -- the loaders' shape and dtype checks --------------------------------------------------------

def _write_npz(folder: Path, arrays: dict[str, np.ndarray]):
    from leakbench.data.sources import Npz

    np.savez(folder / "data.npz", **arrays)
    return Npz(str(folder / "data.npz"))


def _write_medmnist(folder: Path, arrays: dict[str, np.ndarray]):
    """The official layout (``train_images``/``train_labels``) under the flag's file name."""
    pytest.importorskip("medmnist")
    from leakbench.data.sources import MedMNIST

    renamed = {("train_" + k if k in ("images", "labels") else k): v for k, v in arrays.items()}
    np.savez(folder / "pathmnist.npz", **renamed)
    return MedMNIST("pathmnist", data_root=folder)


def _write_folder(folder: Path, arrays: dict[str, np.ndarray]):
    """One PNG per image where PNG can hold the array; the raw bytes under a .png name otherwise.

    PNG stores only uint8 grey or RGB, so float images in [0, 1] are quantised and
    anything outside (NaN, out of range, other dtypes or shapes) becomes a damaged file:
    what a user's folder can actually contain.
    """
    from PIL import Image

    from leakbench.data.sources import Folder

    root = folder / "images"
    root.mkdir()
    images = arrays.get("images", arrays.get("pictures"))
    fits = (images.ndim in (3, 4) and (images.ndim == 3 or images.shape[-1] in (1, 3))
            and images.shape[1] > 0 and images.shape[2] > 0
            and (images.dtype == np.uint8 or (images.dtype.kind == "f" and np.isfinite(images).all()
                                              and images.min(initial=0) >= 0
                                              and images.max(initial=0) <= 1)))
    if not fits:
        (root / "0.png").write_bytes(images.tobytes()[:600])
        return Folder(str(root))
    for i, img in enumerate(images):
        u8 = img if img.dtype == np.uint8 else np.round(img.astype(np.float64) * 255).astype(np.uint8)
        Image.fromarray(u8[..., 0] if u8.ndim == 3 and u8.shape[-1] == 1 else u8).save(
            root / f"{i:03d}.png")
    return Folder(str(root))


# One entry per loader: write the generated arrays in its layout, return the source to load.
LOADERS: dict[str, Callable[[Path, dict[str, np.ndarray]], typing.Any]] = {
    "npz": _write_npz,
    "medmnist": _write_medmnist,
    "folder": _write_folder,
}

DTYPES = [np.uint8, np.int16, np.int64, np.float16, np.float32, np.float64, np.bool_,
          np.complex64]


@st.composite
def image_arrays(draw):
    """Arrays a user might hand over as images and labels.

    A third are anything (any rank, size, dtype, values); the rest are a valid layout
    (N×H×W[×C], uint8 or float in [0, 1]) with at most one thing wrong, so that the
    checks after the first ones (labels, ranges, empty images) are reached too.
    """
    if draw(st.sampled_from(["anything", "nearly valid", "nearly valid"])) == "anything":
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))
        images = draw(hnp.arrays(dtype, shape))
    else:
        dtype = np.dtype(draw(st.sampled_from([np.uint8, np.float16, np.float32, np.float64])))
        n, side = draw(st.integers(1, 6)), draw(st.integers(1, 5))
        shape = draw(st.sampled_from([(n, side, side), (n, side, side, 1), (n, side, side, 3)]))
        unit = st.floats(0, 1, width=dtype.itemsize * 8) if dtype.kind == "f" else None
        images = draw(hnp.arrays(dtype, shape, elements=unit))
        flaw = draw(st.sampled_from([None, None, "nan", "range", "huge", "empty", "side",
                                     "channels", "channels-first"]))
        if flaw in ("nan", "range", "huge") and dtype.kind == "f":
            images.flat[draw(st.integers(0, images.size - 1))] = \
                {"nan": np.nan, "range": 1.5, "huge": np.finfo(dtype).max}[flaw]
        elif flaw == "empty":
            images = images[:, :0, :0]
        elif flaw == "side":
            images = np.concatenate([images, images[:, :1]], axis=1)
        elif flaw == "channels":
            images = np.repeat(images[..., :1] if images.ndim == 4 else images[..., None], 4, -1)
        elif flaw == "channels-first" and images.ndim == 4:
            images = np.moveaxis(images, -1, 1)
    arrays = {"images": images}
    if draw(st.booleans()):
        n_images = shape[0] if shape else 1
        label_shape = draw(st.one_of(
            st.sampled_from([(n_images,), (n_images,), (n_images, 1), (n_images, 0), (),
                             (n_images + 1,)]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)))
        label_dtype = draw(st.sampled_from([np.int64, np.uint8, np.bool_, np.float64,
                                            np.dtype("U3")]))
        arrays["labels"] = draw(hnp.arrays(label_dtype, label_shape))
    if draw(st.sampled_from([False] * 9 + [True])):  # the images under another key
        arrays = {("pictures" if k == "images" else k): v for k, v in arrays.items()}
    return arrays


def _assert_valid(raw, size: int) -> None:
    x = raw.images
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:3] == (size, size)
    assert x.shape[-1] in (1, 3) and len(x) > 0
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    if raw.labels is not None:
        assert raw.labels.dtype == np.int64 and raw.labels.shape == (len(x),)


@pytest.mark.parametrize("loader", list(LOADERS))
@fuzz("loader_arrays")
@given(arrays=image_arrays(), size=st.sampled_from([4, 8]))
def test_loaders_accept_valid_images_and_refuse_the_rest_in_one_sentence(loader, arrays, size):
    with tempfile.TemporaryDirectory() as tmp:
        source = LOADERS[loader](Path(tmp), arrays)
        try:
            raw = source.load(size)
        except DataError as exc:
            assert str(exc) and "\n" not in str(exc)
            event(f"refused: {str(exc).split(': ')[1][:40] if ': ' in str(exc) else str(exc)[:40]}")
            return
        _assert_valid(raw, size)
        event("loaded")


@pytest.mark.parametrize("loader", list(LOADERS))
@fuzz("loader_bytes")
@given(data=st.binary(max_size=600), cut=st.integers(0, 600))
def test_loaders_refuse_damaged_files_in_one_sentence(loader, data, cut):
    """Random bytes, or a real archive cut short, where the dataset file should be."""
    with tempfile.TemporaryDirectory() as tmp:
        source = LOADERS[loader](Path(tmp), {"images": np.zeros((2, 4, 4), np.uint8)})
        path = min(p for p in Path(tmp).rglob("*") if p.is_file())  # the (first) data file
        blob = path.read_bytes()
        path.write_bytes(data if data else blob[: min(cut, len(blob) - 1)])
        with pytest.raises(DataError):
            source.load(4)


def test_loader_table_covers_every_file_loader():
    """A dataset registered later (a folder loader) must be added to LOADERS to be fuzzed."""
    file_loaders = {n for n in DATASETS.names() if DATASETS.get(n).needs_argument}
    assert file_loaders <= set(LOADERS), f"add a LOADERS entry for {file_loaders - set(LOADERS)}"



@pytest.mark.parametrize("loader", [n for n in LOADERS if n != "folder"])  # the .npz loaders
@pytest.mark.parametrize("case", ["object array", "bare .npy"])
def test_loaders_refuse_pickles_and_bare_arrays(tmp_path, loader, case):
    source = LOADERS[loader](tmp_path, {"images": np.zeros((2, 4, 4), np.uint8)})
    path = next(tmp_path.glob("*.npz"))
    with open(path, "wb") as f:
        if case == "object array":  # numpy pickles it; loading refuses pickles
            np.savez(f, **{("train_images" if loader == "medmnist" else "images"):
                           np.array([np.zeros((4, 4)), "x"], dtype=object)})
        else:
            np.save(f, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="cannot be read|holds a single array"):
        source.load(4)
