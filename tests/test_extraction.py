"""Extraction (generate and filter): flags from the samples alone, scored against the members."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from audits.extraction import (
    ExtractionParams,
    budgets,
    flag_groups,
    link_threshold,
    score_flags,
)
from leakbench.features.extractors import Pixels
from leakbench.features.index import nearest_member_similarity

K = 10
SHAPE = (1, 16, 16)


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Random images with structure (a blurred field), in [-1, 1]: stand-ins for members."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn((n, *SHAPE), generator=g), 5, 1, 2)
    return x / x.abs().amax(dim=(1, 2, 3), keepdim=True)


def noise_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *SHAPE), generator=g) * 2 - 1


def flag(samples: torch.Tensor, null: torch.Tensor) -> np.ndarray:
    """The attacker's whole decision: samples and a null, nothing else."""
    extract = Pixels()
    return flag_groups(extract(samples), link_threshold(extract(null)), K)


def score(labels, samples, members):
    extract = Pixels()
    sims, idx = nearest_member_similarity(extract(samples), extract(members))
    return score_flags(labels, sims, idx, replica_threshold=0.9)


def test_copies_of_three_members_are_exactly_what_is_extracted():
    members = smooth_images(40, seed=1)
    chosen = [3, 17, 29]
    copies = members[chosen].repeat_interleave(K, dim=0)
    order = torch.randperm(200 + 3 * K, generator=torch.Generator().manual_seed(3))
    samples = torch.cat([noise_images(200, seed=2), copies])[order]
    labels = flag(samples, noise_images(len(samples), seed=4))
    s = score(labels, samples, members)
    assert sorted(s.extracted_members.tolist()) == chosen
    assert s.flagged == 3 * K and s.replicas == s.flagged  # precision 1
    # Two members closer to each other than any two null (noise) images are linked into one
    # group; extraction counts distinct members, not groups.
    assert 1 <= s.groups <= 3


def test_no_repeats_nothing_flagged():
    samples = torch.cat([noise_images(200, seed=5), smooth_images(40, seed=6)])
    labels = flag(samples, torch.cat([noise_images(200, seed=7), smooth_images(40, seed=8)]))
    assert (labels == -1).all()


def test_fewer_copies_than_k_are_not_flagged():
    members = smooth_images(10, seed=1)
    samples = torch.cat([noise_images(100, seed=2), members[:2].repeat_interleave(K - 1, dim=0)])
    assert (flag(samples, noise_images(len(samples), seed=4)) == -1).all()


def test_flagging_needs_no_members():
    """The flagging step's inputs are features and numbers; no member can be in reach."""
    for fn in (flag_groups, link_threshold):
        params = set(inspect.signature(fn).parameters)
        assert not {"members", "splits", "target", "ctx"} & params, fn.__name__
    # A near-copy chain (each a small perturbation of one image) is one group.
    base = smooth_images(1, seed=9)
    g = torch.Generator().manual_seed(10)
    chain = base + 0.02 * torch.randn((K + 2, *SHAPE), generator=g)
    labels = flag(torch.cat([noise_images(100, seed=11), chain]), noise_images(112, seed=12))
    assert (labels[100:] >= 0).all() and (labels[:100] == -1).all()
    assert len(set(labels[100:].tolist())) == 1


def test_link_threshold_rises_with_the_null_budget():
    """More null samples come closer by chance, so the calibrated link threshold rises."""
    extract = Pixels()
    small = link_threshold(extract(noise_images(100, seed=13)))
    large = link_threshold(extract(noise_images(1600, seed=13)))
    assert large > small


def test_budgets_and_params():
    from leakbench.errors import UsageError
    from leakbench.harness import resolve_plugin
    from leakbench.registry import ATTACKS

    assert budgets(100, 16) == [100, 400, 1600]
    assert budgets(100, 1) == [100]
    for bad in ("max_factor=8", "min_cluster=1", "link_rank=10"):
        with pytest.raises(UsageError, match=bad.split("=")[0]):
            resolve_plugin(ATTACKS, f"extraction[{bad}]")
    assert ExtractionParams().max_factor == 1


def test_extraction_on_a_smoke_target(smoke_harness):
    f = smoke_harness.run_cell("digits", "ddim", "extraction[max_factor=4,min_cluster=3]")
    n = smoke_harness.profile.n_samples
    assert f.info["budgets"] == [n, 4 * n]
    assert f.info["threat_model"] == "black-box"
    for b in (n, 4 * n):
        assert f"extracted_at_{b}" in {m.name for m in f.metrics}
        assert 0 <= f.value(f"extracted_at_{b}") <= f.value(f"replicated_members_at_{b}")
    assert f.value("extracted") == f.value(f"extracted_at_{4 * n}")
    assert list(f.arrays["budget_grid"]) == [n, 4 * n]
    # The first N samples are the target's own cached draw, shared with replication.
    target = smoke_harness.target("digits", "ddim").target
    assert (n, 0) in target.sample_info
