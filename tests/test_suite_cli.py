"""End to end through the real command lines: pytest benchmarks/ and the leakbench CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
from dataclasses import dataclass
from leakbench import ATTACKS, DEFENSES, Attack, AuditTarget, Defense, Finding, Metric

@dataclass(frozen=True)
class NoisyParams:
    scale: float = 1.0

@DEFENSES.register("throwaway")
class Throwaway(Defense):
    """Samples pure noise: replicates nothing."""
    name = "throwaway"
    Params = NoisyParams
    def train(self, ctx):
        return {}
    def wrap(self, artifacts, ctx):
        import torch
        def draw(n, seed):
            g = torch.Generator().manual_seed(seed)
            return (torch.rand((n, *ctx.splits.image_shape), generator=g) * 2 - 1) * self.params.scale, {}
        return AuditTarget(key=ctx.target_key(self), model=None, schedule=ctx.schedule,
                           splits=ctx.splits, ctx=ctx, draw=draw, info={"train_seconds": 0.0})

@ATTACKS.register("count")
class Count(Attack):
    name = "count"
    def run(self, target, ctx):
        return Finding([Metric("n_samples", float(len(target.sample(8))), direction=None)])
'''


def _pytest(*args, cwd=ROOT, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "leakbench.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_throwaway_plugin_runs_through_the_benchmark(tmp_path):
    (tmp_path / "throwaway_plugin.py").write_text(PLUGIN)
    res = tmp_path / "results"
    r = _pytest("benchmarks/", "-p", "throwaway_plugin", "--defense", "throwaway[scale=0.5]",
                "--attack", "replication,count", "--profile", "smoke", "--cache-dir",
                str(tmp_path / "cache"), "--results", str(res), "--benchmark-disable",
                env_extra={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    # the undefended reference runs beside it, unasked, and is compared with
    assert "4 passed" in r.stdout
    assert "leakbench leaderboard" in r.stdout and "throwaway[scale=0.5]" in r.stdout
    assert "ddim (reference)" in r.stdout
    assert "verdicts against the reference" in r.stdout
    (verdict,) = [x for x in r.stdout.splitlines()
                  if x.strip().startswith("throwaway[scale=0.5] on digits (smoke): ")]
    assert "replication frac_above" in verdict and "count n_samples" in verdict
    index = res / "report" / "index.html"  # the session publishes the report and says where
    assert f"report: {index}" in r.stdout
    assert "throwaway[scale=0.5]" in index.read_text()
    out = _cli("leaderboard", "--results", str(res), "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    by = {(x["attack"], x["metric"]): x for x in rows}
    assert by[("count", "n_samples")]["value"] == 8
    assert by[("replication", "frac_above")]["value"] == 0.0  # noise replicates nothing
    assert by[("replication", "frac_above")]["defense"] == "throwaway[scale=0.5]"
    assert {x["defense"] for x in rows} == {"ddim", "throwaway[scale=0.5]"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--defense", "dddim"], "Unknown defense 'dddim'. Did you mean 'ddim'? Known: "),
        (["--attack", "replicaton"], "Unknown attack 'replicaton'. Did you mean 'replication'?"),
        (["--dataset", "digitz"], "Unknown dataset 'digitz'. Did you mean 'digits'?"),
        (["--profile", "huge"], "Unknown profile 'huge'; choose one of: smoke, default, paper."),
        (["--defense", "ddim[alpha=1]"], "defense 'ddim' has no parameter 'alpha'"),
        (["--attack", "replication[quantile=2]"], "quantile=2.0 must be in [0.5, 1)"),
        (["--dataset", "medmnist"], "needs an argument: write medmnist:<flag>"),
    ],
)
def test_bad_names_are_usage_errors(tmp_path, args, message):
    r = _pytest("benchmarks/", *args, "--results", str(tmp_path))
    assert r.returncode == 4, r.stdout + r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_missing_dataset_file_stops_the_run_once_before_any_cell(tmp_path):
    r = _pytest("benchmarks/", "--dataset", f"npz:{tmp_path}/none.npz", "--profile", "smoke",
                "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
                "--benchmark-disable")
    out = r.stdout + r.stderr
    assert r.returncode == 4, out
    assert out.count("none.npz does not exist; check the path after 'npz:'.") == 1, out
    assert "Traceback" not in out and "During handling" not in out
    assert " passed" not in out and " failed" not in out  # no cell ran
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.json"))


def _medmnist_file(folder, drop=(), **overrides):
    """breastmnist.npz in the official layout (small), with arrays replaced or dropped."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
              for s, n in (("train", 40), ("val", 8), ("test", 8))}
    arrays.update(overrides)
    np.savez(folder / "breastmnist.npz", **{k: v for k, v in arrays.items() if k not in drop})


