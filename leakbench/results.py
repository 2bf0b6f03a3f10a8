"""The results store: SQLite, one row per metric; runs are only ever added.

``<results>/leakbench.db`` holds the rows; plot arrays of each finding go to
``<results>/arrays/<run_id>/<hash>.npz`` (written atomically) and are referenced
from the ``findings`` table.  WAL mode and a busy timeout let several processes
write to one store at once.

The file says whose it is and which schema it holds: SQLite's ``application_id``
header field is :data:`APPLICATION_ID` and ``user_version`` is :data:`SCHEMA_VERSION`.
A store written before these were set (leakbench 0.1.0, schema 0: the same tables)
opens as it is and is stamped on its first write; a store of a newer schema, a file
that is not ours and a damaged file are refused with one sentence and never written
to.  Readers (leaderboard, report, ``leakbench check-store``) open the file read-only,
so a store in a read-only folder can still be reported.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import platform
import sqlite3
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leakbench.api import Finding, Metric
from leakbench.cache import atomic_write_bytes
from leakbench.errors import LeakbenchError, StorageError, StoreError
from leakbench.paths import explain_os_error, is_full, writable_dir

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

SCHEMA_VERSION = 1  # bump, with a migration or a refusal, when a table or column changes
APPLICATION_ID = 0x6C6B6264  # "lkbd" in SQLite's header: this file is a leakbench results store
SQLITE_MAGIC = b"SQLite format 3\x00"
TABLES = {  # the columns of each table, schema 0 and 1 alike
    "runs": ["run_id", "started", "profile", "seed", "version", "git_rev", "machine", "command"],
    "metrics": ["id", "run_id", "dataset", "defense", "defense_params", "attack",
                "attack_params", "metric", "value", "ci_low", "ci_high", "p_value", "n",
                "direction", "seed", "profile", "version", "git_rev", "time"],
    "findings": ["run_id", "dataset", "defense", "attack", "profile", "seed", "headline", "info",
                 "arrays_path", "time"],
}
RESULTS_OPTION = "--results (or LEAKBENCH_RESULTS)"

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


@dataclass
class StoreState:
    """What a results-store file is: ``status`` is one of

    ``absent`` (no file), ``empty`` (a new or zero-length database), ``ours`` (schema
    :data:`SCHEMA_VERSION`), ``legacy`` (schema 0, before the header was stamped),
    ``newer`` (a schema this leakbench does not know), ``foreign`` (not a leakbench
    store), ``damaged`` (ours, but SQLite cannot read it).
    """

    path: Path
    status: str
    schema: int | None = None
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.status in ("absent", "empty", "ours", "legacy")

    def error(self) -> StoreError:
        """The one sentence that refuses this store."""
        p, fix = self.path, f"point {RESULTS_OPTION} at a different folder"
        if self.status == "newer":
            return StoreError(
                f"{p} was written by a newer leakbench (store schema {self.schema}; this "
                f"leakbench {package_version()} reads schema {SCHEMA_VERSION} and older); "
                f"upgrade leakbench to read it, or {fix}."
            )
        if self.status == "foreign":
            return StoreError(f"{p} is not a leakbench results store ({self.detail}); it was left "
                              f"untouched: move it away or {fix}.")
        return StoreError(f"{p} is damaged ({self.detail}); it was left untouched: "
                          f"`leakbench check-store --results {p.parent}` shows what is still "
                          f"readable, and {fix} to start a new store.")


def _ro_uri(path: Path, immutable: bool = False) -> str:
    mode = "immutable=1" if immutable else "mode=ro"
    return f"file:{urllib.parse.quote(str(path.resolve()))}?{mode}"


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection; where SQLite cannot create its ``-shm`` index beside the file
    (a read-only folder, a full disk), an immutable one if no write is pending in the WAL."""
    con = sqlite3.connect(_ro_uri(path), uri=True, timeout=60.0)
    try:
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return con
    except sqlite3.OperationalError as exc:
        con.close()
        if "unable to open" not in str(exc) and "disk I/O error" not in str(exc):
            raise
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StorageError(
            f"{path} cannot be read in place: its folder is read-only or full and it has "
            f"unmerged writes in {wal.name}; copy the folder somewhere writable and read the copy."
        )
    con = sqlite3.connect(_ro_uri(path, immutable=True), uri=True)
    con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    return con


