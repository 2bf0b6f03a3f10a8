"""Built-in dataset sources: scikit-learn digits, official MedMNIST files, any .npz, image folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from leakbench.data.base import (
    DatasetSource,
    RawData,
    file_digest,
    file_sha256,
    resize,
    validate_images,
    validate_labels,
)
from leakbench.errors import DataError, DataWarning, StorageError
from leakbench.paths import readable_file

MEDMNIST_SIZES = (28, 64, 128, 224)


class Digits(DatasetSource):
    """scikit-learn's bundled 1,797 handwritten digits (8×8, 17 grey levels), resized."""

    name = "digits"
    description = "scikit-learn's 1,797 bundled 8×8 handwritten digits, resized to the profile size"

    def load(self, image_size: int) -> RawData:
        from sklearn.datasets import load_digits

        d = load_digits()
        images = validate_images((d.images / 16.0).astype(np.float32), "digits")
        return RawData(resize(images, image_size), d.target.astype(np.int64),
                       {"source": "sklearn.datasets.load_digits", "native_size": 8})

    def fingerprint(self, image_size: int) -> dict[str, Any]:
        import sklearn

        return {"dataset": "digits", "sklearn": sklearn.__version__, "image_size": image_size}


_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _open_npz(path: Path, origin: str):
    try:
        z = np.load(path, allow_pickle=False)
    except _UNREADABLE as exc:
        raise DataError(f"{origin}: {path} is not a readable .npz file ({exc}).") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array, not an archive
        raise DataError(f"{origin}: {path} holds a single array, not an .npz archive; save it "
                        "with numpy.savez(path, images=...).")
    return z


def _read_array(z, key: str, origin: str) -> np.ndarray:
    """One array of an open .npz; a damaged member or an object array is one sentence."""
    try:
        return z[key]
    except _UNREADABLE as exc:
        raise DataError(f"{origin}: the array {key!r} cannot be read ({exc}); save it again "
                        "with numpy.savez (numbers only, no object arrays).") from None


class PathSource(DatasetSource):
    """A dataset read from a path given as its argument (``npz:``, ``folder:``)."""

    needs_argument = True

    @property
    def path(self) -> Path:
        """The argument as a path; a relative one not found here is taken under the data root."""
        p = Path(self.argument).expanduser()
        if not p.is_absolute() and self.data_root is not None and not p.exists():
            p = self.data_root / p
        return p


class Npz(PathSource):
    """Any ``.npz`` with ``images`` (N×H×W[×C], uint8 or float in [0, 1]) and optional ``labels``."""

    name = "npz"
    needs_argument = True
    description = "any .npz with 'images' (N×H×W[×C], uint8 or float in [0,1]) and optional 'labels'"

    @classmethod
    def usage(cls) -> str:
        return "npz:<path to file.npz>"

    def _checked_path(self) -> Path:
        path = self.path
        if not path.exists():
            raise DataError(f"Dataset file {path} does not exist; check the path after 'npz:'.")
        if path.is_dir():
            raise DataError(f"Dataset file {path} is a folder; give npz: the path of a .npz file.")
        try:
            readable_file(path, what="the dataset file")
        except StorageError as exc:
            raise DataError(str(exc)) from None
        return path

    def load(self, image_size: int) -> RawData:
        path = self._checked_path()
        origin = f"npz:{path}"
        with _open_npz(path, origin) as z:
            if "images" not in z:
                raise DataError(
                    f"{origin} has no 'images' array (it has: {', '.join(z.keys()) or 'nothing'}); "
                    "save the images under the key 'images'."
                )
            images = validate_images(_read_array(z, "images", origin), origin)
            labels = None
            if "labels" in z:
                labels = validate_labels(_read_array(z, "labels", origin), len(images), origin)
        return RawData(resize(images, image_size), labels, {"source": str(path)})

    def fingerprint(self, image_size: int) -> dict[str, Any]:
        path = self._checked_path()
        return {"dataset": "npz", "sha256": file_sha256(path), "image_size": image_size}


def _import_medmnist():
    """The medmnist package, without the ``~/.medmnist`` folder its import leaves behind.

    medmnist 3.x creates its download folder when imported (``medmnist.info``), and sets
    ``DEFAULT_ROOT`` to None where it cannot.  leakbench only reads ``medmnist.INFO`` and
    never downloads, so a folder this import made (still empty) is removed again.
    """
    home_root = Path("~/.medmnist").expanduser()
    existed = home_root.exists()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Failed to setup default root." (read-only home)
            import medmnist
    except ImportError:
        raise DataError(
            "The medmnist package is not installed; run `pip install medmnist` "
            "(it supplies the dataset metadata; the images come from your files)."
        ) from None
    if not existed:
        with contextlib.suppress(OSError):  # not there, or no longer empty: leave it
            home_root.rmdir()
    return medmnist


