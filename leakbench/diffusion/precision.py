"""Numeric precision of the networks: fp32 (the default) or bf16 autocast.

Under ``bf16`` a network's forward pass runs inside ``torch.autocast(device_type,
dtype=torch.bfloat16)`` (matmuls and convolutions in bf16, reductions and norms as
autocast decides) and returns fp32.  Everything outside the forward pass stays fp32:
the weights, the Adam state and the EMA weights, the losses, the DDIM updates, the
guidance's log-probability, every statistic an attack computes, FAISS and the DP
accountant.  bf16 needs no loss scaling (it has fp32's exponent range).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def resolve_precision(name: str | None) -> str:
    """'fp32' (default) or 'bf16'; anything else ends in one sentence."""
    from leakbench.errors import UsageError

    name = (name or "fp32").lower()
    if name not in PRECISIONS:
        raise UsageError(f"Unknown precision {name!r}; use fp32 (the default) or bf16.")
    return name


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 on ``device_type`` ('cpu' or 'cuda') for ``bf16``; a no-op for fp32.

    fp32 enters nothing, so an fp32 run computes exactly what it did before precision existed.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)
