"""One benchmark per (dataset, defense, attack) cell, ids from the specs (``-k cpsample`` works).

Each cell trains or loads its target, runs the attack, stores the finding in the
results store and records its wall time with pytest-benchmark.
"""

from __future__ import annotations

import contextlib

import pytest

from leakbench.errors import LeakbenchError, NotApplicable, StorageError

pytestmark = pytest.mark.cell


def test_cell(cell, harness, benchmark, request):
    dataset, defense, attack = cell
    # Let progress bars of long work reach the terminal (``-q`` turns them off).
    capture = request.config.pluginmanager.getplugin("capturemanager")
    uncaptured = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    error = None
    try:
        with uncaptured:
            finding = benchmark.pedantic(harness.run_cell, args=(dataset, defense, attack),
                                         rounds=1, iterations=1)
    except NotApplicable as exc:  # e.g. one_run on a dataset without audit canaries
        pytest.skip(str(exc))
    except StorageError as exc:  # a full disk or unwritable folder: later cells would fail too
        error = request.session.shouldstop = request.config._leakbench.stopped_by = str(exc)
    except LeakbenchError as exc:
        error = str(exc)
    if error is not None:
        pytest.fail(error, pytrace=False)
    benchmark.extra_info.update({m.name: m.value for m in finding.metrics})
    assert finding.metrics, f"{attack} on {defense} reported no metric"