MEDMNIST_SPLITS = ("train", "val", "test")


class MedMNIST(DatasetSource):
    """Official MedMNIST ``.npz`` files, read locally (never downloaded).

    Looked up in ``--data-root``, ``$LEAKBENCH_DATA_ROOT``, then medmnist's default
    folder.  Metadata (channels, split sizes, task, URL, MD5) comes from ``medmnist.INFO``;
    the file's MD5 is checked against it (a mismatch warns: a user's own file is allowed)
    and recorded in the split manifest.  The pool is the official train split; with the
    dataset param ``split=official`` the members are the official train split and the
    holdout its val and test splits (:meth:`load_official`).  Multi-label flags
    (ChestMNIST) keep every label column.
    """

    name = "medmnist"
    needs_argument = True
    description = "official MedMNIST .npz files (2D flags), read from --data-root; never downloaded"

    @classmethod
    def usage(cls) -> str:
        return "medmnist:<flag>, e.g. medmnist:pathmnist"

    def _info(self) -> dict[str, Any]:
        medmnist = _import_medmnist()
        flag = self.argument
        if flag not in medmnist.INFO:
            import difflib

            two_d = [k for k in medmnist.INFO if not k.endswith("3d")]
            close = difflib.get_close_matches(flag, two_d, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DataError(f"Unknown MedMNIST flag {flag!r}.{hint} Known: {', '.join(two_d)}.")
        if flag.endswith("3d"):
            raise DataError(f"MedMNIST flag {flag!r} is a 3D volume set; choose a 2D flag.")
        return medmnist.INFO[flag]

    def _roots(self) -> list[Path]:
        roots = []
        if self.data_root is not None:
            roots.append(self.data_root)
        env = os.environ.get("LEAKBENCH_DATA_ROOT")
        if env:
            roots.append(Path(env).expanduser())
        default = getattr(_import_medmnist().info, "DEFAULT_ROOT", None)
        if default is not None:  # None where medmnist could not make its folder
            roots.append(Path(default).expanduser())
        return roots

    @staticmethod
    def native_size(image_size: int) -> int:
        """The smallest official size at least ``image_size`` (the images are resized down)."""
        for s in MEDMNIST_SIZES:
            if s >= image_size:
                return s
        return MEDMNIST_SIZES[-1]

    def _file(self, image_size: int) -> tuple[Path, dict[str, Any]]:
        info = self._info()
        size = self.native_size(image_size)
        suffix = "" if size == 28 else f"_{size}"
        fname = f"{self.argument}{suffix}.npz"
        meta = {
            "flag": self.argument,
            "native_size": size,
            "url": info.get(f"url{suffix}", info.get("url")),
            "md5": info.get(f"MD5{suffix}", info.get("MD5")),
            "n_channels": info["n_channels"],
            "n_samples": info["n_samples"],
            "task": info.get("task"),
        }
        roots = self._roots()
        for root in roots:
            if (root / fname).exists():
                return root / fname, meta
        where = roots[0] if roots else "a folder"
        raise DataError(
            f"MedMNIST file {fname} not found (looked in "
            f"{', '.join(str(r) for r in roots) or 'no folder: give --data-root'}); "
            f"download it from {meta['url']} (MD5 {meta['md5']}) and put it in {where} "
            "or pass --data-root."
        )

    def _md5(self, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """The file's MD5 beside the official one (``medmnist.INFO``), for the manifest."""
        md5 = file_digest(path, "md5")
        return {"md5": md5, "md5_official": meta["md5"], "md5_matches": md5 == meta["md5"]}

    def _read(self, image_size: int, splits: tuple[str, ...]) -> RawData:
        """The images and labels of ``splits`` of the official file, concatenated in order."""
        path, meta = self._file(image_size)
        origin = f"medmnist:{self.argument} ({path})"
        multi_label = meta["task"] == "multi-label, binary-class"
        images, labels, assigned, start = [], [], {}, 0
        with _open_npz(path, origin) as z:
            for split in splits:
                key = f"{split}_images"
                if key not in z:
                    raise DataError(
                        f"{origin} has no {key!r} (it has: {', '.join(z.keys()) or 'nothing'}); "
                        "expected the official MedMNIST layout (train_/val_/test_ images and "
                        "labels).")
                x = validate_images(_read_array(z, key, origin), f"{origin} {key}")
                if x.shape[-1] != meta["n_channels"]:
                    raise DataError(
                        f"{origin}: images have {x.shape[-1]} channel(s) but {self.argument} has "
                        f"{meta['n_channels']}; is this the right file?")
                if images and x.shape[1:] != images[0].shape[1:]:
                    raise DataError(f"{origin}: {key} are {x.shape[1]}×{x.shape[2]} but "
                                    f"{splits[0]}_images are {images[0].shape[1]}×"
                                    f"{images[0].shape[2]}; is this the right file?")
                y = None
                if f"{split}_labels" in z:
                    y = validate_labels(_read_array(z, f"{split}_labels", origin), len(x),
                                        f"{origin} {split}_labels", multi_label=multi_label)
                images.append(x)
                labels.append(y)
                assigned[split] = np.arange(start, start + len(x))
                start += len(x)
        if any(y is None for y in labels) or len({y.shape[1:] for y in labels}) > 1:
            labels = [None]
        md5 = self._md5(path, meta)
        if not md5["md5_matches"]:
            # Attributed to the data file (line 0: no source line is printed beside it), so
            # pytest's warning summary names the file at issue, not this line of the loader.
            warnings.warn_explicit(DataWarning(
                f"{origin}: MD5 {md5['md5']} is not the official {md5['md5_official']} "
                f"({meta['url']}); going on with this file (the manifest records both)."),
                DataWarning, filename=str(path), lineno=0)
        sizes = {s: len(assigned[s]) for s in splits}
        official = {s: meta["n_samples"].get(s) for s in splits}
        info = {**meta, **md5, "path": str(path), "splits": sizes,
                "official_split_sizes": official, "matches_official_size": sizes == official}
        stacked = images[0] if len(images) == 1 else np.concatenate(images)
        y_all = None if labels[0] is None else np.concatenate(labels)
        return RawData(resize(stacked, image_size), y_all, info,
                       assigned=assigned if len(splits) > 1 else None)

    def load(self, image_size: int) -> RawData:
        return self._read(image_size, ("train",))

    def load_official(self, image_size: int) -> RawData:
        return self._read(image_size, MEDMNIST_SPLITS)

    def fingerprint(self, image_size: int) -> dict[str, Any]:
        path, meta = self._file(image_size)
        return {"dataset": f"medmnist:{self.argument}", "sha256": file_sha256(path),
                **self._md5(path, meta), "native_size": meta["native_size"],
                "image_size": image_size}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every PNG, with its fixed CRC
FOLDER_SPLITS = ("members", "holdout", "public")


def _read_image_file(path: Path, shown: str) -> np.ndarray:
    """One PNG or JPEG as float32 (H, W, C) in [0, 1]: grey stays 1 channel, the rest RGB."""
    from PIL import Image

    try:
        with Image.open(path) as img:  # verify() checks every chunk's CRC up to IEND
            img.verify()
        if img.format == "PNG" and _PNG_END not in path.read_bytes()[-4096:]:
            raise EOFError("the file ends before its IEND chunk: it was cut short")
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("1", "L", "LA"):
                arr = np.asarray(img.convert("L"), dtype=np.float32)[..., None] / 255.0
            elif mode.startswith("I"):  # 16-bit (or 32-bit integer) grey, as scans are stored
                arr = np.asarray(img, dtype=np.float64)[..., None]
                arr = (arr / (65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0))
                arr = arr.clip(0, 1).astype(np.float32)
            else:
                arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    # A damaged file can make a decoder raise almost anything; each is the same one sentence.
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"Image file {shown} cannot be read ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
                        "replace or remove it.") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"Image file {shown} has no pixels; replace or remove it.")
    if arr.shape[0] != arr.shape[1]:
        raise DataError(f"Image file {shown} is {arr.shape[1]}×{arr.shape[0]} pixels; every image "
                        "must be square (crop or pad it).")
    return arr


