"""Leaderboard tables for the HTML report: records -> DataFrame -> rows of cells.

One row per (dataset, defense variant, profile); one column per attack (its headline
metric with CI, p-value and n) and one per cost the defense reports.  Everything is
read from the results store; nothing about a metric is hard-coded here except which
attacks the privacy-vs-quality chart prefers as its privacy axis.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

ROW = ["dataset", "defense", "profile"]
QUALITY_ATTACK = "fid"
PRIVACY_PREFERENCE = [("replication", "frac_above"), ("loss_mia", "auc")]
"""Privacy axis of the privacy-vs-quality chart: the first of these present in the store."""
COST_COLUMNS = ["train_seconds", "sampling_seconds_per_image", "draws_per_accepted",
                "guided_fraction", "epsilon"]
"""The defense figures the index shows as cost columns (training and sampling time,
resamples, guided steps, privacy budget); a cell page shows all of them."""


@dataclass
class Cell:
    """One attack's headline on one leaderboard row."""

    attack: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_metric: str | None = None
    n: int | None = None
    direction: str | None = None
    access: str | None = None
    alarm: str | None = None  # the finding's ``info["alarm"]``: the report shows the cell red


@dataclass
class Row:
    dataset: str
    defense: str
    profile: str
    cells: dict[str, Cell] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    pareto: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    reference: bool = False
    """The undefended reference of its dataset and profile: the row the others are compared with."""

    @property
    def slug(self) -> str:
        return slugify(f"{self.dataset}--{self.defense}--{self.profile}")


def slugify(text: str) -> str:
    """A file-name-safe, readable, unique-enough slug (specs may hold [,=:])."""
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return f"{safe[:80]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def headline_names(findings: list[dict[str, Any]]) -> dict[tuple[str, str, str, str, str], str]:
    """(run_id, dataset, defense, attack, profile) -> the finding's headline metric name."""
    return {(f["run_id"], f["dataset"], f["defense"], f["attack"], f["profile"]): f["headline"]
            for f in findings if f.get("headline")}


def alarms(findings: list[dict[str, Any]]) -> dict[tuple[str, str, str, str, str], str]:
    """(run_id, dataset, defense, attack, profile) -> the finding's ``info["alarm"]`` sentence.

    An attack raises an alarm when it refutes what the defense claims (``one_run``: an
    audited ε lower bound above the accountant's ε); the report must not average it away.
    """
    import json

    out = {}
    for f in findings:
        info = f.get("info")
        info = json.loads(info) if isinstance(info, str) and info else (info or {})
        if isinstance(info, dict) and info.get("alarm"):
            out[(f["run_id"], f["dataset"], f["defense"], f["attack"], f["profile"])] = \
                str(info["alarm"])
    return out


def _pick_headline(group: pd.DataFrame, headline: str | None) -> pd.Series:
    if headline is not None and (group["metric"] == headline).any():
        return group[group["metric"] == headline].iloc[0]
    directed = group[group["direction"].notna()]
    return (directed if len(directed) else group).iloc[0]


