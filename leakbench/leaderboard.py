"""Leaderboard: the newest run of each (dataset, defense, attack, profile) cell, as a DataFrame."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

CELL = ["dataset", "defense", "attack", "profile"]
JSON_FIELDS = ["dataset", "defense", "attack", "threat_model", "metric", "value", "ci_low", "ci_high", "p_value",
               "n", "direction", "profile", "seed", "version", "git_rev"]


def is_timing(metric: str) -> bool:
    """Wall-clock figures (``*_seconds``, ``*seconds_per_image``) vary between runs by nature."""
    return "seconds" in metric


def threat_model(attack_spec: str) -> str:
    """The threat model an attack spec runs under (``Attack.threat_model``): ``black-box``,
    ``white-box/effective`` or ``white-box/released``; ``""`` for the defense's own figures and
    ``unknown`` for an attack this installation does not have."""
    if attack_spec == "defense":
        return ""
    from leakbench.errors import UsageError
    from leakbench.registry import ATTACKS
    from leakbench.specs import parse_spec, resolve_params

    try:
        spec = parse_spec(attack_spec)
        cls = ATTACKS.get(spec.name)
        return cls(resolve_params(cls.Params, spec, owner=spec.name)).threat_model()
    except UsageError:
        return "unknown"


def leaderboard_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Keep, for every cell, only the rows of the run that wrote to it last; name its threat model."""
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=JSON_FIELDS)
    threats = {a: threat_model(a) for a in df["attack"].unique()}
    df["threat_model"] = df["attack"].map(threats)
    last = df.groupby(CELL + ["run_id"], sort=False)["time"].max().reset_index()
    newest = last.sort_values("time").groupby(CELL, sort=False).tail(1)[CELL + ["run_id"]]
    df = df.merge(newest, on=CELL + ["run_id"])
    return df.sort_values(["dataset", "defense", "attack", "metric"], kind="stable").reset_index(drop=True)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_table(df: pd.DataFrame, references: set[tuple[str, str]] | None = None) -> str:
    """A plain-text table: value [CI] p n, with an arrow for the safer direction.

    ``references``: (dataset, defense) pairs to mark as the reference of their dataset.
    """
    if df.empty:
        return "(no results)"
    lines = []
    header = ["dataset", "defense", "attack", "threat", "metric", "value", "95% CI", "p", "n"]
    body = []
    for r in df.to_dict("records"):
        arrow = {"lower": "↓", "higher": "↑"}.get(r.get("direction") or "", " ")
        ci = ""
        if r.get("ci_low") is not None and not pd.isna(r.get("ci_low")):
            ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        defense = r["defense"]
        if references and (r["dataset"], defense) in references:
            defense += " (reference)"
        body.append([r["dataset"], defense, r["attack"], r.get("threat_model") or "",
                     f"{arrow}{r['metric']}",
                     _fmt(r["value"]), ci, _fmt(r.get("p_value")),
                     "" if pd.isna(r.get("n")) else str(int(r["n"]))])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in body:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    lines.append("↓ lower is safer, ↑ higher is safer")
    return "\n".join(lines)


def to_records(df: pd.DataFrame, *, timings: bool = True) -> list[dict[str, Any]]:
    out = []
    for r in df.to_dict("records"):
        if not timings and is_timing(r["metric"]):
            continue
        rec = {}
        for k in JSON_FIELDS:
            v = r.get(k)
            if isinstance(v, float) and math.isnan(v):
                v = None
            if k in ("n", "seed") and v is not None:
                v = int(v)
            rec[k] = v
        out.append(rec)
    return out


def render_json(df: pd.DataFrame, *, timings: bool = True) -> str:
    return json.dumps(to_records(df, timings=timings), indent=2, sort_keys=True, ensure_ascii=False)


def render_csv(df: pd.DataFrame, *, timings: bool = True) -> str:
    return pd.DataFrame(to_records(df, timings=timings), columns=JSON_FIELDS).to_csv(index=False)
