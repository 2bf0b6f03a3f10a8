"""The static HTML report: a pure function of one or more results stores.

    records (ResultsStore) -> DataFrame (leaderboard_frame) -> rows -> jinja2 templates

Same stores ⇒ the same bytes in every file, except the build time in the footer of
each page (a ``<span id="build-time">``).  No CSS or JavaScript comes from the network.
"""

from __future__ import annotations

import json
import math
import os
import shlex
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
from reports.verdicts import verdicts

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
    env.filters["breakable"] = breakable
    env.filters["sortkey"] = lambda v: "" if v is None else repr(float(v))
    return env


def breakable(text: Any):
    """Escaped text with line-break opportunities after ``_ , [ /`` (long specs and names wrap)."""
    import markupsafe

    out = str(markupsafe.escape(text))
    for ch in "_,[/":
        out = out.replace(ch, ch + "<wbr>")
    return markupsafe.Markup(out)


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


DEFAULT_TITLE = "leakbench leaderboard"


def build_site(stores: ResultsStore | list[ResultsStore], out: str | os.PathLike, *,
               build_time: str | None = None, title: str | None = None,
               about: str | None = None) -> Path:
    """Write ``index.html``, one page per leaderboard row and their figures under ``out``.

    ``title`` heads the index (default "leakbench leaderboard"); ``about`` is a short
    free text shown under it (what was run, by whom), escaped as plain text.
    """
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
        reference = next((r.defense for r, _, _ in points if r.reference), None)
        name = f"figures/privacy_quality-{dataset}-{profile}.png".replace(":", "_")
        _write(out / name, F.privacy_quality_figure(labelled, front, f"{axis[0]} {axis[1]}",
                                                    reference=reference))
        charts.append({"dataset": dataset, "profile": profile, "src": name,
                       "axis": f"{axis[0]} {axis[1]}"})

    # One verdict per non-reference row, against its dataset and profile's reference.
    verdict_of = {(v.dataset, v.defense, v.profile): v for v in verdicts(rows)}
    reference_of = {(r.dataset, r.profile): r for r in rows if r.reference}

    # One page per leaderboard row: every attack's metrics and figures.
    for row in rows:
        sections = []
        for attack in sorted({*row.cells, "defense"} if row.costs else set(row.cells)):
            sections.append(_attack_section(row, attack, df, stored, out))
        html = env.get_template("cell.html").render(
            row=row, sections=sections, runs=runs, build_time=build_time,
            threats={a: threat_model(a) for a in row.cells},
            verdict=verdict_of.get((row.dataset, row.defense, row.profile)),
            reference=reference_of.get((row.dataset, row.profile)))
        _write(out / "cells" / f"{row.slug}.html", html)

    paper = _paper_rows(rows, df) if len(df) else []
    access = threats  # each attack's threat model (leakbench.leaderboard.threat_model)
    html = env.get_template("index.html").render(
        rows=rows, attacks=attacks, costs=costs, directions=directions, access=access,
        runs=runs, charts=charts, paper=paper, build_time=build_time,
        quality_attack=QUALITY_ATTACK, n_stores=len(stores),
        verdicts=[verdict_of[(r.dataset, r.defense, r.profile)] for r in rows
                  if (r.dataset, r.defense, r.profile) in verdict_of],
        title=title or DEFAULT_TITLE, about=about or "")
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


def setting_matches(params: dict[str, Any], setting: dict[str, Any]) -> bool:
    """Whether a cell's stored defense params equal every param of a paper's setting."""
    for key, want in setting.items():
        if key not in params:
            return False
        have = params[key]
        if isinstance(want, (int, float)) and not isinstance(want, bool):
            if not isinstance(have, (int, float)) or isinstance(have, bool):
                return False
            if not math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=0.0):
                return False
        elif have != want:
            return False
    return True


def setting_spec(defense: str, setting: dict[str, Any]) -> tuple[str | None, str]:
    """The spec that runs a paper's setting (canonical), or None and the reason it cannot."""
    from leakbench.errors import LeakbenchError
    from leakbench.harness import expand
    from leakbench.registry import DEFENSES

    def text(v):
        return repr(v) if isinstance(v, str) else format(v, "g") if isinstance(v, float) else str(v)

    args = ",".join(f"{k}={text(v)}" for k, v in sorted(setting.items()))
    spec = f"{defense}[{args}]" if args else defense
    try:
        return expand([spec], DEFENSES)[0], ""
    except (LeakbenchError, ValueError, TypeError) as exc:
        return None, str(exc)


def _paper_rows(rows: list[Row], df) -> list[dict[str, Any]]:
    """Paper-reported numbers beside the measured number at the paper's setting.

    An entry is matched to a row of its defense whose stored params equal the entry's
    ``params`` (α, s, ε, ...) and, where the entry names a ``dataset_spec`` (paper 003's
    per-MedMNIST numbers), whose dataset is that one; where none was run, the entry says
    which command runs it instead of showing another setting's number.
    """
    out = []
    for entry in load_paper_reference():
        setting = entry.get("params", {})
        dataset = entry.get("dataset_spec")
        measured = []
        for r in rows:
            if r.defense.split("[")[0] != entry["defense"] or not setting_matches(r.params, setting):
                continue
            if dataset and r.dataset.split("[")[0] != dataset.split("[")[0]:
                continue
            sel = df[(df["dataset"] == r.dataset) & (df["defense"] == r.defense)
                     & (df["profile"] == r.profile) & (df["attack"] == entry["attack"])
                     & (df["metric"] == entry["metric"])]
            for m in sel.to_dict("records"):
                measured.append({"dataset": r.dataset, "profile": r.profile, "defense": r.defense,
                                 "value": float(m["value"]),
                                 "n": None if m["n"] != m["n"] or m["n"] is None else int(m["n"]),
                                 "slug": r.slug})
        spec, why = (None, "") if measured else setting_spec(entry["defense"], setting)
        command = (f"pytest benchmarks/ --defense {shlex.quote(spec)} --attack "
                   f"{shlex.quote(entry['attack'])}" if spec else None)
        if command and dataset:
            command += f" --dataset {shlex.quote(dataset)} --data-root DIR"
        out.append({**entry, "measured": measured, "run_spec": spec, "run_command": command,
                    "unrunnable": why})
    return out