@pytest.mark.parametrize("case, dataset, sentence", [
    ("missing file", "medmnist:breastmnist", "MedMNIST file breastmnist.npz not found (looked in "),
    ("unknown flag", "medmnist:breastmnst", "Unknown MedMNIST flag 'breastmnst'. Did you mean "
                                            "'breastmnist'?"),
    ("wrong layout", "medmnist:breastmnist", "has no 'train_images' (it has: images); expected "
                                             "the official MedMNIST layout"),
    ("NaN", "medmnist:breastmnist", "1 image(s) contain NaN or infinite values; remove or fix "
                                    "them."),
    ("no val split", "medmnist:breastmnist[split=official]", "has no 'val_images'"),
])
def test_unreadable_medmnist_stops_the_run_once_before_any_cell(tmp_path, case, dataset,
                                                                sentence):
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    if case == "wrong layout":
        np.savez(data / "breastmnist.npz", images=np.zeros((40, 28, 28), np.uint8))
    elif case == "NaN":
        bad = np.random.default_rng(0).random((40, 28, 28)).astype(np.float32)
        bad[3, 5, 5] = np.nan
        _medmnist_file(data, train_images=bad)
    elif case == "no val split":
        _medmnist_file(data, drop=("val_images",))
    r = _pytest("benchmarks/", "--dataset", dataset, "--data-root", str(data), "--profile",
                "smoke", "--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
                "--benchmark-disable")
    out = r.stdout + r.stderr
    assert r.returncode == 4, out
    assert out.count(sentence) == 1, out
    assert "Traceback" not in out and "During handling" not in out
    assert " passed" not in out and " failed" not in out and "test_cell" not in out  # no cell ran


def test_list_json_and_table():
    r = _cli("list", "--json")
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert {"defenses", "attacks", "datasets", "features"} <= set(listing)
    assert any(d["name"] == "ddim" for d in listing["defenses"])
    assert "replication" in _cli("list").stdout


def test_leaderboard_without_store_says_what_to_do(tmp_path):
    r = _cli("leaderboard", "--results", str(tmp_path / "nothing"))
    assert r.returncode == 2
    assert "run `pytest benchmarks/` first" in r.stderr and "Traceback" not in r.stderr


def _leaderboard_json(results):
    out = _cli("leaderboard", "--results", str(results), "--format", "json", "--no-timings")
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
def test_same_seed_same_leaderboard_serial_and_parallel(tmp_path):
    """Two cold runs (one of them on two xdist workers) give byte-identical leaderboards."""
    (tmp_path / "throwaway_plugin.py").write_text(PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    common = ["benchmarks/", "-p", "throwaway_plugin", "--defense", "ddim,throwaway",
              "--attack", "replication,count", "--profile", "smoke", "--benchmark-disable", "-q"]
    r1 = _pytest(*common, "--cache-dir", str(tmp_path / "c1"), "--results", str(tmp_path / "r1"),
                 env_extra=env)
    assert r1.returncode == 0, r1.stdout + r1.stderr
    r2 = _pytest(*common, "-n", "2", "--cache-dir", str(tmp_path / "c2"),
                 "--results", str(tmp_path / "r2"), env_extra=env)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "leakbench leaderboard" in r2.stdout  # the xdist controller prints it too
    a, b = _leaderboard_json(tmp_path / "r1"), _leaderboard_json(tmp_path / "r2")
    assert a == b
    assert len(json.loads(a)) > 10


@pytest.mark.slow
def test_cells_as_separate_jobs_merge_into_the_same_leaderboard(tmp_path):
    """A job array: one process per cell, one shared cache, one results store per job."""
    (tmp_path / "throwaway_plugin.py").write_text(PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    cells = _cli("cells", "--defense", "ddim", "--attack", "replication").stdout.split()
    assert cells == ["benchmarks/test_cells.py::test_cell[digits-ddim-replication]"]
    node_ids = ["benchmarks/test_cells.py::test_cell[digits-ddim-replication]",
                "benchmarks/test_cells.py::test_cell[digits-throwaway-replication]"]
    common = ["-p", "throwaway_plugin", "--defense", "ddim,throwaway", "--attack", "replication",
              "--profile", "smoke", "--benchmark-disable", "-q", "--cache-dir", str(tmp_path / "c")]
    for i, node in enumerate(node_ids):
        r = _pytest(node, *common, "--results", str(tmp_path / f"job{i}"), env_extra=env)
        assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
    merged = _cli("leaderboard", "--results", str(tmp_path / "job0"), "--results",
                  str(tmp_path / "job1"), "--format", "json", "--no-timings")
    serial = _pytest("benchmarks/", *common, "--results", str(tmp_path / "serial"), env_extra=env)
    assert serial.returncode == 0, serial.stdout + serial.stderr
    assert merged.stdout == _leaderboard_json(tmp_path / "serial")


def test_an_attack_that_does_not_apply_skips_its_cell_with_its_sentence(tmp_path):
    """one_run needs audit canaries: on plain digits its cells are skipped, the run succeeds."""
    r = _pytest("benchmarks/test_cells.py", "--defense", "ddim", "--attack", "one_run",
                "--profile", "smoke", "--cache-dir", str(tmp_path / "cache"),
                "--results", str(tmp_path / "results"), "-rs", "-p", "no:randomly")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "1 skipped" in r.stdout and "audit_canaries=M" in r.stdout
    assert "failed" not in r.stdout
