"""Content-addressed artifact cache: atomic writes, verified reads, cross-process locks.

An entry is ``<root>/<kind>/<key>.pt`` (a ``torch.save`` payload of tensors and plain
values) beside ``<key>.json`` (the spec that produced it, versions and the payload's
SHA-256).  Both are written to a temporary file and ``os.replace``d, the JSON last,
so an entry without a matching JSON is never read.  A payload whose hash does not
match is rebuilt, never used.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from leakbench.errors import StorageError
from leakbench.paths import explain_os_error

CACHE_FORMAT = "1"


def default_cache_dir() -> Path:
    env = os.environ.get("LEAKBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "leakbench"


def content_key(kind: str, spec: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of everything that determines an artifact."""
    blob = json.dumps(
        {"kind": kind, "format": CACHE_FORMAT, "spec": spec}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _RecordingWriter:
    """A file wrapper that remembers the ``OSError`` a write raised.

    ``torch.save`` reports a failed write (a full disk) as a ``RuntimeError`` from its
    C++ zip writer ("unexpected pos ..."); the recorded ``OSError`` says what happened.
    Everything but ``write`` is the wrapped file's.
    """

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, b) -> int:
        try:
            return self._f.write(b)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(fileobj)`` to a temp file in the same folder, fsync, rename.

    On any failure or interruption the temp file is removed and ``path`` is as it was;
    a failed write raises the ``OSError`` behind it (e.g. ``ENOSPC``), whatever the
    serialiser turned it into.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    writer = None
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if writer is not None and writer.error is not None and not isinstance(exc, OSError):
            raise writer.error from exc
        raise


@dataclass
class CacheEvent:
    kind: str
    key: str
    label: str
    status: str  # "hit", "built", "rebuilt (corrupt)"
    seconds: float


class ArtifactCache:
    """Content-keyed store of expensive artifacts (denoisers, classifiers, samples, ...)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.events: list[CacheEvent] = []

    def paths(self, kind: str, key: str) -> tuple[Path, Path]:
        d = self.root / kind
        return d / f"{key}.pt", d / f"{key}.json"

    def load(self, kind: str, key: str) -> tuple[Any, str]:
        """Return (payload, status) with status 'hit', 'missing' or 'corrupt'."""
        import torch

        payload_path, meta_path = self.paths(kind, key)
        if not meta_path.exists() or not payload_path.exists():
            return None, "missing"
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("sha256") != _sha256_file(payload_path):
                return None, "corrupt"
            return torch.load(payload_path, map_location="cpu", weights_only=True), "hit"
        except Exception:
            return None, "corrupt"

    def save(self, kind: str, key: str, payload: Any, spec: dict[str, Any]) -> None:
        """Write the payload, then its JSON; a failure or interruption leaves no entry."""
        import torch

        payload_path, meta_path = self.paths(kind, key)
        atomic_write_bytes(payload_path, lambda f: torch.save(payload, f))
        try:
            meta = {
                "kind": kind,
                "key": key,
                "spec": spec,
                "sha256": _sha256_file(payload_path),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "format": CACHE_FORMAT,
            }
            text = json.dumps(meta, indent=2, sort_keys=True, default=str)
            atomic_write_bytes(meta_path, lambda f: f.write(text.encode()))
        except BaseException:
            payload_path.unlink(missing_ok=True)  # a payload without its JSON is never read
            raise

    def _storage_error(self, exc: OSError) -> StorageError:
        return StorageError(explain_os_error(exc, self.root, what="the artifact cache",
                                             option="--cache-dir (or LEAKBENCH_CACHE_DIR)"))

    def get_or_build(
        self,
        kind: str,
        spec: dict[str, Any],
        build: Callable[[], Any],
        *,
        label: str = "",
    ) -> Any:
        """Load the artifact for ``spec`` or build it once (other processes wait on a lock)."""
        key = content_key(kind, spec)
        t0 = time.perf_counter()
        payload, status = self.load(kind, key)
        if status == "hit":
            self.events.append(CacheEvent(kind, key, label, "hit", time.perf_counter() - t0))
            return payload
        payload_path, _ = self.paths(kind, key)
        lock = FileLock(str(payload_path) + ".lock")
        try:
            payload_path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as exc:
            raise self._storage_error(exc) from None
        try:
            payload, status = self.load(kind, key)  # another process may have built it
            if status == "hit":
                self.events.append(CacheEvent(kind, key, label, "hit", time.perf_counter() - t0))
                return payload
            payload = build()
            try:
                self.save(kind, key, payload, spec)
            except OSError as exc:
                raise self._storage_error(exc) from None
        finally:
            lock.release()
        done = "rebuilt (corrupt entry)" if status == "corrupt" else "built"
        self.events.append(CacheEvent(kind, key, label, done, time.perf_counter() - t0))
        return payload


def source_hash(cls: type) -> str:
    """SHA-256 of the framework's sources and of the module that defines ``cls``.

    Part of the keys of targets (hence samples) and findings: an edited defense or
    attack, or edited ``leakbench`` code they call, never reuses old results.  Trained
    models are keyed by their training inputs instead (retraining is expensive).
    """
    h = hashlib.sha256(_framework_hash().encode())
    try:
        h.update(inspect.getsource(inspect.getmodule(cls)).encode())
    except (OSError, TypeError):
        h.update(cls.__qualname__.encode())
    return h.hexdigest()[:16]


@functools.cache
def _framework_hash() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