def inspect_store(path: str | os.PathLike) -> StoreState:
    """Classify a results-store file without writing to it (see :class:`StoreState`)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return StoreState(path, "absent")
    if path.is_dir():
        return StoreState(path, "foreign", detail="it is a folder, not a database file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StorageError(explain_os_error(exc, path, what="the results store",
                                            option=RESULTS_OPTION, kind="file")) from None
    if not head:
        return StoreState(path, "empty")
    if head != SQLITE_MAGIC:
        return StoreState(path, "foreign", detail="not an SQLite database")
    try:
        con = open_read_only(path)
    except sqlite3.DatabaseError as exc:
        return StoreState(path, "damaged", detail=f"SQLite: {exc}")
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        schema = con.execute("PRAGMA user_version").fetchone()[0]
        tables = {name: [c[1] for c in con.execute(f"PRAGMA table_info('{name}')")]
                  for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                              "AND name NOT LIKE 'sqlite_%'")}
    except sqlite3.DatabaseError as exc:
        return StoreState(path, "damaged", detail=f"SQLite: {exc}")
    finally:
        con.close()
    if app_id not in (0, APPLICATION_ID):
        return StoreState(path, "foreign", detail=f"an SQLite database of another application "
                                                  f"(application_id {app_id:#x})")
    if app_id == 0 and not tables:
        return StoreState(path, "empty", schema=0)
    mismatched = sorted(t for t, cols in TABLES.items() if tables.get(t) != cols)
    if app_id == 0:
        if schema != 0 or mismatched:
            shown = ", ".join(sorted(tables)) or "none"
            return StoreState(path, "foreign", detail=f"an SQLite database with tables {shown}")
        return StoreState(path, "legacy", schema=0)
    if schema > SCHEMA_VERSION:
        return StoreState(path, "newer", schema=schema)
    if schema < 1 or mismatched:
        what = f"table(s) {', '.join(mismatched)} missing or altered" if mismatched else \
            f"schema {schema} in a stamped store"
        return StoreState(path, "damaged", schema=schema, detail=what)
    return StoreState(path, "ours", schema=schema)


def _quick_check(path: Path) -> str | None:
    """SQLite's ``quick_check`` (every page and row readable); the first problem, if any."""
    try:
        con = open_read_only(path)
        try:
            problems = [r[0] for r in con.execute("PRAGMA quick_check(5)")]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return f"SQLite: {exc}"
    return None if problems == ["ok"] else f"integrity check: {_one_line(problems[0])}"


