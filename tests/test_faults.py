"""Faults and a hostile environment, each as a test.

Processes killed or interrupted mid-write (SIGKILL, SIGINT, SIGTERM), corrupted and
foreign files, concurrent writers, unwritable and full folders: every case ends in one
sentence naming the folder or file, and what was stored before is what is stored after.
Real file systems (a size-limited or read-only tmpfs) are used where the machine allows
mounting; the same cases also run with the failing call patched, so none goes untested.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from leakbench.api import Finding, Metric
from leakbench.cache import ArtifactCache, content_key
from leakbench.cache import _RecordingWriter as _RealWriter
from leakbench.errors import DataError, StorageError, StoreError
from leakbench.harness import check_locations
from leakbench.results import (
    APPLICATION_ID,
    SCHEMA,
    SCHEMA_VERSION,
    ResultsStore,
    describe_store,
    inspect_store,
)


def _killed_while_writing_artifact(root):
    """Start writing a large artifact, then die by SIGKILL halfway through the bytes."""
    real = torch.save

    def dying_save(obj, f):
        real(obj, f)
        f.flush()
        f.truncate(f.tell() // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save  # the cache calls torch.save inside its atomic writer
    ArtifactCache(root).get_or_build("model", {"k": 1}, lambda: {"w": torch.ones(100_000)})


def test_sigkill_while_writing_artifact_leaves_nothing_readable(tmp_path):
    proc = mp.get_context("spawn").Process(target=_killed_while_writing_artifact, args=(tmp_path,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    cache = ArtifactCache(tmp_path)
    key = content_key("model", {"k": 1})
    assert cache.load("model", key) == (None, "missing")  # the partial write is never read
    out = cache.get_or_build("model", {"k": 1}, lambda: {"w": torch.full((10,), 3.0)})
    assert torch.equal(out["w"], torch.full((10,), 3.0))  # the rerun recovers (lock released)
    assert cache.load("model", key)[1] == "hit"


def _write_rows_then_die(root, run_id):
    store = ResultsStore(root)
    from leakbench.results import Run

    run = Run(run_id, "smoke", 0, "test", None)
    con_connect = store.connect

    def dying_connect():
        cm = con_connect()
        con = cm.__enter__()
        con.execute("INSERT INTO metrics (run_id, dataset, defense, defense_params, attack, "
                    "attack_params, metric, value, seed, profile, version, time) VALUES "
                    "(?, 'd', 'x', '{}', 'a', '{}', 'half-written', 1.0, 0, 'smoke', 't', 't')",
                    (run_id,))
        os.kill(os.getpid(), signal.SIGKILL)

    store.connect = dying_connect
    store.record(run, dataset="d", defense="x", defense_params={}, attack="a", attack_params={},
                 finding=Finding([Metric("m", 1.0)]))


def test_sigkill_during_result_write_loses_nothing_stored(tmp_path):
    store = ResultsStore(tmp_path)
    run = store.start_run(profile="smoke", seed=0)
    store.record(run, dataset="d", defense="ddim", defense_params={}, attack="a", attack_params={},
                 finding=Finding([Metric("kept", 0.25)]))
    proc = mp.get_context("spawn").Process(target=_write_rows_then_die, args=(tmp_path, "dead"))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    rows = ResultsStore(tmp_path).rows()
    assert [(r["metric"], r["value"]) for r in rows] == [("kept", 0.25)]  # no half-written row
    store.record(run, dataset="d", defense="ddim", defense_params={}, attack="b", attack_params={},
                 finding=Finding([Metric("after", 1.0)]))
    assert len(ResultsStore(tmp_path).rows()) == 2


def _writer(root, tag, n):
    store = ResultsStore(root)
    run = store.start_run(profile="smoke", seed=0)
    for i in range(n):
        store.record(run, dataset="d", defense=tag, defense_params={}, attack=f"a{i}",
                     attack_params={}, finding=Finding([Metric("m", float(i))]))


def test_two_writers_share_one_store(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, tag, 40)) for tag in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    rows = ResultsStore(tmp_path).rows()
    assert len(rows) == 80
    assert sorted({r["defense"] for r in rows}) == ["p1", "p2"]


# ---------------------------------------------------------------------------------------------
# A hostile environment: every case ends in one sentence naming the folder or file, and what
# was stored before is byte-for-byte what is stored after.
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (lock files aside: empty, and never entries) -> its SHA-256."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")
            and not p.name.endswith(("-wal", "-shm"))}


def stored_rows(results: Path) -> list[tuple]:
    """Every metric row of the store at ``results``, read without leakbench's code."""
    for mode in ("mode=ro", "immutable=1"):  # immutable: no -shm can be made (a full disk)
        con = sqlite3.connect(f"file:{results / 'leakbench.db'}?{mode}", uri=True)
        try:
            return con.execute("SELECT run_id, dataset, defense, attack, metric, value FROM "
                               "metrics ORDER BY id").fetchall()
        except sqlite3.OperationalError:
            if mode == "immutable=1":
                raise
        finally:
            con.close()


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")] if folder.exists() else []


