"""File-system surfaces: check a folder or file up front, and say what a failed write means.

Every place the suite reads or writes (the artifact cache, the results folder, the
report folder, the data root, a user's model) goes through these helpers, so each
failure mode ends in one sentence that names the path and says what to do:

    writable_dir(path, what="the results folder", option="--results")
    readable_dir(path, what="the model folder", option="--model")
    readable_file(path, what="the dataset file", option="npz:<path>")
    with writing_to(folder, what="the artifact cache", option="--cache-dir"): ...

The checks try the operation itself (create the folder, create and remove a probe
file, list the folder, read a byte) instead of trusting ``os.access``: the suite often
runs as root, where permission bits say nothing, and on file systems (``/proc``,
read-only mounts, full quotas) whose answer only the operation gives.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from leakbench.errors import StorageError

FULL = (errno.ENOSPC, errno.EDQUOT)


def _advice(option: str | None, kind: str = "folder", where: str = "another") -> str:
    return f"point {option} at {where} {kind}" if option else f"choose {where} {kind}"


def _first_file_ancestor(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists as something other than a folder."""
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


def explain_os_error(exc: OSError, path: str | os.PathLike, *, what: str,
                     option: str | None = None, kind: str = "folder") -> str:
    """One sentence for an ``OSError`` met while using ``path`` (``what`` names its role)."""
    path = Path(path)
    code = exc.errno
    advice = _advice(option, kind)
    if code in FULL:
        full = "your disk quota is exceeded" if code == errno.EDQUOT else "the disk is full"
        return (f"No space left for {what} {path} ({full}); free space there or "
                f"{_advice(option, 'folder', 'a')} on another disk — nothing already stored "
                "was changed.")
    if code == errno.EFBIG:
        return (f"A file in {what} {path} would exceed the file-size limit (`ulimit -f`); raise "
                f"the limit or {advice} — nothing already stored was changed.")
    if code == errno.EROFS:
        return (f"{what.capitalize()} {path} is on a read-only file system; "
                f"{_advice(option, kind, 'a')} that you can write to.")
    if code in (errno.EACCES, errno.EPERM):
        return (f"No permission to use {what} {path}; fix its permissions or "
                f"{_advice(option, kind, 'a')} that you can use.")
    if code == errno.ENOTDIR:
        blocker = _first_file_ancestor(path)
        if blocker is not None and blocker != path:
            return f"{what.capitalize()} {path} lies under {blocker}, which is a file; {advice}."
        return f"{what.capitalize()} {path} is a file, not a folder; {advice}."
    if code == errno.EISDIR:
        return f"{what.capitalize()} {path} is a folder, not a file; give the path of a file."
    if code == errno.ENOENT:
        return (f"Cannot create {what} {path}: its parent folder does not exist or cannot hold "
                f"new folders ({exc.strerror}); {advice}.")
    if code == errno.EEXIST:
        return f"{what.capitalize()} {path} exists but is not a folder; {advice}."
    if code == errno.ENAMETOOLONG:
        return f"The path of {what} {path} is too long for the file system; {advice}."
    reason = exc.strerror or type(exc).__name__
    return f"Cannot use {what} {path} ({reason}); {advice}."


def writable_dir(path: str | os.PathLike, *, what: str, option: str | None = None,
                 create: bool = True) -> Path:
    """Check that ``path`` is (or can be created as) a folder this process can write in.

    Creates the folder when ``create`` is true, then creates and removes a probe file.
    Raises :class:`StorageError` with one sentence per failure mode.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise StorageError(f"{what.capitalize()} {path} is a file, not a folder; "
                           f"{_advice(option)} (it is created if missing).")
    if not path.exists() and not create:
        raise StorageError(f"{what.capitalize()} {path} does not exist; {_advice(option)}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".leakbench-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(explain_os_error(exc, path, what=what, option=option)) from None
    return path


def readable_dir(path: str | os.PathLike, *, what: str, option: str | None = None) -> Path:
    """Check that ``path`` is an existing folder whose entries this process can list."""
    path = Path(path).expanduser()
    if not path.exists():
        raise StorageError(f"{what.capitalize()} {path} does not exist; check the path "
                           f"{f'given to {option}' if option else ''}".rstrip() + ".")
    if not path.is_dir():
        raise StorageError(f"{what.capitalize()} {path} is a file, not a folder; "
                           f"{_advice(option)}.")
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as exc:
        raise StorageError(explain_os_error(exc, path, what=what, option=option)) from None
    return path


def readable_file(path: str | os.PathLike, *, what: str, option: str | None = None) -> Path:
    """Check that ``path`` is an existing file this process can read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise StorageError(f"{what.capitalize()} {path} does not exist; check the path "
                           f"{f'given to {option}' if option else ''}".rstrip() + ".")
    if path.is_dir():
        raise StorageError(f"{what.capitalize()} {path} is a folder, not a file; "
                           f"{_advice(option, 'file')}.")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise StorageError(explain_os_error(exc, path, what=what, option=option,
                                            kind="file")) from None
    return path


def is_full(folder: str | os.PathLike) -> bool:
    """Whether the file system holding ``folder`` has (almost) no space left for us."""
    try:
        return shutil.disk_usage(folder).free < 64 * 1024
    except OSError:
        return False


@contextmanager
def writing_to(folder: str | os.PathLike, *, what: str,
               option: str | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing into ``folder`` into one sentence."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(explain_os_error(exc, folder, what=what, option=option)) from None
