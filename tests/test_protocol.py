"""The papers' protocol: a public split, pretraining on it, fine-tuning on the members."""

from __future__ import annotations

import pytest
import torch

from leakbench.data.sources import open_dataset
from leakbench.data.splits import SplitOptions, make_splits


def _splits(members=32, public=200, seed=3, canary=True):
    return make_splits(open_dataset("digits"), image_size=8, n_members=members, pool_size=256,
                       n_public=public, seed=seed, options=SplitOptions(canary=canary))


def test_public_is_disjoint_from_members_holdout_and_the_canary_original():
    s = _splits()
    public = set(s.manifest["public"])
    assert len(public) == s.n_public == 200 and len(s.public) == 200
    assert not public & set(s.manifest["members"])
    assert not public & set(s.manifest["holdout"])
    assert s.canary["source_index"] not in public
    # No public image is the canary member's clean original (nor its fingerprinted copy).
    clean = s.extras["canary_clean"]
    assert not (s.public == clean).flatten(1).all(1).any()
    # The population (thresholds, permutation test) never includes public images.
    assert len(s.population) == len(s.members) + len(s.holdout)


def test_public_does_not_depend_on_the_members():
    a, b = _splits(members=32), _splits(members=48)
    assert a.manifest["public"] == b.manifest["public"] and a.public_hash == b.public_hash
    assert a.hash != b.hash
    assert _splits(seed=4).public_hash != a.public_hash


def test_public_zero_is_the_from_scratch_split():
    s = _splits(public=0)
    assert s.public is None and s.n_public == 0 and s.public_hash is None
    assert s.manifest["public"] == []


def test_too_many_public_images_is_one_sentence():
    from leakbench.errors import DataError

    with pytest.raises(DataError, match="fewer public images"):
        _splits(members=500, public=1000)


def test_changing_the_members_reuses_the_pretrained_checkpoint(smoke_harness):
    h = smoke_harness
    a, b = h.context("digits[members=16]"), h.context("digits[members=24]")
    assert a.pretraining_spec() == b.pretraining_spec()
    assert a.training_spec() != b.training_spec()
    a.denoiser(), b.denoiser()
    events = [(e.kind, e.status) for e in h.cache.events]
    assert events.count(("pretrained", "built")) == 1
    assert events.count(("pretrained", "hit")) == 1
    assert events.count(("denoiser", "built")) == 2


def test_fine_tuning_starts_from_the_pretrained_weights(tmp_path, monkeypatch):
    import dataclasses

    from leakbench.config import PROFILES
    from leakbench.harness import Harness

    # With no fine-tuning steps the fine-tuned model is the pretrained one, weight for weight.
    monkeypatch.setitem(PROFILES, "smoke", dataclasses.replace(PROFILES["smoke"], train_steps=0))
    h = Harness.create(profile="smoke", cache_dir=tmp_path / "c", results=tmp_path / "r",
                       progress=False)
    ctx = h.context("digits")
    tuned, public = ctx.denoiser().state_dict(), ctx.public_denoiser().state_dict()
    assert all(torch.equal(tuned[k], public[k]) for k in public)
    # Without a public split there is nothing to start from: a fresh initialisation.
    scratch = h.context("digits[public=0]")
    assert scratch.public_denoiser() is None and scratch.pretraining_spec() is None
    fresh = scratch.denoiser().state_dict()
    assert not all(torch.equal(fresh[k], public[k]) for k in public)
    # ... trained on the members for pretraining's and fine-tuning's steps together.
    assert scratch.denoiser_stats()["train_steps"] == scratch.member_train_steps == 20 + 0
    assert ctx.denoiser_stats()["train_steps"] == ctx.member_train_steps == 0


def test_pretraining_and_fine_tuning_seconds_are_separate_figures(smoke_harness):
    built = smoke_harness.target("digits", "ddim")
    figures = {m.name: m.value for m in built.defense.figures(built.target)}
    assert figures["pretrain_seconds"] > 0 and figures["train_seconds"] > 0
    scratch = smoke_harness.target("digits[public=0]", "ddim")
    assert "pretrain_seconds" not in {m.name for m in scratch.defense.figures(scratch.target)}


@pytest.mark.parametrize("defense", ["dpsgd", "ambient"])
def test_training_time_defenses_fine_tune_from_public_pretraining(smoke_harness, defense):
    built = smoke_harness.target("digits", defense)
    assert built.target.info["pretrain_seconds"] > 0
    kinds = {e.kind for e in smoke_harness.cache.events}
    assert ("pretrained" if defense == "dpsgd" else "ambient_pretrained") in kinds


def test_clipping_is_a_sampler_setting():
    from leakbench.diffusion.sampling import ddim_sample, ddim_timesteps
    from leakbench.diffusion.schedule import make_schedule

    sched = make_schedule("linear", 100)

    def wild(x, t):  # a predictor whose x̂₀ leaves [-1, 1] by far
        return -3 * torch.ones_like(x)

    def run(**kw):
        seen = []
        x = torch.zeros(2, 1, 4, 4)
        ddim_sample(wild, x, ddim_timesteps(100, 5), schedule=sched,
                    callback=lambda d: seen.append(float(d["x0"].abs().max())), **kw)
        return max(seen)

    assert run() > 1.5  # paper 001's DDIM: x̂₀ is left as predicted (the default)
    assert run(clip_denoised=True) <= 1.0
