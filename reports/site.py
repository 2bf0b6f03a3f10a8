"""The static HTML report: a pure function of one or more results stores.

    records (ResultsStore) -> DataFrame (leaderboard_frame) -> rows -> jinja2 templates

Same stores ⇒ the same bytes in every file, except the build time in the footer of
each page (a ``<span id="build-time">``).  No CSS or JavaScript comes from the network.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leakbench.leaderboard import leaderboard_frame, threat_model
from leakbench.results import ResultsStore
from reports import figures as F
from reports.tables import (
    QUALITY_ATTACK,
    Row,
    chart_points,
    column_order,
    fmt,
    leaderboard_rows,
    pareto_front,
    privacy_axis,
)

TEMPLATES = Path(__file__).parent / "templates"
PAPER_REFERENCE = Path(__file__).parent / "paper_reference.json"


@dataclass
class StoredFinding:
    store: ResultsStore
    record: dict[str, Any]

    def arrays(self):
        path = self.record.get("arrays_path")
        return self.store.load_arrays(path) if path else {}


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html"]),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["sortkey"] = lambda v: "" if v is None else repr(float(v))
    return env


def load_paper_reference() -> list[dict[str, Any]]:
    return json.loads(PAPER_REFERENCE.read_text())["entries"]


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _machine(text: str | None) -> str:
    try:
        m = json.loads(text or "{}")
    except json.JSONDecodeError:
        return text or ""
    parts = [m.get("platform"), f"{m.get('cpus')} CPUs" if m.get("cpus") else None,
             f"python {m['python']}" if m.get("python") else None,
             f"torch {m['torch']}" if m.get("torch") else None, m.get("cuda")]
    return ", ".join(p for p in parts if p)


def build_site(stores: ResultsStore | list[ResultsStore], out: str | os.PathLike, *,
               build_time: str | None = None) -> Path:
    """Write ``index.html``, one page per leaderboard row and their figures under ``out``."""
    stores = [stores] if isinstance(stores, ResultsStore) else list(stores)
    out = Path(out)
    build_time = build_time or time.strftime("%Y-%m-%d %H:%M:%S")

    # Records -> DataFrame (newest run per cell) -> leaderboard rows.
    records = [r for s in stores for r in s.rows()]
    df = leaderboard_frame(records)
    stored = [StoredFinding(s, f) for s in stores for f in s.findings()]
    rows = leaderboard_rows(df, [f.record for f in stored]) if len(df) else []
    attacks, costs = column_order(rows)
    runs = sorted({r["run_id"]: r for s in stores for r in s.runs()}.values(),
                  key=lambda r: (r["started"], r["run_id"]))
    for r in runs:
        r["machine_text"] = _machine(r.get("machine"))
    directions = {a: next((r.cells[a].direction for r in rows if a in r.cells), None)
                  for a in attacks}
    threats = {a: threat_model(a) for a in attacks}
    env = _environment()

    # The privacy-vs-quality charts, one per (dataset, profile), with the Pareto front.
    charts = []
    axis = privacy_axis(rows)
    for (dataset, profile), points in sorted(chart_points(rows).items()):
        labelled = [(r.defense, fid, priv) for r, fid, priv in points]
        front = pareto_front([(fid, priv) for _, fid, priv in labelled])
        name = f"figures/privacy_quality-{dataset}-{profile}.png".replace(":", "_")
        _write(out / name, F.privacy_quality_figure(labelled, front, f"{axis[0]} {axis[1]}"))
        charts.append({"dataset": dataset, "profile": profile, "src": name,
                       "axis": f"{axis[0]} {axis[1]}"})

    # One page per leaderboard row: every attack's metrics and figures.
    for row in rows:
        sections = []
        for attack in sorted({*row.cells, "defense"} if row.costs else set(row.cells)):
            sections.append(_attack_section(row, attack, df, stored, out))
        html = env.get_template("cell.html").render(row=row, sections=sections, runs=runs,
                                                    threats={a: threat_model(a) for a in row.cells},
                                                    build_time=build_time)
        _write(out / "cells" / f"{row.slug}.html", html)

    paper = _paper_rows(rows, df) if len(df) else []
    html = env.get_template("index.html").render(
        rows=rows, attacks=attacks, costs=costs, directions=directions, threats=threats,
        runs=runs, charts=charts, paper=paper, build_time=build_time, quality_attack=QUALITY_ATTACK,
        n_stores=len(stores))
    _write(out / "index.html", html)
    return out / "index.html"


def _newest_finding(stored: list[StoredFinding], run_ids: list[str], row: Row,
                    attack: str) -> StoredFinding | None:
    match = [f for f in stored if f.record["run_id"] in run_ids and f.record["dataset"] == row.dataset
             and f.record["defense"] == row.defense and f.record["attack"] == attack
             and f.record["profile"] == row.profile]
    return max(match, key=lambda f: f.record["time"]) if match else None


def _attack_section(row: Row, attack: str, df, stored: list[StoredFinding], out: Path) -> dict:
    sel = df[(df["dataset"] == row.dataset) & (df["defense"] == row.defense)
             & (df["profile"] == row.profile) & (df["attack"] == attack)]
    metrics = []
    for r in sel.to_dict("records"):
        metrics.append({k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()})
    run_ids = sorted(set(sel["run_id"]))
    finding = _newest_finding(stored, run_ids, row, attack)
    figures = []
    info: dict[str, Any] = {}
    if finding is not None:
        info = json.loads(finding.record.get("info") or "{}")
        extra = {m["metric"]: m["value"] for m in metrics}
        if "threshold" in extra and "threshold" not in info:
            info["threshold"] = float(extra["threshold"])
        for fig in F.finding_figures(finding.arrays(), info):
            name = f"figures/{row.slug}/{attack}-{fig.name}.png"
            _write(out / name, fig.png)
            figures.append({"src": "../" + name, "title": fig.title, "caption": fig.caption})
    info_text = json.dumps(info, indent=1, sort_keys=True, default=str) if info else ""
    return {"attack": attack, "metrics": metrics, "figures": figures, "run_ids": run_ids,
            "headline": row.cells[attack].metric if attack in row.cells else None,
            "info": info_text if len(info_text) < 4000 else info_text[:4000] + " …"}


def _paper_rows(rows: list[Row], df) -> list[dict[str, Any]]:
    """Paper-reported numbers beside the measured number of the same defense and metric."""
    out = []
    for entry in load_paper_reference():
        measured = []
        for r in rows:
            if r.defense.split("[")[0] != entry["defense"]:
                continue
            sel = df[(df["dataset"] == r.dataset) & (df["defense"] == r.defense)
                     & (df["profile"] == r.profile) & (df["attack"] == entry["attack"])
                     & (df["metric"] == entry["metric"])]
            for m in sel.to_dict("records"):
                measured.append({"dataset": r.dataset, "profile": r.profile, "defense": r.defense,
                                 "value": float(m["value"]),
                                 "n": None if m["n"] != m["n"] or m["n"] is None else int(m["n"]),
                                 "slug": r.slug})
        out.append({**entry, "measured": measured})
    return out
