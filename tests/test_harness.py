from __future__ import annotations

import numpy as np

from leakbench.harness import Harness


def _harness(tmp_path, results):
    return Harness.create(profile="smoke", cache_dir=tmp_path / "cache", results=tmp_path / results,
                          progress=False)


def test_warm_rerun_reuses_findings_and_reports_the_same(tmp_path):
    cold = _harness(tmp_path, "r1")
    f1 = cold.run_cell("digits", "ddim", "replication")
    cold.finish()
    assert {e.kind for e in cold.cache.events if e.status == "built"} >= {"denoiser", "samples",
                                                                          "finding"}
    warm = _harness(tmp_path, "r2")
    f2 = warm.run_cell("digits", "ddim", "replication")
    warm.finish()
    assert all(e.status == "hit" for e in warm.cache.events)
    assert "samples" not in {e.kind for e in warm.cache.events}  # nothing was sampled again
    assert [(m.name, m.value, m.ci_low, m.n) for m in f1.metrics] == \
        [(m.name, m.value, m.ci_low, m.n) for m in f2.metrics]
    assert np.array_equal(f1.arrays["top_samples"], f2.arrays["top_samples"])
    figures = {r["metric"]: r["value"] for r in warm.store.rows() if r["attack"] == "defense"}
    cold_figures = {r["metric"]: r["value"] for r in cold.store.rows() if r["attack"] == "defense"}
    assert figures == cold_figures and "sampling_seconds_per_image" in figures


def test_changing_an_attack_param_recomputes(tmp_path):
    h = _harness(tmp_path, "r")
    a = h.run_cell("digits", "ddim", "replication")
    b = h.run_cell("digits", "ddim", "replication[quantile=0.9]")
    assert b.value("threshold") < a.value("threshold")
    assert [e.status for e in h.cache.events if e.kind == "finding"] == ["built", "built"]
