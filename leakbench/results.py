"""The results store: SQLite, one row per metric; runs are only ever added.

``<results>/leakbench.db`` holds the rows; plot arrays of each finding go to
``<results>/arrays/<run_id>/<hash>.npz`` (written atomically) and are referenced
from the ``findings`` table.  WAL mode and a busy timeout let several processes
write to one store at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leakbench.api import Finding, Metric
from leakbench.cache import atomic_write_bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    profile TEXT NOT NULL,
    seed INTEGER NOT NULL,
    version TEXT NOT NULL,
    git_rev TEXT,
    machine TEXT,
    command TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    dataset TEXT NOT NULL,
    defense TEXT NOT NULL,
    defense_params TEXT NOT NULL,
    attack TEXT NOT NULL,
    attack_params TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    ci_low REAL,
    ci_high REAL,
    p_value REAL,
    n INTEGER,
    direction TEXT,
    seed INTEGER NOT NULL,
    profile TEXT NOT NULL,
    version TEXT NOT NULL,
    git_rev TEXT,
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_cell ON metrics(dataset, defense, attack, profile);
CREATE TABLE IF NOT EXISTS findings (
    run_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    defense TEXT NOT NULL,
    attack TEXT NOT NULL,
    profile TEXT NOT NULL,
    seed INTEGER NOT NULL,
    headline TEXT,
    info TEXT,
    arrays_path TEXT,
    time TEXT NOT NULL
);
"""

COLUMNS = ["run_id", "dataset", "defense", "defense_params", "attack", "attack_params", "metric",
           "value", "ci_low", "ci_high", "p_value", "n", "direction", "seed", "profile",
           "version", "git_rev", "time"]


def default_results_dir() -> Path:
    return Path(os.environ.get("LEAKBENCH_RESULTS", "leakbench-results"))


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("leakbench")
    except Exception:
        return "unknown"


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_description() -> str:
    import torch

    return json.dumps({
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }, sort_keys=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()) + f".{int(time.time() * 1e6) % 1_000_000:06d}"


@dataclass
class Run:
    run_id: str
    profile: str
    seed: int
    version: str
    git_rev: str | None


class ResultsStore:
    """Append-only SQLite store of findings; the leaderboard reads the newest run per cell."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_results_dir()
        self.path = self.root / "leakbench.db"

    @contextmanager
    def connect(self):
        self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60.0)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA busy_timeout=60000")
            con.executescript(SCHEMA)
            yield con
            con.commit()
        finally:
            con.close()

    def start_run(self, *, profile: str, seed: int, command: str = "") -> Run:
        run = Run(uuid.uuid4().hex[:16], profile, int(seed), package_version(), git_revision())
        with self.connect() as con:
            con.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?)",
                (run.run_id, _now(), profile, run.seed, run.version, run.git_rev,
                 machine_description(), command),
            )
        return run

    def record(
        self,
        run: Run,
        *,
        dataset: str,
        defense: str,
        defense_params: dict[str, Any],
        attack: str,
        attack_params: dict[str, Any],
        finding: Finding,
    ) -> None:
        """Store every metric of ``finding`` as a row, and its arrays beside the database."""
        now = _now()
        arrays_path = None
        if finding.arrays:
            buf = io.BytesIO()
            np.savez_compressed(buf, **{k: np.asarray(v) for k, v in finding.arrays.items()})
            data = buf.getvalue()
            name = hashlib.sha256(f"{dataset}|{defense}|{attack}".encode()).hexdigest()[:16]
            rel = Path("arrays") / run.run_id / f"{name}.npz"
            atomic_write_bytes(self.root / rel, lambda f: f.write(data))
            arrays_path = str(rel)
        rows = [
            (run.run_id, dataset, defense, json.dumps(defense_params, sort_keys=True, default=str),
             attack, json.dumps(attack_params, sort_keys=True, default=str), m.name, m.value,
             m.ci_low, m.ci_high, m.p_value, m.n, m.direction, run.seed, run.profile,
             run.version, run.git_rev, now)
            for m in finding.metrics
        ]
        with self.connect() as con:
            con.executemany(
                f"INSERT INTO metrics ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})",
                rows,
            )
            con.execute(
                "INSERT INTO findings VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run.run_id, dataset, defense, attack, run.profile, run.seed, finding.headline,
                 json.dumps(finding.info, sort_keys=True, default=str), arrays_path, now),
            )

    def rows(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.connect() as con:
            con.row_factory = sqlite3.Row
            q = f"SELECT {','.join(COLUMNS)} FROM metrics"
            args: list[Any] = []
            if run_ids is not None:
                ids = list(run_ids)
                q += f" WHERE run_id IN ({','.join('?' * len(ids))})"
                args = ids
            return [dict(r) for r in con.execute(q + " ORDER BY id", args)]

    def findings(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.connect() as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM findings ORDER BY time")]

    def runs(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.connect() as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY started")]

    def load_arrays(self, arrays_path: str) -> dict[str, np.ndarray]:
        with np.load(self.root / arrays_path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def metric_from_row(row: dict[str, Any]) -> Metric:
    return Metric(row["metric"], row["value"], row["ci_low"], row["ci_high"], row["p_value"],
                  row["n"], row["direction"])
