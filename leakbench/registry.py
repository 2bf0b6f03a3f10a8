"""One generic registry for defenses, attacks, datasets and feature extractors.

Built-ins register through ``pyproject.toml`` entry points exactly like third-party
plugins; code (and tests) may also register with the ``register`` decorator.
Entry points are loaded lazily, on the first lookup.
"""

from __future__ import annotations

import difflib
import re
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from leakbench.errors import UsageError

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


class Registry(Generic[T]):
    """Name -> plugin class for one kind of plugin (a ``leakbench.<kind>s`` entry-point group)."""

    def __init__(self, kind: str, group: str, base: type | None = None):
        self.kind = kind
        self.group = group
        self.base = base
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str | None = None, *, origin: str = "code"):
        """Class decorator: ``@DEFENSES.register("mydefense")``."""

        def decorate(obj: T) -> T:
            self.add(name or getattr(obj, "name", None), obj, origin=origin)
            return obj

        return decorate

    def add(self, name: str | None, obj: T, *, origin: str = "code") -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(
                f"Cannot register {self.kind} {name!r}: names are lower-case letters, digits, "
                "'_' and '-', starting with a letter (they become cache keys)."
            )
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise UsageError(
                f"Cannot register {self.kind} {name!r}: {obj!r} is not a subclass of "
                f"{self.base.__name__}."
            )
        if getattr(obj, "name", name) != name:
            raise UsageError(
                f"Cannot register {self.kind} {name!r}: its class says name={obj.name!r}."
            )
        if name in self._items and self._items[name] is not obj:
            raise UsageError(
                f"Cannot register {self.kind} {name!r} from {origin}: that name is already "
                f"registered from {self._origins[name]}."
            )
        self._items[name] = obj
        self._origins[name] = origin

    def remove(self, name: str) -> None:
        self._items.pop(name, None)
        self._origins.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                raise UsageError(
                    f"The {self.kind} plugin {ep.name!r} ({ep.value}) failed to import: {exc}"
                ) from exc
            self.add(ep.name, obj, origin=f"entry point {ep.value}")

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def origin(self, name: str) -> str:
        self._load_entry_points()
        return self._origins[name]

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items

    def get(self, name: str) -> T:
        """Look a plugin up; an unknown name lists the known ones and a 'did you mean'."""
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = self.names()
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(known) if known else "(none registered)"
            raise UsageError(f"Unknown {self.kind} {name!r}.{hint} Known: {listing}.") from None


def _base(path: str) -> Any:
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class _LazyBaseRegistry(Registry):
    """A registry whose base class is imported on first use (keeps start-up light)."""

    def __init__(self, kind: str, group: str, base_path: str):
        super().__init__(kind, group)
        self._base_path = base_path

    def add(self, name, obj, *, origin="code"):
        if self.base is None:
            self.base = _base(self._base_path)
        super().add(name, obj, origin=origin)


DEFENSES: Registry = _LazyBaseRegistry("defense", "leakbench.defenses", "leakbench.api:Defense")
ATTACKS: Registry = _LazyBaseRegistry("attack", "leakbench.attacks", "leakbench.api:Attack")
DATASETS: Registry = _LazyBaseRegistry("dataset", "leakbench.datasets", "leakbench.data.base:DatasetSource")
FEATURES: Registry = _LazyBaseRegistry("feature extractor", "leakbench.features", "leakbench.features.base:FeatureExtractor")

REGISTRIES: dict[str, Registry] = {
    "defenses": DEFENSES,
    "attacks": ATTACKS,
    "datasets": DATASETS,
    "features": FEATURES,
}
