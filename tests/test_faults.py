"""Faults: processes killed mid-write, corrupted files, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import torch

from leakbench.api import Finding, Metric
from leakbench.cache import ArtifactCache, content_key
from leakbench.results import ResultsStore


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
