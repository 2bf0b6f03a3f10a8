"""SIGTERM handled like Ctrl-C, so a pre-empted job cleans up as an interrupted one does.

A cluster scheduler that pre-empts a job sends SIGTERM (then SIGKILL after a grace
period).  Python's default for SIGTERM ends the process at once; raising
:class:`Terminated` (a ``KeyboardInterrupt``) instead unwinds the stack: temporary
files of a half-written artifact are removed, an open SQLite transaction is rolled
back, file locks are released, and pytest stops the session the way Ctrl-C does, with
every completed cell already stored.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"received {signal.Signals(signum).name}")


def sigterm_as_interrupt() -> Any:
    """Install the SIGTERM handler; return the previous handler (``None`` if not installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def restore_sigterm(previous: Any) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