def assert_locks_free(folder: Path) -> None:
    for lock in folder.rglob("*.lock"):
        with FileLock(str(lock), timeout=0):  # raises Timeout if a dead process still held it
            pass


def _record(store, run, attack="a", value=0.25):
    store.record(run, dataset="d", defense="ddim", defense_params={}, attack=attack,
                 attack_params={}, finding=Finding([Metric("m", value)],
                                                   arrays={"x": np.arange(4.0)}))


def filled_store(root: Path) -> ResultsStore:
    store = ResultsStore(root)
    run = store.start_run(profile="smoke", seed=0)
    _record(store, run, "a", 0.25)
    _record(store, run, "b", 0.5)
    return store


def _can_mount() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/.leakbench-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        return ok
    finally:
        probe.rmdir()


CAN_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="needs root and `mount -t tmpfs` (a real "
                                 "full or read-only file system); the patched cases still run")


@pytest.fixture
def tmpfs(tmp_path):
    """``make(name, size)`` mounts a size-limited tmpfs at ``tmp_path/name``; ``ro(path)``
    remounts it read-only.  Unmounted afterwards."""
    mounted = []

    def make(name: str, size: str = "256k") -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True)
        mounted.append(path)
        return path

    def ro(path: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)

    make.ro = ro
    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> None:
    """Fill the file system holding ``folder`` to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while f.write(b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


# -- every file-system surface, checked up front ---------------------------------------------

SURFACES = {
    "cache": lambda p, tmp: check_locations(cache_dir=p, results=tmp / "ok-results"),
    "results": lambda p, tmp: check_locations(cache_dir=tmp / "ok-cache", results=p),
    "data_root": lambda p, tmp: check_locations(cache_dir=tmp / "ok-cache",
                                                results=tmp / "ok-results", data_root=p),
}
OPTION = {"cache": "--cache-dir", "results": "--results", "data_root": "--data-root"}


@pytest.mark.parametrize("surface", ["cache", "results"])
@pytest.mark.parametrize("case", ["not creatable", "a file", "under a file", "no permission",
                                  "read-only", "full"])
def test_writable_surfaces_fail_up_front_in_one_sentence(tmp_path, monkeypatch, surface, case):
    path = tmp_path / "target"
    expected = {
        "not creatable": "Cannot create the",
        "a file": "is a file, not a folder",
        "under a file": "which is a file",
        "no permission": "No permission to use",
        "read-only": "is on a read-only file system",
        "full": "No space left for",
    }[case]
    if case == "not creatable":
        path = Path("/proc/leakbench-nope")
    elif case == "a file":
        path.write_text("mine")
    elif case == "under a file":
        (tmp_path / "file").write_text("mine")
        path = tmp_path / "file" / "sub"
    else:  # the probe write fails the way the file system would (root ignores permission bits)
        code = {"no permission": errno.EACCES, "read-only": errno.EROFS, "full": errno.ENOSPC}[case]

        real = tempfile.mkstemp

        def refuse(*a, dir=None, **k):
            if Path(dir) == path:
                raise OSError(code, os.strerror(code))
            return real(*a, dir=dir, **k)

        monkeypatch.setattr("leakbench.paths.tempfile.mkstemp", refuse)
    (tmp_path / "ok-results").mkdir()
    (tmp_path / "ok-cache").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(StorageError) as e:
        SURFACES[surface](path, tmp_path)
    msg = str(e.value)
    assert expected in msg and str(path) in msg and OPTION[surface] in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case, expected", [("missing", "does not exist; check the path given "
                                             "to --data-root."),
                                            ("a file", "is a file, not a folder")])
def test_data_root_must_be_a_readable_folder(tmp_path, case, expected):
    path = tmp_path / "data"
    if case == "a file":
        path.write_text("x")
    with pytest.raises(StorageError, match=expected):
        SURFACES["data_root"](path, tmp_path)


@pytest.mark.parametrize("case, expected", [
    ("missing", "The model folder {p} does not exist; check the path given to --model."),
    ("a file", "The model folder {p} is a file, not a folder; point --model at another folder."),
])
def test_model_path_must_be_a_readable_folder(tmp_path, case, expected):
    """The check issue #16's ``--model PATH`` calls (through check_locations)."""
    path = tmp_path / "model"
    if case == "a file":
        path.write_text("weights")
    with pytest.raises(StorageError) as e:
        check_locations(cache_dir=tmp_path / "c", results=tmp_path / "r", model=path)
    assert str(e.value) == expected.format(p=path)


