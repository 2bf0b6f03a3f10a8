"""Performance benchmarks of the suite itself: run with ``pytest benchmarks/perf -m perf``.

Every test here is marked ``perf`` and skipped unless ``-m perf`` is given, so the
default ``pytest benchmarks/`` run measures defenses and attacks, not the suite.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    wanted = "perf" in (config.getoption("markexpr") or "")
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.perf)
            if not wanted:
                item.add_marker(pytest.mark.skip(reason="performance benchmark; run with -m perf"))