def _one_line(text: str, limit: int = 120) -> str:
    """SQLite's multi-line integrity report as one short line."""
    text = " ".join(t for t in text.split() if t != "***")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sqlite_error(exc: sqlite3.Error, path: Path) -> LeakbenchError:
    """One sentence for an SQLite error met on the store at ``path``."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    folder = path.parent
    if name == "SQLITE_FULL" or "disk is full" in text or (
            name.startswith("SQLITE_IOERR") or "disk I/O error" in text) and is_full(folder):
        return StorageError(explain_os_error(OSError(errno.ENOSPC, "full"), folder,
                                             what="the results folder", option=RESULTS_OPTION))
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return StorageError(explain_os_error(OSError(errno.EROFS, "read-only"), folder,
                                             what="the results folder", option=RESULTS_OPTION))
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "database is locked" in text:
        return StorageError(f"{path} stayed locked by another process for 60 s; wait for it to "
                            f"finish, or point {RESULTS_OPTION} at a different folder.")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or isinstance(exc, sqlite3.DatabaseError) \
            and ("malformed" in text or "not a database" in text):
        return StoreState(path, "damaged", detail=f"SQLite: {text}").error()
    return StorageError(f"Cannot use the results store {path} (SQLite: {text}); check the disk, "
                        f"or point {RESULTS_OPTION} at a different folder.")


class ResultsStore:
    """Append-only SQLite store of findings; the leaderboard reads the newest run per cell."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_results_dir()
        self.path = self.root / "leakbench.db"
        self._verified = False

    def inspect(self) -> StoreState:
        return inspect_store(self.path)

    def check(self, *, write: bool = True) -> StoreState:
        """Up front: the folder can be written (``write``) and the file is a store we can use."""
        if write:
            writable_dir(self.root, what="the results folder", option=RESULTS_OPTION)
        state = self.inspect()
        if not state.usable:
            raise state.error()
        if state.status in ("ours", "legacy") and not self._verified:
            problem = _quick_check(self.path)  # once per process: O(size of the store)
            if problem:
                raise StoreState(self.path, "damaged", detail=problem).error()
            self._verified = True
        return state

    @contextmanager
    def connect(self, *, write: bool = True):
        """A connection to the store; refuses a store that is not ours, damaged or newer.

        ``write=False`` opens it read-only (nothing is created, stamped or locked).  An
        SQLite or file-system error becomes one sentence naming the file or folder;
        an exception or interrupt rolls the open transaction back.
        """
        state = self.check(write=write)
        try:
            if write:
                con = sqlite3.connect(self.path, timeout=60.0)
            else:
                con = open_read_only(self.path)
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, self.path) from None
        try:
            if write:
                con.execute("PRAGMA busy_timeout=60000")
                con.execute("PRAGMA journal_mode=WAL")
                if state.status != "ours":  # a new store, or one of schema 0: stamp it
                    # One transaction: a concurrent reader sees no tables or a stamped store.
                    con.executescript(f"BEGIN IMMEDIATE; {SCHEMA}; "
                                      f"PRAGMA application_id={APPLICATION_ID}; "
                                      f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
            yield con
            con.commit()
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, self.path) from None
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
            try:
                atomic_write_bytes(self.root / rel, lambda f: f.write(data))
            except OSError as exc:
                raise StorageError(explain_os_error(exc, self.root, what="the results folder",
                                                    option=RESULTS_OPTION)) from None
            arrays_path = str(rel)
        rows = [
            (run.run_id, dataset, defense, json.dumps(defense_params, sort_keys=True, default=str),
             attack, json.dumps(attack_params, sort_keys=True, default=str), m.name, m.value,
             m.ci_low, m.ci_high, m.p_value, m.n, m.direction, run.seed, run.profile,
             run.version, run.git_rev, now)
            for m in finding.metrics
        ]
        try:
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
        except BaseException:
            if arrays_path is not None:  # the rows were rolled back: drop their arrays too
                (self.root / arrays_path).unlink(missing_ok=True)
            raise

    def rows(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.connect(write=False) as con:
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
        with self.connect(write=False) as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM findings ORDER BY time")]

    def runs(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.connect(write=False) as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY started")]

    def merge(self, sources: Iterable[ResultsStore]) -> list[str]:
        """Copy the runs of ``sources`` not yet in this store (rows, findings, plot arrays).

        Runs are only ever added, so merging twice adds nothing; the ids of the runs copied
        are returned.  Each source is copied in one transaction, its arrays first, so a
        row never points at a missing file.
        """
        merged: list[str] = []
        for src in sources:
            have = {r["run_id"] for r in self.runs()}
            runs = [r for r in src.runs() if r["run_id"] not in have]
            if not runs:
                continue
            ids = [r["run_id"] for r in runs]
            rows = src.rows(ids)
            findings = [f for f in src.findings() if f["run_id"] in set(ids)]
            for f in findings:
                if f["arrays_path"]:
                    data = (src.root / f["arrays_path"]).read_bytes()
                    try:
                        atomic_write_bytes(self.root / f["arrays_path"], lambda w, d=data: w.write(d))
                    except OSError as exc:
                        raise StorageError(explain_os_error(exc, self.root, what="the results folder",
                                                            option=RESULTS_OPTION)) from None
            with self.connect() as con:
                for table, records in (("runs", runs), ("findings", findings)):
                    cols = TABLES[table]
                    con.executemany(f"INSERT INTO {table} ({','.join(cols)}) VALUES "
                                    f"({','.join('?' * len(cols))})",
                                    [tuple(r[c] for c in cols) for r in records])
                con.executemany(f"INSERT INTO metrics ({','.join(COLUMNS)}) VALUES "
                                f"({','.join('?' * len(COLUMNS))})",
                                [tuple(r[c] for c in COLUMNS) for r in rows])
            merged.extend(ids)
        return merged

    def load_arrays(self, arrays_path: str) -> dict[str, np.ndarray]:
        with np.load(self.root / arrays_path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def metric_from_row(row: dict[str, Any]) -> Metric:
    return Metric(row["metric"], row["value"], row["ci_low"], row["ci_high"], row["p_value"],
                  row["n"], row["direction"])


def _readable_rows(con: sqlite3.Connection, table: str) -> tuple[int, str | None]:
    """How many rows of ``table`` read back before the first error (and that error)."""
    n = 0
    try:
        for _ in con.execute(f"SELECT * FROM {table}"):
            n += 1
    except sqlite3.DatabaseError as exc:
        return n, str(exc)
    return n, None


def describe_store(store: ResultsStore) -> tuple[bool, list[str]]:
    """``leakbench check-store``: what the file is and what of it is readable; never writes.

    Returns (healthy, lines).  A damaged store is described table by table (rows read
    before the first error) with the SQLite integrity check, and left as it is.
    """
    path = store.path
    try:
        state = store.inspect()
    except StorageError as exc:
        return False, [f"{path}: {exc}"]
    if state.status == "absent":
        return False, [f"{path}: no results store here; run `pytest benchmarks/` or point "
                       f"{RESULTS_OPTION} at the folder that holds leakbench.db."]
    if state.status == "empty":
        return True, [f"{path}: an empty results store (no runs yet)."]
    if state.status in ("foreign", "newer"):
        return False, [str(state.error())]
    head = {"ours": f"a leakbench results store, schema {state.schema}",
            "legacy": f"a leakbench results store of schema 0 (written before stores were "
                      f"stamped); readable as it is, stamped schema {SCHEMA_VERSION} on its next write",
            "damaged": f"damaged ({state.detail})"}[state.status]
    lines = [f"{path}: {head}"]
    try:
        con = open_read_only(path)
    except (sqlite3.DatabaseError, StorageError) as exc:
        lines += [f"  unreadable: {exc}", _salvage(path)]
        return False, lines
    healthy = state.status in ("ours", "legacy")
    try:
        try:
            problems = [r[0] for r in con.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems == ["ok"]:
            lines.append("  integrity check: ok")
        else:
            healthy = False
            lines.append(f"  integrity check: {len(problems)} problem(s), first: "
                         f"{_one_line(problems[0])}")
        counts = []
        for table in TABLES:
            n, err = _readable_rows(con, table)
            counts.append(f"{table} {n} row(s)" + (f" readable, then: {err}" if err else ""))
            healthy &= err is None
        lines.append("  " + "; ".join(counts))
        referenced: list[str] = []
        try:
            referenced = [r[0] for r in con.execute(
                "SELECT arrays_path FROM findings WHERE arrays_path IS NOT NULL")]
        except sqlite3.DatabaseError:
            pass
    finally:
        con.close()
    missing = [a for a in referenced if not (store.root / a).is_file()]
    on_disk = {str(p.relative_to(store.root)) for p in (store.root / "arrays").rglob("*.npz")} \
        if (store.root / "arrays").is_dir() else set()
    temps = list((store.root / "arrays").rglob(".*.tmp")) if (store.root / "arrays").is_dir() else []
    lines.append(f"  plot arrays: {len(referenced)} referenced, {len(missing)} missing, "
                 f"{len(on_disk - set(referenced))} unreferenced, {len(temps)} temporary file(s) "
                 "left by a killed write")
    healthy &= not missing
    if healthy:
        lines.append("  healthy")
    else:
        lines.append(_salvage(path))
    return healthy, lines


def _salvage(path: Path) -> str:
    return (f"  not healthy: the file was left as it is; to salvage what SQLite can still read "
            f"run `sqlite3 {path} .recover > recovered.sql`, and point {RESULTS_OPTION} at a "
            "new folder to keep running")
