"""Shared fixtures for the unit and integration tests (smoke sizes, temporary folders)."""

from __future__ import annotations

import pytest


@pytest.fixture
def smoke_harness(tmp_path):
    """A harness at the smoke profile with its own cache and results store."""
    from leakbench.harness import Harness

    return Harness.create(profile="smoke", seed=0, cache_dir=tmp_path / "cache",
                          results=tmp_path / "results", progress=False)


@pytest.fixture
def smoke_ctx(smoke_harness):
    return smoke_harness.context("digits")


@pytest.fixture(scope="session")
def report_store(tmp_path_factory):
    """One smoke-profile store shared by the report and browser tests, built once.

    ``.store`` holds three defense variants (``.defenses``) × ``.attacks``.
    """
    from types import SimpleNamespace

    from leakbench.harness import Harness

    defenses = ["ddim", "cpsample", "cpsample[alpha=0.5,scale=10]"]
    attacks = ["replication", "loss_mia", "fid"]
    tmp = tmp_path_factory.mktemp("report-store")
    h = Harness.create(profile="smoke", cache_dir=tmp / "cache", results=tmp / "results",
                       progress=False, command="test_report")
    for defense in defenses:
        for attack in attacks:
            h.run_cell("digits", defense, attack)
    h.finish()
    return SimpleNamespace(store=h.store, defenses=defenses, attacks=attacks)