class Folder(PathSource):
    """A folder of PNG/JPEG images, grey or RGB, resized to the profile's size.

    Either one folder of images (searched recursively, split by seed like every dataset),
    or explicit subfolders ``members/``, ``holdout/`` and optionally ``public/`` for a model
    whose training set is known: then the split is exactly those files.  Images are
    named by their path relative to the folder (the manifest lists them).  Files with other
    suffixes and hidden files are ignored.
    """

    name = "folder"
    needs_argument = True
    description = ("a folder of PNG/JPEG images (grey or RGB), split by seed, or with explicit "
                   "members/, holdout/ and optional public/ subfolders")

    @classmethod
    def usage(cls) -> str:
        return "folder:<path to a folder of PNG/JPEG images>"

    def _checked_path(self) -> Path:
        from leakbench.paths import readable_dir

        path = self.path
        if path.is_file():
            raise DataError(f"Dataset folder {path} is a file; give folder: the path of a folder "
                            "of images (for an .npz file write npz:).")
        try:
            return readable_dir(path, what="the dataset folder")
        except StorageError as exc:
            raise DataError(str(exc)) from None

    def explicit(self) -> bool:
        """Whether the folder holds ``members/`` (and so ``holdout/``): the split is given."""
        return (self._checked_path() / "members").is_dir()

    def files(self) -> dict[str, list[Path]]:
        """Split name (or ``"all"``) -> the image files, sorted by relative path."""
        root = self._checked_path()

        def images_under(folder: Path) -> list[Path]:
            found = []
            for p in folder.rglob("*"):
                rel = p.relative_to(root).parts
                if p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in rel):
                    found.append(p)
            return sorted(found, key=lambda p: p.relative_to(root).as_posix())

        if not (root / "members").is_dir():
            if (root / "holdout").is_dir():
                raise DataError(f"Dataset folder {root} has holdout/ but no members/; add the "
                                "training images as members/, or put all images in one folder.")
            found = {"all": images_under(root)}
        else:
            if not (root / "holdout").is_dir():
                raise DataError(f"Dataset folder {root} has members/ but no holdout/; add images "
                                "the model never saw as holdout/ (they set every threshold).")
            found = {s: images_under(root / s) for s in FOLDER_SPLITS if (root / s).is_dir()}
        for split, paths in found.items():
            if not paths:
                where = root if split == "all" else root / split
                raise DataError(f"Dataset folder {where} holds no PNG or JPEG images "
                                f"({', '.join(IMAGE_SUFFIXES)}); add some.")
        return found

    def load(self, image_size: int) -> RawData:
        root = self._checked_path()
        found = self.files()
        paths = [p for split in found.values() for p in split]
        names = [p.relative_to(root).as_posix() for p in paths]
        images, first = [], None
        for path, name in zip(paths, names):
            arr = _read_image_file(path, f"{root}/{name}")
            if first is None:
                first = (name, arr.shape)
            elif arr.shape != first[1]:
                kind = lambda s: f"{s[0]}×{s[1]} {'grey' if s[2] == 1 else 'RGB'}"  # noqa: E731
                raise DataError(f"Image file {root}/{name} is {kind(arr.shape)} but {first[0]} is "
                                f"{kind(first[1])}; give all images one size and one colour mode.")
            images.append(arr)
        stacked = validate_images(np.stack(images), f"folder:{root}")
        assigned = None
        if "all" not in found:
            assigned, start = {}, 0
            for split in FOLDER_SPLITS:
                count = len(found.get(split, []))
                assigned[split] = np.arange(start, start + count)
                start += count
        return RawData(resize(stacked, image_size), None,
                       {"source": str(root), "native_size": int(stacked.shape[1]),
                        "explicit_split": assigned is not None},
                       assigned=assigned, names=names)

    def fingerprint(self, image_size: int) -> dict[str, Any]:
        root = self._checked_path()
        h = hashlib.sha256()
        for split, paths in self.files().items():
            for p in paths:
                h.update(f"{split}\0{p.relative_to(root).as_posix()}\0{file_sha256(p)}\n".encode())
        return {"dataset": "folder", "sha256": h.hexdigest(), "image_size": image_size}


