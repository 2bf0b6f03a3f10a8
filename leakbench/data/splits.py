"""Public / members / holdout / population splits with a hashed manifest.

One seeded permutation of the source orders every image.  ``public`` is its last
``n_public`` images: the data a denoiser is pretrained on before it ever sees a member
(paper 001 fine-tunes a pretrained model), never a member, never used for thresholds.
The pool is the start of the permutation (at most ``pool_size`` images, never reaching
into ``public``); members are its first ``n_members`` (what the denoiser is fine-tuned
on), holdout the rest (same distribution, never trained on), population both.
With ``audit_canaries=m`` the last m pool images become audit canaries (Steinke, Nasr and
Jagielski 2023): each joins the members independently with probability 1/2 by a seeded
draw recorded in the manifest; they are never public and never holdout.
Because ``public`` is cut from the end of the same permutation, it does not change
when the member count does, so the pretrained checkpoint is shared across member counts.
With ``split=official`` a source's published split is used instead (MedMNIST: members =
the official train split, holdout = val + test; see :func:`_official_splits`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from leakbench.data.base import DatasetSource
from leakbench.errors import DataError

SPLIT_VERSION = "3"


@dataclass(frozen=True)
class SplitOptions:
    """Dataset spec params: ``digits[canary=false]``, ``medmnist:pathmnist[members=256]``."""

    canary: bool = True  # replace one member by its fingerprinted copy (SAF, paper 003 Sec. 3.3)
    members: int | None = None  # member-set size; None: the profile's n_members
    public: int | None = None  # public (pretraining) images; None: the profile's n_public; 0: none
    audit_canaries: int = 0  # one-run audit canaries, each a member with probability 1/2; 0: none
    # "seeded": members and holdout drawn by seed from the pool; "official": the source's
    # published split (MedMNIST: members = the train split, holdout = val + test)
    split: Literal["seeded", "official"] = "seeded"

    def __post_init__(self):
        if self.audit_canaries < 0:
            raise ValueError(f"audit_canaries={self.audit_canaries} must be 0 (no audit) or more "
                             "images")
        if self.members is not None and self.members < 2:
            raise ValueError(f"members={self.members} must be at least 2")
        if self.public is not None and self.public < 0:
            raise ValueError(f"public={self.public} must be 0 (no pretraining) or more images")


def canary_radius(image_size: int) -> int:
    """4 px at 28 px, scaled with the image size, never below 2 px (paper 003, Fig. 2)."""
    return max(2, round(4 * image_size / 28))


def circle_mask(image_size: int, center: tuple[int, int], radius: int) -> np.ndarray:
    """Boolean (H, W) mask of the filled circle (y − cy)² + (x − cx)² ≤ r²."""
    yy, xx = np.mgrid[:image_size, :image_size]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def insert_fingerprint(image: np.ndarray, center: tuple[int, int], radius: int,
                       grey: float) -> np.ndarray:
    """x_SAF: ``image`` (H, W, C) in [0, 1] with a filled circle of one constant grey level."""
    out = image.copy()
    out[circle_mask(image.shape[0], center, radius)] = grey
    return out


def place_canary(rng: np.random.Generator, image_size: int, member_idx: np.ndarray,
                 rank: np.ndarray) -> dict[str, Any]:
    """Pick the fingerprinted member and a circle that lies entirely inside the image.

    x_p is the member that comes first in ``rank`` (source indices in a seeded order), so
    the same seed picks the same x_p whenever it is among the members: a size sweep keeps
    one canary image instead of mixing image difficulty into the size effect.
    """
    r = canary_radius(image_size)
    if 2 * r + 1 > image_size:
        raise DataError(f"Images of {image_size} px are too small for a fingerprint of radius {r}.")
    cy, cx = (int(v) for v in rng.integers(r, image_size - r, size=2))
    first = np.flatnonzero(np.isin(rank, member_idx))[0]
    position = int(np.flatnonzero(member_idx == rank[first])[0])
    return {"member_position": position, "center": [cy, cx], "radius": r, "grey": 0.5}


@dataclass
class Splits:
    """Images as float32 tensors (N, C, H, W) in [-1, 1], with the manifest that made them.

    ``hash`` identifies the whole manifest; ``public_hash`` only what the public images
    depend on (the source, the seed, the size and the public indices), so a model
    pretrained on ``public`` is keyed independently of the members.
    """

    members: Any
    holdout: Any
    member_labels: np.ndarray | None
    holdout_labels: np.ndarray | None
    manifest: dict[str, Any]
    hash: str
    public: Any = None
    public_labels: np.ndarray | None = None
    public_hash: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    audit_canaries: Any = None  # (m, C, H, W) one-run audit canaries, or None
    audit_included: np.ndarray | None = None  # (m,) bool: which canaries are among the members

    @property
    def population(self):
        """Members and holdout (never the public images)."""
        import torch

        return torch.cat([self.members, self.holdout])

    @property
    def n_public(self) -> int:
        return 0 if self.public is None else int(len(self.public))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.members.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.members.shape[1])

    @property
    def canary(self) -> dict[str, Any] | None:
        """Where the fingerprint went (position among members, center, radius, grey), or None."""
        return self.manifest.get("canary")


def manifest_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def make_splits(
    source: DatasetSource,
    *,
    image_size: int,
    n_members: int,
    pool_size: int,
    seed: int,
    n_public: int = 0,
    options: SplitOptions | None = None,
) -> Splits:
    """Deterministic splits: same source, sizes and seed give the same manifest and hash.

    With ``options.canary`` (the default) one random member x_p is replaced by x_SAF,
    its copy with a synthetic anatomical fingerprint; the clean x_p is not trained on.
    """
    options = options or SplitOptions()
    if options.split == "official":
        return _official_splits(source, image_size=image_size, seed=seed, options=options)
    m_audit = options.audit_canaries
    if options.members is not None:
        n_members = options.members
    if options.public is not None:
        n_public = options.public
    raw = source.load(image_size)
    n = len(raw.images)
    if raw.assigned is not None:
        return _given_splits(source, raw, image_size=image_size, seed=seed, options=options)
    if n_members < 1:
        raise DataError(f"The profile asks for {n_members} members; it needs at least 1.")
    if n - n_public - m_audit < 2 * n_members:
        canaries = f", {m_audit} audit canaries" if m_audit else ""
        raise DataError(
            f"Dataset {source.spec} has {n} images but the profile needs {n_members} members plus "
            f"at least as many holdout images ({2 * n_members} in all) besides {n_public} public "
            f"images{canaries}; use a smaller profile, fewer public images (dataset param "
            f"public=N){', fewer audit canaries' if m_audit else ''} or a larger dataset."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    public_idx = np.sort(order[n - n_public:]) if n_public else np.zeros(0, np.int64)
    pool = order[: max(min(pool_size, n - n_public), 2 * n_members + m_audit)]
    member_idx = np.sort(pool[:n_members])
    holdout_idx = np.sort(pool[n_members:len(pool) - m_audit])
    # Audit canaries: the end of the pool, so public, members and holdout stay as without them
    # (bar the holdout's last m); each is a member by a fair coin of its own seeded stream.
    audit_idx = np.sort(pool[len(pool) - m_audit:]) if m_audit else np.zeros(0, np.int64)
    included = np.random.default_rng([seed, 0xA0D17]).integers(0, 2, size=m_audit).astype(bool)
    member_idx = np.r_[member_idx, audit_idx[included]].astype(np.int64)
    fingerprint = source.fingerprint(image_size)
    manifest = {
        "version": SPLIT_VERSION,
        "dataset": fingerprint,
        "seed": int(seed),
        "image_size": int(image_size),
        "n_source": int(n),
        "members": member_idx.tolist(),
        "holdout": holdout_idx.tolist(),
        "public": public_idx.tolist(),
        "canary": None,
    }
    if m_audit:  # only then: without canaries every manifest (and hash) stays as it was
        manifest["audit_canaries"] = {"indices": audit_idx.tolist(),
                                      "included": included.astype(int).tolist()}
    if raw.names is not None:
        manifest["files"] = {k: [raw.names[i] for i in manifest[k]]
                             for k in ("members", "holdout", "public")}
    # The canary is the permutation's first image: a member at every member count.
    return _finish_splits(source, raw, manifest, image_size=image_size, seed=seed,
                          options=options, rank=order)


def _official_splits(source: DatasetSource, *, image_size: int, seed: int,
                     options: SplitOptions) -> Splits:
    """The source's published split (``split=official``; MedMNIST's train / val / test).

    Members are the official train split, all of it (or a seeded ``members=N`` of it);
    the holdout is the val and test splits, which the model never sees.  The profile's
    member, pool and public sizes do not apply.  ``public`` must be disjoint from both and
    the file holds nothing else, so by default there is none: the denoiser trains on the
    members from scratch, as paper 003 trains its score models.  ``public=N`` takes a
    seeded N images of val + test for pretraining instead, and the holdout is the rest.
    """
    if options.audit_canaries:
        raise DataError(f"Dataset {source.spec} with split=official has every train image as a "
                        "member, so the param audit_canaries= does not apply; drop one of them.")
    raw = source.load_official(image_size)
    train = np.asarray(raw.assigned["train"], np.int64)
    unseen = np.concatenate([np.asarray(raw.assigned[k], np.int64)
                             for k in raw.assigned if k != "train"])
    n_members = len(train) if options.members is None else options.members
    n_public = options.public or 0
    if n_members > len(train):
        raise DataError(f"Dataset {source.spec} has {len(train)} images in its official train "
                        f"split, fewer than members={n_members}; give members={len(train)} or "
                        "fewer, or drop members= to use all of them.")
    if len(unseen) - n_public < 2:
        raise DataError(f"Dataset {source.spec} has {len(unseen)} val and test images; public="
                        f"{n_public} leaves fewer than 2 for the holdout; give a smaller public=N.")
    member_idx = np.sort(np.random.default_rng(seed).permutation(train)[:n_members])
    order = np.random.default_rng([seed, 0x9AB1]).permutation(unseen)
    public_idx = np.sort(order[len(order) - n_public:]) if n_public else np.zeros(0, np.int64)
    holdout_idx = np.sort(order[:len(order) - n_public])
    manifest = {
        "version": SPLIT_VERSION,
        "dataset": source.fingerprint(image_size),
        "split": "official",
        "official_sizes": {k: int(len(v)) for k, v in raw.assigned.items()},
        "seed": int(seed),
        "image_size": int(image_size),
        "n_source": int(len(raw.images)),
        "members": member_idx.tolist(),
        "holdout": holdout_idx.tolist(),
        "public": public_idx.tolist(),
        "canary": None,
    }
    return _finish_splits(source, raw, manifest, image_size=image_size, seed=seed,
                          options=options)


def _given_splits(source: DatasetSource, raw, *, image_size: int, seed: int,
                  options: SplitOptions) -> Splits:
    """The split a source prescribes (a folder's ``members/``, ``holdout/``, ``public/``).

    The member and public counts are those of the files: the profile's ``n_members`` and
    ``n_public`` and the dataset params ``members=`` / ``public=`` do not apply.
    """
    if options.members is not None or options.public is not None:
        raise DataError(f"Dataset {source.spec} prescribes its split in subfolders, so the params "
                        "members= and public= do not apply; move files between the subfolders "
                        "instead.")
    if options.audit_canaries:
        raise DataError(f"Dataset {source.spec} prescribes its split in subfolders, so the param "
                        "audit_canaries= does not apply; audit a folder split by seed instead.")
    idx = {k: np.asarray(raw.assigned.get(k, np.zeros(0, np.int64)), np.int64)
           for k in ("members", "holdout", "public")}
    if len(idx["members"]) < 2:
        raise DataError(f"Dataset {source.spec} has {len(idx['members'])} image(s) in members/; "
                        "an audit needs at least 2 members.")
    if len(idx["holdout"]) < 2:
        raise DataError(f"Dataset {source.spec} has {len(idx['holdout'])} image(s) in holdout/; "
                        "an audit needs at least 2 images the model never saw.")
    manifest = {
        "version": SPLIT_VERSION,
        "dataset": source.fingerprint(image_size),
        "seed": int(seed),
        "image_size": int(image_size),
        "n_source": int(len(raw.images)),
        "members": idx["members"].tolist(),
        "holdout": idx["holdout"].tolist(),
        "public": idx["public"].tolist(),
        "canary": None,
        "files": {k: [raw.names[i] for i in v] for k, v in idx.items()},
    }
    return _finish_splits(source, raw, manifest, image_size=image_size, seed=seed,
                          options=options)


def _finish_splits(source: DatasetSource, raw, manifest: dict[str, Any], *, image_size: int,
                   seed: int, options: SplitOptions, rank: np.ndarray | None = None) -> Splits:
    """Insert the canary (if asked), hash the manifest and cut the image tensors.

    ``rank`` orders the source indices for the canary's choice (default: a permutation
    seeded by ``seed``); the first member in it becomes x_p.
    """
    import torch

    member_idx = np.asarray(manifest["members"], np.int64)
    holdout_idx = np.asarray(manifest["holdout"], np.int64)
    public_idx = np.asarray(manifest["public"], np.int64)
    n_public = len(public_idx)
    audit = manifest.get("audit_canaries")
    audit_idx = np.asarray(audit["indices"] if audit else [], np.int64)
    included = np.asarray(audit["included"] if audit else [], bool)
    m_audit = len(audit_idx)
    n_members = len(member_idx) - int(included.sum())  # the canary is an ordinary member
    # What the public images depend on, and nothing else: never the members.
    public_manifest = {key: manifest[key] for key in
                       ("version", "dataset", "seed", "image_size", "n_source", "public")}
    images = raw.images
    extras: dict[str, Any] = {"source_info": raw.info}
    if options.canary:
        if rank is None:
            rank = np.random.default_rng([seed, 0xCA4B]).permutation(len(raw.images))
        ordinary = member_idx[:n_members]  # never an audit canary
        canary = place_canary(np.random.default_rng([seed, 0xCA4A]), image_size, ordinary, rank)
        canary["source_index"] = int(member_idx[canary["member_position"]])
        manifest["canary"] = canary
        clean = raw.images[canary["source_index"]]
        images = raw.images.copy()
        images[canary["source_index"]] = insert_fingerprint(
            clean, tuple(canary["center"]), canary["radius"], canary["grey"])
        extras["canary_clean"] = torch.from_numpy(clean).permute(2, 0, 1) * 2.0 - 1.0

    def to_tensor(idx: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2)
        return (x * 2.0 - 1.0).contiguous()

    labels = raw.labels
    return Splits(
        members=to_tensor(member_idx),
        holdout=to_tensor(holdout_idx),
        member_labels=None if labels is None else labels[member_idx],
        holdout_labels=None if labels is None else labels[holdout_idx],
        manifest=manifest,
        hash=manifest_hash(manifest),
        public=to_tensor(public_idx) if n_public else None,
        public_labels=None if labels is None or not n_public else labels[public_idx],
        public_hash=manifest_hash(public_manifest) if n_public else None,
        extras=extras,
        audit_canaries=to_tensor(audit_idx) if m_audit else None,
        audit_included=included if m_audit else None,
    )
