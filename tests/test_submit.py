"""``leakbench submit``: the dry run, its refusals, and a local job array against a serial run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leakbench.errors import UsageError
from leakbench.submit import Selection, merge, plan, submit_and_wait

ROOT = Path(__file__).resolve().parents[1]
SELECT = ["--defense", "ddim,cpsample", "--attack", "replication", "--profile", "smoke"]


def _no_slurm_env() -> dict[str, str]:
    """This environment with a PATH that holds Python but no Slurm command."""
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leakbench.cli", *args], cwd=ROOT,
                          env=_no_slurm_env(), capture_output=True, text=True, timeout=300)


def test_dry_run_prints_the_slurm_array_and_submits_nothing(tmp_path):
    r = _cli("submit", *SELECT, "--attack", "loss_mia", "--executor", "slurm", "--partition",
             "gpu", "--gpus", "2", "--cpus", "8", "--time", "45", "--array-parallelism", "1",
             "--device", "cuda", "--cache-dir", str(tmp_path / "cache"),
             "--results", str(tmp_path / "results"), "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "4 cell(s) in 2 task(s) (one target each)" in out
    for flag in ("--array=0-1%1", "--partition=gpu", "--gpus-per-node=2", "--cpus-per-task=8",
                 "--time=45"):
        assert f"#SBATCH {flag}" in out
    assert "-m submitit.core._submit" in out
    for cell in ("digits-ddim-replication", "digits-cpsample-replication",
                 "digits-ddim-loss_mia", "digits-cpsample-loss_mia"):
        assert f"benchmarks/test_cells.py::test_cell[{cell}]" in out
    assert out.count(f"--cache-dir {tmp_path / 'cache'}") == 2  # every task shares the cache
    assert "task-0000 " in out and "task-0001 " in out  # and writes its own results folder
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()

    r = _cli("submit", *SELECT, "--attack", "loss_mia", "--executor", "slurm", "--per-task",
             "cell", "--results", str(tmp_path / "results"), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "4 cell(s) in 4 task(s) (one cell each)" in r.stdout
    assert "#SBATCH --array=0-3%4" in r.stdout


def test_slurm_executor_without_sbatch_is_refused_in_one_sentence(tmp_path):
    r = _cli("submit", *SELECT, "--executor", "slurm", "--results", str(tmp_path / "results"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "sbatch" in lines[0] and "--executor local" in lines[0]
    assert not (tmp_path / "results").exists()


def test_options_are_checked_before_anything_is_submitted(tmp_path):
    sel = Selection.resolve(defense=["ddim"], attack=["replication"], profile="smoke",
                            device="cuda", cache_dir=tmp_path)
    with pytest.raises(UsageError, match="--gpus 1"):
        plan(selection=sel, executor="local", gpus=0, results=tmp_path)
    with pytest.raises(UsageError, match="--array-parallelism"):
        plan(selection=sel, executor="local", parallelism=0, results=tmp_path)
    with pytest.raises(UsageError, match="replication"):  # unknown names list the known ones
        Selection.resolve(attack=["replicaton"], profile="smoke", cache_dir=tmp_path)


def _leaderboard(results: Path) -> list[dict]:
    r = _cli("leaderboard", "--results", str(results), "--format", "json", "--no-timings")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_local_array_shares_the_cache_and_merges_into_the_serial_leaderboard(tmp_path, monkeypatch):
    # The local tasks inherit this process's environment: give them the serial run's thread
    # count, or float reductions (the classifier's loss) differ in the last bits.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # A serial run of the same benchmark command, with a cache of its own.
    serial = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", *SELECT, "--no-report", "-q",
         "--cache-dir", str(tmp_path / "serial-cache"), "--results", str(tmp_path / "serial")],
        cwd=ROOT, env=_no_slurm_env(), capture_output=True, text=True, timeout=900)
    assert serial.returncode == 0, serial.stdout[-2000:]

    # The same cells as two local processes at once, on one fresh shared cache.
    sel = Selection.resolve(defense=["ddim,cpsample"], attack=["replication"], profile="smoke",
                            cache_dir=tmp_path / "shared-cache")
    p = plan(selection=sel, executor="local", parallelism=2, results=tmp_path / "array")
    assert len(p.tasks) == 2
    outcomes = submit_and_wait(p, progress=False, poll_s=0.5)
    assert [c["outcome"] for o in outcomes for c in o["cells"]] == ["passed", "passed"], outcomes
    assert len({o["pid"] for o in outcomes}) == 2
    assert max(o["started"] for o in outcomes) < min(o["ended"] for o in outcomes)  # overlapped

    # Both tasks needed the public and the fine-tuned denoiser: one trained each, one loaded it.
    for kind in ("pretrained", "denoiser"):
        events = [(o["index"], e) for o in outcomes for e in o["events"] if e["kind"] == kind]
        assert len({e["key"] for _, e in events}) == 1
        assert sorted(e["status"] for _, e in events) == ["built", "hit"], events
        assert len({i for i, _ in events}) == 2
    assert (tmp_path / "array" / p.folder.name / "task-0000" / "leakbench.db").is_file()
    assert (tmp_path / "array" / p.folder.name / "task-0001" / "leakbench.db").is_file()

    run_ids = merge(p, outcomes)
    assert len(run_ids) == 2
    assert merge(p, outcomes) == []  # merging again adds nothing
    merged = _leaderboard(tmp_path / "array")
    assert merged and merged == _leaderboard(tmp_path / "serial")
