"""Plugin specs: ``name`` or ``name[key=value,...]``, validated against the plugin's params."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from leakbench.errors import UsageError

_SPEC = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(?:\[(.*)\])?\s*$", re.S)


@dataclass(frozen=True)
class Spec:
    """A parsed spec: the plugin name and the raw ``key=value`` strings given."""

    name: str
    raw: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.raw:
            return self.name
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in self.raw)}]"


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs; commas inside brackets belong to the spec."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UsageError(f"Unbalanced ']' in {text!r}; write specs as name[key=value,...].")
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise UsageError(f"Unclosed '[' in {text!r}; write specs as name[key=value,...].")
    out.append("".join(cur).strip())
    return [s for s in out if s]


def parse_spec(text: str) -> Spec:
    """Parse one spec string into its name and raw parameters."""
    m = _SPEC.match(text)
    if not m:
        raise UsageError(f"Cannot read spec {text!r}; write it as name or name[key=value,...].")
    name, body = m.group(1), m.group(2)
    raw: list[tuple[str, str]] = []
    if body is not None and body.strip():
        for item in body.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise UsageError(
                    f"Cannot read {item.strip()!r} in spec {text!r}; parameters are key=value."
                )
            raw.append((key.strip(), value.strip()))
    keys = [k for k, _ in raw]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise UsageError(f"Spec {text!r} sets {sorted(dup)[0]!r} twice; give each parameter once.")
    return Spec(name, tuple(raw))


def _coerce(value: str, kind: Any, *, key: str, owner: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value.lower() in ("none", "null") and len(non_none) < len(args):
            return None
        kind = non_none[0]
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        if value not in [str(a) for a in args]:
            raise UsageError(
                f"{owner}: {key}={value!r} is not allowed; choose one of {', '.join(map(str, args))}."
            )
        return next(a for a in args if str(a) == value)
    try:
        if kind is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            try:
                return int(value)  # exact at any size
            except ValueError:
                f = float(value)  # "64.0", "1e3"; beyond 2**53 a float is no longer exact
                if not f.is_integer() or abs(f) > 2**53:
                    raise ValueError from None
                return int(f)
        if kind is float:
            f = float(value)
            if f != f:  # NaN: no hyper-parameter means anything with it
                raise UsageError(f"{owner}: {key}={value!r} is not a number; give a number.")
            return f
        if kind is str:
            return value
    except ValueError:
        raise UsageError(
            f"{owner}: {key}={value!r} is not a valid {kind.__name__}; give a {kind.__name__} value."
        ) from None
    raise UsageError(f"{owner}: parameter {key!r} of type {kind} cannot be set from a spec.")


def resolve_params(params_cls: type, spec: Spec, *, owner: str) -> Any:
    """Build the plugin's frozen params dataclass from a spec, with type checks.

    Unknown keys and bad values end in one sentence that lists the valid keys; the
    params class may validate further in ``__post_init__`` by raising ``ValueError``.
    """
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = typing.get_type_hints(params_cls)
    kwargs = {}
    for key, value in spec.raw:
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise UsageError(f"{owner} has no parameter {key!r}; valid parameters: {valid}.")
        kwargs[key] = _coerce(value, hints[key], key=key, owner=owner)
    try:
        return params_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{owner}: {exc}") from None


def params_dict(params: Any) -> dict:
    return dataclasses.asdict(params) if params is not None else {}


def canonical(name: str, params: Any) -> str:
    """Canonical spec string: only the parameters that differ from the defaults, sorted."""
    if params is None:
        return name
    default = type(params)()
    diff = {
        f.name: getattr(params, f.name)
        for f in dataclasses.fields(params)
        if getattr(params, f.name) != getattr(default, f.name)
    }
    if not diff:
        return name
    body = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(diff.items()))
    return f"{name}[{body}]"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        r = repr(v)
        return r[:-2] if r.endswith(".0") else r
    return str(v)


def stable_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
