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