def parse_dataset_spec(spec: str):
    """``name[:argument][key=value,...]`` -> (name, argument, SplitOptions)."""
    from leakbench.data.splits import SplitOptions
    from leakbench.specs import Spec, parse_spec, resolve_params

    text = spec.strip()
    raw: tuple = ()
    if text.endswith("]") and "[" in text:
        cut = text.rindex("[")
        raw = parse_spec("x" + text[cut:]).raw
        text = text[:cut]
    name, _, arg = text.partition(":")
    options = resolve_params(SplitOptions, Spec(name, raw), owner=f"dataset {name.strip()!r}")
    return name.strip(), arg.strip() or None, options


def canonical_dataset(name: str, arg: str | None, options) -> str:
    """The canonical dataset spec: ``name[:argument]`` plus the non-default params, sorted."""
    from leakbench.specs import canonical

    return canonical(name + (f":{arg}" if arg else ""), options)


def open_dataset(spec: str, *, data_root: str | os.PathLike | None = None) -> DatasetSource:
    """``digits``, ``medmnist:pathmnist`` or ``npz:/path/file.npz`` -> a dataset source."""
    from leakbench.registry import DATASETS

    name, arg, _ = parse_dataset_spec(spec)
    return DATASETS.get(name)(arg, data_root=data_root)
