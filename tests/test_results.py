from __future__ import annotations

import json

import numpy as np

from leakbench.api import Finding, Metric
from leakbench.leaderboard import leaderboard_frame, render_json, render_table
from leakbench.results import ResultsStore


def _record(store, run, value, defense="ddim"):
    store.record(run, dataset="digits", defense=defense, defense_params={}, attack="replication",
                 attack_params={"feature": "pixels"},
                 finding=Finding([Metric("frac_above", value, 0.1, 0.9, None, 10, "lower")],
                                 arrays={"sims": np.arange(3.0)}, headline="frac_above"))


def test_rerun_adds_and_leaderboard_shows_newest(tmp_path):
    store = ResultsStore(tmp_path)
    r1 = store.start_run(profile="smoke", seed=0)
    _record(store, r1, 0.5)
    _record(store, r1, 0.2, defense="cpsample")
    r2 = store.start_run(profile="smoke", seed=0)
    _record(store, r2, 0.7)
    rows = store.rows()
    assert len(rows) == 3  # nothing deleted
    df = leaderboard_frame(rows)
    got = {(r["defense"], r["value"]) for r in df.to_dict("records")}
    assert got == {("ddim", 0.7), ("cpsample", 0.2)}
    recs = json.loads(render_json(df))
    for key in ["dataset", "defense", "attack", "metric", "value", "ci_low", "ci_high", "p_value",
                "n", "profile", "seed"]:
        assert key in recs[0]
    assert "↓frac_above" in render_table(df)
    f = store.findings()
    assert len(f) == 3 and store.load_arrays(f[0]["arrays_path"])["sims"].tolist() == [0, 1, 2]
    runs = store.runs()
    assert {r["run_id"] for r in runs} == {r1.run_id, r2.run_id} and runs[0]["machine"]


def test_profiles_are_separate_cells(tmp_path):
    store = ResultsStore(tmp_path)
    _record(store, store.start_run(profile="default", seed=0), 0.3)
    _record(store, store.start_run(profile="smoke", seed=0), 0.9)
    df = leaderboard_frame(store.rows())
    assert sorted(df["profile"]) == ["default", "smoke"]