def _info(finding: dict[str, Any]) -> dict[str, Any]:
    try:
        info = json.loads(finding.get("info") or "{}")
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def reference_defenses(findings: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(dataset, profile) -> the reference defense the newest run there compared against.

    The harness stores it with every finding (``reference_defense``); a store written
    before it did falls back to the harness's default reference.
    """
    from leakbench.harness import REFERENCE_DEFENSE

    out: dict[tuple[str, str], str] = {}
    for f in sorted(findings, key=lambda f: f["time"]):
        key = (f["dataset"], f["profile"])
        out[key] = _info(f).get("reference_defense") or out.get(key) or REFERENCE_DEFENSE
    return out


def attack_access(attack: str, attack_params: str | dict | None = None,
                  info: dict[str, Any] | None = None) -> str | None:
    """The threat model an attack ran under: the finding's own ``threat_model`` (info), else
    ``leakbench.leaderboard.threat_model`` of the spec; None for an unloaded plugin."""
    if info and isinstance(info.get("threat_model"), str):
        return info["threat_model"]
    from leakbench.leaderboard import threat_model

    found = threat_model(attack)
    return None if found in ("", "unknown") else found


def leaderboard_rows(df: pd.DataFrame, findings: list[dict[str, Any]]) -> list[Row]:
    """Leaderboard rows from ``leakbench.leaderboard.leaderboard_frame`` output."""
    heads = headline_names(findings)
    infos = {(f["run_id"], f["dataset"], f["defense"], f["attack"], f["profile"]): _info(f)
             for f in findings}
    refs = reference_defenses(findings)
    alarm = alarms(findings)
    rows: dict[tuple[str, str, str], Row] = {}
    for (dataset, defense, profile, attack), group in df.groupby(ROW + ["attack"], sort=True):
        row = rows.setdefault((dataset, defense, profile), Row(dataset, defense, profile))
        row.reference = refs.get((dataset, profile)) == defense
        if "defense_params" in group and isinstance(group["defense_params"].iloc[0], str):
            row.params = json.loads(group["defense_params"].iloc[0])
        run_id = group["run_id"].iloc[0]
        if run_id not in row.run_ids:
            row.run_ids.append(run_id)
        if attack == "defense":
            for r in group.to_dict("records"):
                row.costs[r["metric"]] = float(r["value"])
            continue
        h = _pick_headline(group, heads.get((run_id, dataset, defense, attack, profile)))
        cell = Cell(attack, h["metric"], float(h["value"]), _num(h["ci_low"]), _num(h["ci_high"]),
                    _num(h["p_value"]), h["metric"] if _num(h["p_value"]) is not None else None,
                    None if _num(h["n"]) is None else int(h["n"]),
                    h["direction"] if isinstance(h["direction"], str) else None)
        cell.alarm = alarm.get((run_id, dataset, defense, attack, profile))
        cell.access = attack_access(attack, group["attack_params"].iloc[0]
                                    if "attack_params" in group else None,
                                    infos.get((run_id, dataset, defense, attack, profile)))
        if cell.p_value is None:  # a comparison p-value of the same attack (e.g. chi2_p)
            with_p = group[group["p_value"].notna()]
            if len(with_p):
                cell.p_value, cell.p_metric = float(with_p.iloc[0]["p_value"]), with_p.iloc[0]["metric"]
        row.cells[attack] = cell
    # Within a dataset and profile, the reference first.
    out = sorted(rows.values(), key=lambda r: (r.dataset, r.profile, not r.reference, r.defense))
    mark_pareto(out)
    return out


def privacy_axis(rows: list[Row]) -> tuple[str, str] | None:
    """(attack, metric) used as the privacy axis, or None when no row has one."""
    for attack, metric in PRIVACY_PREFERENCE:
        if any(r.cells.get(attack) and r.cells[attack].metric == metric for r in rows):
            return attack, metric
    for r in rows:
        for a, c in sorted(r.cells.items()):
            if a != QUALITY_ATTACK and c.direction == "lower":
                return a, c.metric
    return None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when both coordinates are better lower."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def chart_points(rows: list[Row]) -> dict[tuple[str, str], list[tuple[Row, float, float]]]:
    """(dataset, profile) -> [(row, fid, privacy)] for rows that have both numbers."""
    axis = privacy_axis(rows)
    groups: dict[tuple[str, str], list[tuple[Row, float, float]]] = {}
    if axis is None:
        return groups
    attack, metric = axis
    for r in rows:
        q, p = r.cells.get(QUALITY_ATTACK), r.cells.get(attack)
        if q is not None and p is not None and p.metric == metric:
            groups.setdefault((r.dataset, r.profile), []).append((r, q.value, p.value))
    return groups


def mark_pareto(rows: list[Row]) -> None:
    """Mark the safe-and-good rows: the Pareto front of (FID, privacy metric), per dataset."""
    for points in chart_points(rows).values():
        for i in pareto_front([(fid, priv) for _, fid, priv in points]):
            points[i][0].pareto = True


def column_order(rows: list[Row]) -> tuple[list[str], list[str]]:
    """Attack columns (privacy attacks first, the quality column last) and cost columns.

    Cost columns are the ``COST_COLUMNS`` some row reports, in that order.
    """
    attacks = sorted({a for r in rows for a in r.cells})
    if QUALITY_ATTACK in attacks:
        attacks = [a for a in attacks if a != QUALITY_ATTACK] + [QUALITY_ATTACK]
    present = {c for r in rows for c in r.costs}
    costs = [c for c in COST_COLUMNS if c in present]
    return attacks, costs


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return ""
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"
