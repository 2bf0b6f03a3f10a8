"""The public checkpoint that ships with leakbench: its key, and that a run uses it."""

from __future__ import annotations

import pytest
import torch

import leakbench.weights as weights
from leakbench.cache import ArtifactCache, content_key
from leakbench.config import get_profile
from leakbench.context import RunContext


def test_the_bundled_defaults_public_checkpoint_ships(tmp_path):
    ctx = RunContext(profile=get_profile("default"), cache=ArtifactCache(tmp_path))
    spec = ctx.pretraining_spec()
    key = content_key("pretrained", spec)
    assert (weights.SHIPPED_ROOT / "pretrained" / f"{key}.pt").exists(), (
        f"the default profile's public pretraining spec moved (key {key}); refresh the shipped "
        "checkpoint as leakbench/weights/__init__.py says, and delete the stale one")
    payload = weights.shipped_payload("pretrained", spec)
    model = ctx.new_unet()
    model.load_state_dict(payload["state_dict"])  # it fits the default profile's U-Net
    assert payload["stats"]["train_steps"] == ctx.profile.pretrain_steps
    assert len(list((weights.SHIPPED_ROOT / "pretrained").glob("*.pt"))) == 1  # no stale files


def _smoke(cache_dir):
    return RunContext(profile=get_profile("smoke"), cache=ArtifactCache(cache_dir))


def test_a_shipped_checkpoint_replaces_pretraining(tmp_path, monkeypatch):
    trained = _smoke(tmp_path / "a")
    want = trained.public_state_dict()  # trained here, 20 smoke steps
    key = content_key("pretrained", trained.pretraining_spec())
    shipped = tmp_path / "shipped"
    weights.ship(tmp_path / "a", key, root=shipped)
    monkeypatch.setattr(weights, "SHIPPED_ROOT", shipped)

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained although a shipped checkpoint matches the spec")

    monkeypatch.setattr("leakbench.diffusion.training.train_denoiser", no_training)
    fresh = _smoke(tmp_path / "b")
    got = fresh.public_state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    (event,) = [e for e in fresh.cache.events if e.kind == "pretrained"]
    assert event.status == "built" and "shipped with leakbench" in event.label
    assert fresh.cache.load("pretrained", key)[1] == "hit"  # copied into the run's cache


def test_a_corrupt_shipped_checkpoint_is_ignored_and_the_model_trained(tmp_path, monkeypatch):
    trained = _smoke(tmp_path / "a")
    trained.public_state_dict()
    key = content_key("pretrained", trained.pretraining_spec())
    shipped = tmp_path / "shipped"
    path = weights.ship(tmp_path / "a", key, root=shipped)
    path.write_bytes(path.read_bytes()[:-16] + bytes(16))
    monkeypatch.setattr(weights, "SHIPPED_ROOT", shipped)
    fresh = _smoke(tmp_path / "b")
    with pytest.warns(UserWarning, match="does not match its recorded SHA-256; ignoring it"):
        fresh.public_state_dict()
    (event,) = [e for e in fresh.cache.events if e.kind == "pretrained"]
    assert "shipped" not in event.label


def test_ship_refuses_a_missing_entry_and_other_kinds(tmp_path):
    with pytest.raises(FileNotFoundError, match="no valid pretrained entry"):
        weights.ship(tmp_path, "0" * 64, root=tmp_path / "shipped")
    with pytest.raises(ValueError, match="only pretrained checkpoints are shipped"):
        weights.ship(tmp_path, "0" * 64, kind="samples", root=tmp_path / "shipped")
