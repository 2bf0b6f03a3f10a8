"""User-facing errors: each carries one sentence that says what to do."""

from __future__ import annotations


class LeakbenchError(Exception):
    """Base class of errors that are the user's to fix; shown without a traceback."""


class UsageError(LeakbenchError):
    """A bad name, spec, option or parameter on the command line."""


class NotApplicable(UsageError):
    """An attack that cannot run on this target or dataset (e.g. ``one_run`` without audit
    canaries): the benchmark skips the cell with this sentence instead of failing it."""


class DataError(LeakbenchError):
    """A dataset that is missing, malformed or too small for the profile."""


class StorageError(LeakbenchError):
    """A folder or file that cannot be created, read or written (missing, read-only, full,
    a file where a folder is expected); nothing already stored has been changed."""


class StoreError(StorageError):
    """A results store that is not ours, is damaged, or was written by another version."""


class DataWarning(UserWarning):
    """A dataset that can be used but differs from what its source publishes (e.g. a
    MedMNIST file whose MD5 is not the official one); the run goes on and records it."""
