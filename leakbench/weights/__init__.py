"""Checkpoints that ship with leakbench: the bundled default's public pretraining.

Pretraining on the ``public`` split is the longest step of a cold run (2,000 steps, about
5 minutes on a 2-core CPU at the default profile) and never sees a member, so its result
is the same for every user of the bundled default: it is what the papers start from (a
public pretrained model, fine-tuned on the members). This folder holds such checkpoints
in the artifact cache's own layout (``<kind>/<key>.pt`` beside ``<key>.json`` with the
spec that trained it and the payload's SHA-256), read through the same verified loader
(``torch.load(weights_only=True)``). A run whose pretraining spec has a shipped entry
copies it into its cache instead of training; any other spec (another dataset, seed,
profile, device or precision) trains as before. A shipped file whose hash does not match
its JSON is ignored with a warning and the model is trained.

Shipped today: ``digits``, seed 0, default profile, CPU, fp32 (``tests/test_weights.py``
fails when that spec's key moves, and says how to refresh the file)::

    pytest benchmarks/ --defense ddim --attack fid --profile default --cache-dir C
    python -m leakbench.weights C <key>      # copies C/pretrained/<key>.* here
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

from leakbench.cache import ArtifactCache, content_key

SHIPPED_ROOT = Path(__file__).resolve().parent
SHIPPED_KINDS = ("pretrained",)


def shipped_payload(kind: str, spec: dict[str, Any], root: Path | None = None) -> Any | None:
    """The shipped artifact for ``spec``, or None when leakbench ships none (or it is corrupt)."""
    store = ArtifactCache(root or SHIPPED_ROOT)
    key = content_key(kind, spec)
    payload, status = store.load(kind, key)
    if status == "corrupt":
        warnings.warn(f"the shipped {kind} checkpoint {key[:12]} in {store.root / kind} does not "
                      "match its recorded SHA-256; ignoring it and training instead "
                      "(reinstall leakbench to restore it)", stacklevel=2)
    return payload if status == "hit" else None


def ship(cache_dir: str | Path, key: str, kind: str = "pretrained",
         root: Path | None = None) -> Path:
    """Copy one entry of an artifact cache into the shipped folder (for maintainers)."""
    if kind not in SHIPPED_KINDS:
        raise ValueError(f"only {', '.join(SHIPPED_KINDS)} checkpoints are shipped, not {kind!r}")
    src = ArtifactCache(cache_dir)
    payload_path, meta_path = src.paths(kind, key)
    if src.load(kind, key)[1] != "hit":
        raise FileNotFoundError(f"no valid {kind} entry {key} in {src.root}; run the benchmark "
                                "that trains it with --cache-dir pointing there first")
    dest = (root or SHIPPED_ROOT) / kind
    dest.mkdir(parents=True, exist_ok=True)
    for path in (payload_path, meta_path):
        shutil.copyfile(path, dest / path.name)
    return dest / payload_path.name