def test_npz_path_that_is_a_folder_is_one_sentence(tmp_path):
    from leakbench.data.sources import Npz

    (tmp_path / "d.npz").mkdir()
    with pytest.raises(DataError, match=r"d.npz is a folder; give npz: the path of a .npz file"):
        Npz(str(tmp_path / "d.npz")).load(8)


@needs_mount
def test_read_only_cache_is_refused_up_front_for_real(tmpfs):
    cache = tmpfs("cache")
    (cache / "denoiser").mkdir()
    (cache / "denoiser" / "entry.json").write_text("{}")
    tmpfs.ro(cache)
    before = snapshot(cache)
    with pytest.raises(StorageError, match="is on a read-only file system; point --cache-dir"):
        check_locations(cache_dir=cache, results=cache.parent / "results")
    assert snapshot(cache) == before


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "leakbench.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_report_out_is_a_file(tmp_path):
    filled_store(tmp_path / "r")
    (tmp_path / "site").write_text("my notes")
    r = _cli("report", "--out", str(tmp_path / "site"), "--results", str(tmp_path / "r"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (f"The report folder {tmp_path / 'site'} is a file, not a folder; point --out at "
            "another folder") in r.stderr
    assert (tmp_path / "site").read_text() == "my notes"


def test_report_of_a_read_only_store(tmp_path, monkeypatch):
    """Reading needs no write: the leaderboard of a store SQLite cannot open read-write."""
    store = filled_store(tmp_path / "r")
    expected = store.rows()
    before = snapshot(tmp_path / "r")
    real = sqlite3.connect

    def no_writes(database, *a, **k):  # any read-write open of the store fails
        if "mode=ro" not in str(database) and "immutable" not in str(database):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real(database, *a, **k)

    monkeypatch.setattr("leakbench.results.sqlite3.connect", no_writes)
    assert ResultsStore(tmp_path / "r").rows() == expected
    assert snapshot(tmp_path / "r") == before


@needs_mount
def test_store_in_a_read_only_folder_is_readable_not_writable(tmpfs):
    results = tmpfs("results", "2m")
    store = filled_store(results)
    expected = store.rows()
    tmpfs.ro(results)
    before = snapshot(results)
    assert ResultsStore(results).rows() == expected  # immutable open: no -shm needed
    with pytest.raises(StorageError, match="is on a read-only file system; point --results"):
        ResultsStore(results).start_run(profile="smoke", seed=0)
    assert snapshot(results) == before


# -- stores that are not ours, damaged, or from another version ------------------------------

def _garbage(path):
    path.write_bytes(os.urandom(8192))


def _other_app(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE photos (id INTEGER, name TEXT)")
    con.execute("INSERT INTO photos VALUES (1, 'cat')")
    con.commit()
    con.close()


def _other_app_id(path):
    _other_app(path)
    con = sqlite3.connect(path)
    con.execute("PRAGMA application_id=1234")
    con.commit()
    con.close()


def _newer(path):
    filled_store(path.parent)
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version=99")
    con.commit()
    con.close()


def _page_overwritten(path):
    """A real store whose table pages were overwritten (a bad disk, a stray dd)."""
    store = ResultsStore(path.parent)
    run = store.start_run(profile="smoke", seed=0)
    _record(store, run, "a", 0.0)
    con = sqlite3.connect(path)
    con.executemany("INSERT INTO metrics (run_id, dataset, defense, defense_params, attack, "
                    "attack_params, metric, value, seed, profile, version, time) VALUES "
                    "(?, 'digits', 'ddim', '{}', 'replication', '{}', ?, ?, 0, 'smoke', '0', 't')",
                    [(run.run_id, f"m{i}", float(i)) for i in range(300)])
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[3 * page:5 * page] = os.urandom(2 * page)
    path.write_bytes(bytes(data))


def _truncated(path):
    _page_overwritten(path)
    path.write_bytes(path.read_bytes()[: 4096 * 3 + 100])


def _a_folder(path):
    path.mkdir()
    (path / "keep.txt").write_text("mine")


BAD_STORES = {
    "garbage": (_garbage, "is not a leakbench results store (not an SQLite database)"),
    "another app's SQLite": (_other_app, "is not a leakbench results store (an SQLite database "
                                         "with tables photos)"),
    "another application_id": (_other_app_id, "(an SQLite database of another application "
                                              "(application_id 0x4d2)"),
    "newer schema": (_newer, "was written by a newer leakbench (store schema 99; this leakbench"),
    "pages overwritten": (_page_overwritten, "is damaged"),
    "truncated": (_truncated, "is damaged"),
    "a folder": (_a_folder, "is not a leakbench results store (it is a folder"),
}


@pytest.mark.parametrize("case", list(BAD_STORES))
def test_store_not_ours_damaged_or_newer_is_refused_untouched(tmp_path, case):
    make, expected = BAD_STORES[case]
    results = tmp_path / "r"
    results.mkdir()
    make(results / "leakbench.db")
    before = snapshot(results)
    store = ResultsStore(results)
    for use in (lambda: store.start_run(profile="smoke", seed=0), store.rows,
                lambda: check_locations(cache_dir=tmp_path / "c", results=results)):
        with pytest.raises(StoreError) as e:
            use()
        assert expected in str(e.value) and str(results / "leakbench.db") in str(e.value)
    assert snapshot(results) == before  # never written, "repaired" or overwritten
    healthy, lines = describe_store(store)
    assert not healthy
    assert snapshot(results) == before
    text = "\n".join(lines)
    if case in ("pages overwritten", "truncated"):
        assert "not healthy: the file was left as it is" in text and ".recover" in text
    if case == "pages overwritten":  # what is still readable is reported, table by table
        assert "integrity check: " in text and "runs 1 row(s);" in text
    if case in ("pages overwritten", "truncated"):
        assert "\n" not in str(e.value)  # SQLite's report, made one line


def test_check_store_command(tmp_path):
    filled_store(tmp_path / "ok")
    r = _cli("check-store", "--results", str(tmp_path / "ok"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"schema {SCHEMA_VERSION}" in r.stdout and "integrity check: ok" in r.stdout
    assert "runs 1 row(s); metrics 2 row(s); findings 2 row(s)" in r.stdout
    assert "2 referenced, 0 missing" in r.stdout and r.stdout.rstrip().endswith("healthy")
    (tmp_path / "bad").mkdir()
    _page_overwritten(tmp_path / "bad" / "leakbench.db")
    before = snapshot(tmp_path / "bad")
    r = _cli("check-store", "--results", str(tmp_path / "bad"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "not healthy: the file was left as it is" in r.stdout
    assert snapshot(tmp_path / "bad") == before
    r = _cli("leaderboard", "--results", str(tmp_path / "bad"))
    assert r.returncode == 2 and "is damaged" in r.stderr and "Traceback" not in r.stderr


def test_store_of_schema_0_opens_and_is_stamped_on_write(tmp_path):
    """A store written before stores were stamped (leakbench 0.1.0) reads exactly as it was."""
    path = tmp_path / "leakbench.db"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    con.execute("INSERT INTO runs VALUES ('old', 't', 'smoke', 0, '0.1.0', NULL, '{}', 'pytest')")
    con.execute("INSERT INTO metrics (run_id, dataset, defense, defense_params, attack, "
                "attack_params, metric, value, seed, profile, version, time) VALUES ('old', "
                "'digits', 'ddim', '{}', 'replication', '{}', 'frac_above', 0.625, 0, 'smoke', "
                "'0.1.0', 't')")
    con.commit()
    con.close()
    assert inspect_store(path).status == "legacy"
    before = snapshot(tmp_path)
    rows = ResultsStore(tmp_path).rows()
    assert [(r["run_id"], r["metric"], r["value"]) for r in rows] == [("old", "frac_above", 0.625)]
    assert snapshot(tmp_path) == before  # reading does not stamp it
    store = ResultsStore(tmp_path)
    _record(store, store.start_run(profile="smoke", seed=0), "b", 1.0)
    state = inspect_store(path)
    assert (state.status, state.schema) == ("ours", SCHEMA_VERSION)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    con.close()
    assert [r["value"] for r in store.rows()] == [0.625, 1.0]


def test_a_new_store_is_stamped(tmp_path):
    filled_store(tmp_path)
    state = inspect_store(tmp_path / "leakbench.db")
    assert (state.status, state.schema) == ("ours", SCHEMA_VERSION)


def test_zero_length_store_is_a_new_store(tmp_path):
    (tmp_path / "leakbench.db").write_bytes(b"")
    _record(ResultsStore(tmp_path), ResultsStore(tmp_path).start_run(profile="smoke", seed=0))
    assert len(ResultsStore(tmp_path).rows()) == 1


# -- a full disk ------------------------------------------------------------------------------

def test_full_disk_while_writing_an_artifact_patched(tmp_path, monkeypatch):
    """``torch.save`` turns ENOSPC into a RuntimeError; the cache reports the full folder."""
    cache = ArtifactCache(tmp_path / "cache")
    cache.get_or_build("model", {"k": 0}, lambda: {"w": torch.zeros(3)})
    before = snapshot(tmp_path / "cache")
    real_write = _RealWriter.write

    def full_after_1k(self, b):
        if self._f.tell() + len(b) > 1024:
            self.error = OSError(errno.ENOSPC, "No space left on device")
            raise self.error
        return real_write(self, b)

    monkeypatch.setattr(_RealWriter, "write", full_after_1k)
    with pytest.raises(StorageError) as e:
        cache.get_or_build("model", {"k": 1}, lambda: {"w": torch.ones(100_000)})
    assert str(e.value).startswith(f"No space left for the artifact cache {tmp_path / 'cache'} "
                                   "(the disk is full); free space there or point --cache-dir")
    assert snapshot(tmp_path / "cache") == before and not temp_files(tmp_path / "cache")
    monkeypatch.undo()
    out = cache.get_or_build("model", {"k": 1}, lambda: {"w": torch.ones(3)})  # lock released
    assert out["w"].tolist() == [1.0, 1.0, 1.0]


def _fsize_limited_writes(root, limit, queue):
    """In a child with ``ulimit -f``: an artifact and a result larger than the limit."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out = []
    try:
        ArtifactCache(Path(root) / "cache").get_or_build("model", {"k": 9},
                                                         lambda: {"w": torch.ones(50_000)})
    except StorageError as exc:
        out.append(str(exc))
    store = ResultsStore(Path(root) / "results")
    run = store.start_run(profile="smoke", seed=0)
    try:
        store.record(run, dataset="d", defense="ddim", defense_params={}, attack="big",
                     attack_params={}, finding=Finding([Metric("m", 1.0)],
                                                       arrays={"x": np.random.rand(50_000)}))
    except StorageError as exc:
        out.append(str(exc))
    queue.put(out)


def test_file_size_limit_in_a_subprocess(tmp_path):
    """A real kernel refusal (RLIMIT_FSIZE, also for root): the cache and store stay as they were."""
    ArtifactCache(tmp_path / "cache").get_or_build("model", {"k": 0}, lambda: {"w": torch.ones(3)})
    filled_store(tmp_path / "results")
    before = snapshot(tmp_path)
    rows = stored_rows(tmp_path / "results")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fsize_limited_writes, args=(str(tmp_path), 64 * 1024, queue))
    proc.start()
    messages = queue.get(timeout=120)
    proc.join(60)
    assert proc.exitcode == 0
    assert len(messages) == 2
    assert messages[0].startswith(f"A file in the artifact cache {tmp_path / 'cache'} would "
                                  "exceed the file-size limit (`ulimit -f`)")
    assert messages[1].startswith(f"A file in the results folder {tmp_path / 'results'} would "
                                  "exceed the file-size limit")
    after = snapshot(tmp_path)
    assert stored_rows(tmp_path / "results")[:2] == rows
    # the only change: the run the child started (one row in `runs`), no entry, no arrays
    assert {k: v for k, v in after.items() if k != "results/leakbench.db"} == \
        {k: v for k, v in before.items() if k != "results/leakbench.db"}
    assert not temp_files(tmp_path)


@needs_mount
def test_full_disk_for_real_cache_and_store(tmpfs):
    disk = tmpfs("disk", "1m")
    cache, results = ArtifactCache(disk / "cache"), disk / "results"
    cache.get_or_build("model", {"k": 0}, lambda: {"w": torch.ones(3)})
    store = filled_store(results)
    run = store.start_run(profile="smoke", seed=0)
    rows = stored_rows(results)
    (results / "leakbench.db-shm").unlink(missing_ok=True)  # as the last writer leaves it
    fill(disk)
    assert ResultsStore(results).rows() == store.rows()  # readable on a full disk
    before = snapshot(disk)
    with pytest.raises(StorageError) as e:
        cache.get_or_build("model", {"k": 1}, lambda: {"w": torch.ones(100_000)})
    assert str(e.value).startswith(f"No space left for the artifact cache {disk / 'cache'} "
                                   "(the disk is full)")
    with pytest.raises(StorageError) as e:
        store.record(run, dataset="d", defense="ddim", defense_params={}, attack="big",
                     attack_params={}, finding=Finding([Metric("m", 1.0)] * 2000,
                                                       arrays={"x": np.random.rand(50_000)}))
    assert str(e.value).startswith(f"No space left for the results folder {results} "
                                   "(the disk is full)")
    assert snapshot(disk) == before and not temp_files(disk)
    assert stored_rows(results) == rows
    (disk / "filler").unlink()
    assert describe_store(ResultsStore(results))[0]  # integrity ok, every row readable
    _record(store, run, "after", 2.0)  # the same store takes rows again once there is space
    assert len(stored_rows(results)) == len(rows) + 1


# -- interrupted writes (in-process: the handler the benchmark session installs) --------------

def _interrupted_while_writing_artifact(root, signum):
    from leakbench.interrupts import sigterm_as_interrupt

    sigterm_as_interrupt()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as under a terminal (a background
    # job starts with SIGINT ignored, and so would this child)
    real = torch.save

    def interrupted_save(obj, f):
        real(obj, f)
        os.kill(os.getpid(), signum)  # arrives halfway: after the bytes, before the rename
        time.sleep(5)

    torch.save = interrupted_save
    try:
        ArtifactCache(root).get_or_build("model", {"k": 1}, lambda: {"w": torch.ones(100_000)})
    except KeyboardInterrupt:
        sys.exit(130)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_while_writing_artifact_leaves_no_partial_entry(tmp_path, signum):
    ArtifactCache(tmp_path).get_or_build("model", {"k": 0}, lambda: {"w": torch.ones(3)})
    before = snapshot(tmp_path)
    proc = mp.get_context("spawn").Process(target=_interrupted_while_writing_artifact,
                                           args=(tmp_path, signum))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 130  # unwound: handlers ran
    assert snapshot(tmp_path) == before and not temp_files(tmp_path)
    assert_locks_free(tmp_path)
    out = ArtifactCache(tmp_path).get_or_build("model", {"k": 1}, lambda: {"w": torch.zeros(2)})
    assert out["w"].tolist() == [0.0, 0.0]


def _interrupted_while_recording(root):
    from leakbench.interrupts import sigterm_as_interrupt

    sigterm_as_interrupt()
    store = ResultsStore(root)
    run = store.start_run(profile="smoke", seed=0)
    real = ResultsStore.connect

    def connect(self, **kw):
        cm = real(self, **kw)
        con = cm.__enter__()

        class Dying:
            def __enter__(self):
                return self

            def executemany(self, *a):
                con.executemany(*a)
                os.kill(os.getpid(), signal.SIGTERM)  # rows inserted, not yet committed
                time.sleep(5)

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return Dying()

    ResultsStore.connect = connect
    try:
        _record(store, run, "dying", 9.0)
    except KeyboardInterrupt:
        sys.exit(130)


def test_sigterm_while_recording_rolls_back_rows_and_arrays(tmp_path):
    filled_store(tmp_path)
    rows = stored_rows(tmp_path)
    arrays_before = sorted((tmp_path / "arrays").rglob("*.npz"))
    proc = mp.get_context("spawn").Process(target=_interrupted_while_recording, args=(tmp_path,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 130
    assert stored_rows(tmp_path) == rows
    assert sorted((tmp_path / "arrays").rglob("*.npz")) == arrays_before
    assert not temp_files(tmp_path)
    assert describe_store(ResultsStore(tmp_path))[0]


# -- through the real command line: pytest benchmarks/ ----------------------------------------

HANG_PLUGIN = '''
"""Test plugin: the Nth build of one artifact kind signals readiness, then hangs (mid-cell)."""
import os
import time

from leakbench.cache import ArtifactCache

_real = ArtifactCache.get_or_build
_kind, _nth = os.environ["LEAKBENCH_TEST_HANG"].split(":")
_builds = [0]


def get_or_build(self, kind, spec, build, *, label=""):
    if kind != _kind:
        return _real(self, kind, spec, build, label=label)

    def hanging_build():
        _builds[0] += 1
        if _builds[0] == int(_nth):
            open(os.environ["LEAKBENCH_TEST_READY"], "w").close()
            time.sleep(300)
        return build()

    return _real(self, kind, spec, hanging_build, label=label)


ArtifactCache.get_or_build = get_or_build
'''

CELLS = ["--defense", "ddim", "--attack", "replication", "--dataset",
         "digits,digits[members=16]", "--profile", "smoke", "--benchmark-disable",
         "--no-report"]


def _pytest_args(tmp_path, *extra):
    return [sys.executable, "-m", "pytest", "benchmarks/", *CELLS, "--cache-dir",
            str(tmp_path / "cache"), "--results", str(tmp_path / "results"), *extra]


def _env(tmp_path, **extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path), **extra}


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """The smoke denoiser on digits, trained once for the command-line cases below."""
    from leakbench.harness import Harness

    root = tmp_path_factory.mktemp("warm")
    h = Harness.create(profile="smoke", cache_dir=root / "cache", results=root / "results",
                       progress=False)
    h.context("digits").denoiser()
    return root / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("signum, hang, where", [
    (signal.SIGTERM, "denoiser:1", "training"),
    (signal.SIGINT, "samples:2", "sampling"),
    (signal.SIGTERM, "finding:2", "the attack"),
], ids=["SIGTERM-training", "SIGINT-sampling", "SIGTERM-attack"])
def test_interrupted_benchmark_keeps_completed_cells_and_resumes(tmp_path, warm_cache, signum,
                                                                 hang, where):
    """Cell 1 (digits) completes; a signal from outside arrives in the middle of cell 2."""
    shutil.copytree(warm_cache, tmp_path / "cache")
    (tmp_path / "hang_plugin.py").write_text(HANG_PLUGIN)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(_pytest_args(tmp_path, "-p", "hang_plugin"), cwd=ROOT,
                            env=_env(tmp_path, LEAKBENCH_TEST_HANG=hang,
                                     LEAKBENCH_TEST_READY=str(ready)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a background job inherits SIGINT ignored; a terminal's Ctrl-C is not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not ready.exists():  # cell 2 is now inside its build, holding the lock
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    cache_before = snapshot(tmp_path / "cache")
    proc.send_signal(signum)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "leakbench: interrupted; 1 cell(s) of this run are stored in" in out
    assert "rerun the same command to resume" in out
    # what was stored: cell 1, complete; nothing of cell 2
    rows = stored_rows(tmp_path / "results")
    assert {r[1] for r in rows} == {"digits"} and any(r[4] == "frac_above" for r in rows)
    assert snapshot(tmp_path / "cache") == cache_before  # no partial entry from the interruption
    assert not temp_files(tmp_path)
    assert_locks_free(tmp_path / "cache")
    assert describe_store(ResultsStore(tmp_path / "results"))[0]
    if signum != signal.SIGTERM or where != "training":
        return
    # the rerun resumes: cell 1 entirely from the cache, cell 2 built; both stored
    r = subprocess.run(_pytest_args(tmp_path, "-v"), cwd=ROOT, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
    after = snapshot(tmp_path / "cache")
    assert all(after[k] == v for k, v in cache_before.items())  # nothing rebuilt
    rows = stored_rows(tmp_path / "results")
    assert sorted({r[1] for r in rows}) == ["digits", "digits[members=16]"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["not creatable", "read-only cache"])
def test_benchmark_usage_errors_exit_4_before_any_work(tmp_path, case):
    if case == "read-only cache" and not CAN_MOUNT:
        pytest.skip("needs root and `mount -t tmpfs`")
    args = _pytest_args(tmp_path)
    if case == "not creatable":
        args[args.index("--results") + 1] = "/proc/leakbench-nope"
        expected = "Cannot create the results folder /proc/leakbench-nope"
    elif case == "read-only cache":
        cache = tmp_path / "cache"
        cache.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(cache)],
                       check=True)
        expected = f"The artifact cache {cache} is on a read-only file system"
    before = snapshot(tmp_path)
    try:
        r = subprocess.run(args, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=300)
    finally:
        if case == "read-only cache":
            subprocess.run(["umount", "-l", str(tmp_path / "cache")], capture_output=True)
    assert r.returncode == 4, r.stdout + r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert snapshot(tmp_path) == before


@needs_mount
@pytest.mark.slow
def test_benchmark_on_a_full_disk_stops_with_one_sentence(tmp_path, warm_cache, tmpfs):
    """The disk fills during the run: the cell fails naming the folder, the session stops."""
    disk = tmpfs("disk", "4m")
    shutil.copytree(warm_cache, disk / "cache")
    filled_store(tmp_path / "results")
    rows = stored_rows(tmp_path / "results")
    fill(disk)
    before = snapshot(disk)
    args = _pytest_args(tmp_path)
    args[args.index("--cache-dir") + 1] = str(disk / "cache")
    r = subprocess.run(args, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == pytest.ExitCode.INTERRUPTED, r.stdout + r.stderr
    sentence = (f"No space left for the artifact cache {disk / 'cache'} (the disk is full); free "
                "space there or point --cache-dir (or LEAKBENCH_CACHE_DIR) at a folder on "
                "another disk — nothing already stored was changed.")
    assert sentence in r.stdout and "Traceback" not in r.stdout
    assert "another exception occurred" not in r.stdout
    assert "1 failed" in r.stdout and "Interrupted" in r.stdout  # the second cell never started
    assert f"leakbench: stopped: {sentence}; 0 cell(s) of this run are stored" in r.stdout
    assert snapshot(disk) == before and not temp_files(disk)
    assert stored_rows(tmp_path / "results")[: len(rows)] == rows
