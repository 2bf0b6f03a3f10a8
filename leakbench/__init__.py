"""leakbench: a privacy-audit benchmark suite for diffusion models."""

from leakbench.api import Attack, AuditTarget, Defense, Finding, Metric, NoParams
from leakbench.errors import DataError, LeakbenchError, StorageError, StoreError, UsageError
from leakbench.registry import ATTACKS, DATASETS, DEFENSES, FEATURES

__all__ = ["Attack", "AuditTarget", "Defense", "Finding", "Metric", "NoParams", "DataError",
           "LeakbenchError", "StorageError", "StoreError", "UsageError", "ATTACKS", "DATASETS",
           "DEFENSES", "FEATURES"]
