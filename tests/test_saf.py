"""SAF fingerprint extraction: the canary, the classifiers, the statistics and an end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audits.saf import SAFParams
from leakbench import fingerprint as fp
from leakbench.data.splits import canary_radius, circle_mask


def test_canary_circle_inside_exact_grey_and_radius_and_clean_original_absent(smoke_ctx):
    splits = smoke_ctx.splits
    c = splits.canary
    size = splits.image_shape[-1]
    cy, cx = c["center"]
    r = c["radius"]

    # The manifest records the canary, and the circle lies entirely inside the image.
    assert set(c) >= {"member_position", "source_index", "center", "radius", "grey"}
    assert splits.manifest["canary"] == c
    assert c["source_index"] == splits.manifest["members"][c["member_position"]]
    assert r == canary_radius(size) and r >= 2
    assert r <= cy <= size - 1 - r and r <= cx <= size - 1 - r

    # x_SAF carries exactly the grey level on the circle and equals x_p elsewhere.
    mask = torch.from_numpy(circle_mask(size, (cy, cx), r))
    x_saf = splits.members[c["member_position"]]
    x_p = splits.extras["canary_clean"]
    assert int(mask.sum()) == sum(1 for y in range(size) for x in range(size)
                                  if (y - cy) ** 2 + (x - cx) ** 2 <= r * r)
    assert torch.all(x_saf[:, mask] == c["grey"] * 2 - 1)
    assert torch.equal(x_saf[:, ~mask], x_p[:, ~mask])
    assert not torch.equal(x_saf, x_p)

    # The clean original is not among the training members.
    diffs = (splits.members - x_p.unsqueeze(0)).abs().flatten(1).amax(1)
    assert float(diffs.min()) > 0


def test_add_circles_paints_only_chosen_images_fully_inside():
    gen = torch.Generator().manual_seed(0)
    x = torch.full((50, 1, 12, 12), -1.0)
    which = torch.arange(50) % 2 == 0
    out = fp.add_circles(x, which, 3, 0.5, gen)
    painted = (out == 0.0).flatten(1).sum(1)
    full = int(circle_mask(12, (6, 6), 3).sum())
    assert torch.all(painted[which] == full)  # whole circle inside: no pixel clipped
    assert torch.all(painted[~which] == 0)


def test_augmix_goes_to_the_requested_fraction_of_images():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (400, 1, 16, 16)).float() / 127.5 - 1.0  # already 8-bit levels
    plain = dict(max_shift=0, noise_std=0.0, flip=False, max_blur=0.0)
    same = fp.augment(x, torch.Generator().manual_seed(0), mix=0.0, **plain)
    assert torch.equal(same, x)
    out = fp.augment(x, torch.Generator().manual_seed(0), mix=0.5, **plain)
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert 0.3 < changed < 0.6
    with pytest.raises(ValueError, match="augmix=1.5 must be a fraction"):
        SAFParams(augmix=1.5)


def test_classifier_separates_constructed_positives_from_negatives():
    gen = torch.Generator().manual_seed(1)
    base = torch.rand(256, 1, 8, 8, generator=gen) * 0.6 - 1.0  # dark textured images

    def batch(b, g):
        x = base[torch.randint(len(base), (b,), generator=g)]
        y = torch.rand(b, generator=g) < 0.5
        return fp.add_circles(fp.augment(x, g, max_shift=1, noise_std=0.1, flip=True),
                              y, 2, 0.5, g), y.long()

    torch.manual_seed(0)
    model = fp.train_classifier(fp.resnet_small(18, 1), batch, steps=40, batch_size=32,
                                learning_rate=1e-3, seed=0, progress=False)
    x, y = batch(200, torch.Generator().manual_seed(99))
    v = fp.validate(fp.positive_prob(model, x) > 0.5, y.numpy())
    assert v.accuracy >= 0.9 and v.fpr <= 0.1


def test_upper_darboux_on_hand_made_curves():
    assert fp.upper_darboux(np.array([0, 1, 3]), np.array([1.0, 0.5, 0.0])) == pytest.approx(2 / 3)
    assert fp.upper_darboux(np.array([0, 10]), np.array([0.0, 0.0])) == 0.0
    assert fp.upper_darboux(np.array([0, 5, 10]), np.array([1.0, 1.0, 1.0])) == 1.0
    # A single spike at the last point covers only the last interval.
    assert fp.upper_darboux(np.array([0, 2, 4, 8]), np.array([0, 0, 0, 1.0])) == pytest.approx(0.5)


@pytest.mark.parametrize("k,n", [(0, 1000), (3, 1000), (17, 200), (50, 50)])
def test_clopper_pearson_and_binomial_test_agree_with_statsmodels_and_scipy(k, n):
    from scipy.stats import binom
    from statsmodels.stats.proportion import proportion_confint

    from audits.saf import _binom_less
    from leakbench.stats import clopper_pearson

    lo, hi = clopper_pearson(k, n)
    ref_lo, ref_hi = proportion_confint(k, n, alpha=0.05, method="beta")
    assert lo == pytest.approx(ref_lo, abs=1e-10) and hi == pytest.approx(ref_hi, abs=1e-10)
    assert _binom_less(k, n, 1 / 128) == pytest.approx(binom.cdf(k, n, 1 / 128), rel=1e-9)


def test_saf_refuses_a_dataset_without_canary(smoke_harness):
    from leakbench.errors import DataError

    with pytest.raises(DataError, match="canary is off"):
        smoke_harness.run_cell("digits[canary=false]", "ddim", "saf")


def _fake_medmnist(root, flag: str, channels: int, n: int = 300) -> None:
    rng = np.random.default_rng(0)
    shape = (28, 28) if channels == 1 else (28, 28, 3)
    arrays = {}
    for split, m in (("train", n), ("val", 20), ("test", 20)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (m, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (m, 1), dtype=np.uint8)
    np.savez(root / f"{flag}.npz", **arrays)


@pytest.mark.parametrize("flag,channels", [("pathmnist", 3), ("pneumoniamnist", 1)])
def test_saf_end_to_end_on_medmnist(tmp_path, flag, channels):
    from leakbench.harness import Harness

    _fake_medmnist(tmp_path, flag, channels)
    h = Harness.create(profile="smoke", cache_dir=tmp_path / "cache", results=tmp_path / "res",
                       data_root=tmp_path, progress=False)
    # With the gate off the smoke classifiers report the full set of metrics.
    f = h.run_cell(f"medmnist:{flag}", "ddim", "saf[min_tpr=0.0,max_fpr=1.0,reverse_draws=4]")
    assert h.context(f"medmnist:{flag}").splits.channels == channels
    for name in ("detector_tpr", "detector_fpr", "identity_tpr", "identity_fpr",
                 "x_saf_copies_tpr"):
        m = f[name]
        assert 0.0 <= m.ci_low <= m.value <= m.ci_high <= 1.0
    n = f["p_reproduce"].n
    assert n == max(32, 5 * 32)  # smoke's n_samples against the power rule N ≥ 5·|D|
    assert f.value("p_reproduce") == f.info["k"] / n
    assert f.value("ratio_to_memorization") == pytest.approx(f.value("p_reproduce") * 32)
    assert f.value("binom_p_floor") == pytest.approx((1 - 1 / 32) ** n)
    assert f.value("binom_p") >= f.value("binom_p_floor") - 1e-12
    assert 0.0 <= f.value("rho") <= 1.0 and 0.0 <= f.value("binom_p") <= 1.0
    assert f.arrays["saf_t"].shape == f.arrays["saf_p"].shape
    assert f.arrays["saf_t"][0] == 0 and f.arrays["saf_t"][-1] == 99
    # Every detection is checked: one nearest member and distance each, the misses counted.
    nearest = f.arrays["detected_nearest_member"]
    assert len(nearest) == len(f.arrays["detected_saf_distance"]) == f.info["k"]
    position = f.info["canary"]["member_position"]
    assert f.value("generated_false_positives") == int((nearest != position).sum())
    assert "η = 1" in f["rho"].description and "rejection" in f["rho"].description


@pytest.mark.parametrize("flag,channels", [("pathmnist", 3), ("pneumoniamnist", 1)])
def test_canary_at_64_px_reads_the_official_64_file(tmp_path, flag, channels):
    from leakbench.data.sources import open_dataset
    from leakbench.data.splits import make_splits

    rng = np.random.default_rng(1)
    shape = (64, 64) if channels == 1 else (64, 64, 3)
    arrays = {f"{s}_{kind}": (rng.integers(0, 256, (40, *shape), dtype=np.uint8) if kind == "images"
                              else rng.integers(0, 2, (40, 1), dtype=np.uint8))
              for s in ("train", "val", "test") for kind in ("images", "labels")}
    np.savez(tmp_path / f"{flag}_64.npz", **arrays)
    splits = make_splits(open_dataset(f"medmnist:{flag}", data_root=tmp_path), image_size=64,
                         n_members=8, pool_size=40, seed=3)
    c = splits.canary
    assert splits.image_shape == (channels, 64, 64)
    assert c["radius"] == 9  # round(4 · 64 / 28)
    cy, cx = c["center"]
    assert 9 <= cy <= 54 and 9 <= cx <= 54
    mask = torch.from_numpy(circle_mask(64, (cy, cx), 9))
    x_saf = splits.members[c["member_position"]]
    assert torch.all(x_saf[:, mask] == 0.0)  # grey 0.5 in [0, 1] is 0 in [-1, 1]
    diffs = (splits.members - splits.extras["canary_clean"].unsqueeze(0)).abs().flatten(1).amax(1)
    assert float(diffs.min()) > 0


def test_classifier_cache_key_covers_the_code_that_trains_them(smoke_ctx, monkeypatch):
    import audits.saf as saf
    from leakbench.cache import content_key
    from leakbench.harness import resolve_plugin
    from leakbench.registry import ATTACKS

    attack = resolve_plugin(ATTACKS, "saf")
    sizes = saf.resolved_sizes(attack.params, smoke_ctx.profile, len(smoke_ctx.splits.members))

    def key():
        return content_key("saf-classifiers",
                           attack.classifier_spec(smoke_ctx, smoke_ctx.splits, sizes))

    before = key()
    assert key() == before  # stable while nothing changes

    def edited_training(ctx, splits, sizes, p):  # same name's role, another body
        return {}

    monkeypatch.setattr(saf, "train_saf_classifiers", edited_training)
    after_training_edit = key()
    assert after_training_edit != before
    monkeypatch.undo()
    assert key() == before
    monkeypatch.setattr(saf, "fp", torch.nn.functional)  # an edited fingerprint module
    assert key() not in (before, after_training_edit)


def test_canary_is_the_same_member_across_member_counts():
    from leakbench.data.sources import open_dataset
    from leakbench.data.splits import make_splits

    source = open_dataset("digits")
    seen = []
    for n in (64, 128, 256, 512):
        s = make_splits(source, image_size=16, n_members=n, pool_size=2 * n, seed=0, n_public=300)
        c = s.canary
        x_p = s.extras["canary_clean"]
        # x_SAF sits among these members, and x_p (its clean original) never does.
        assert torch.equal(s.members[c["member_position"]][:, ~torch.from_numpy(
            circle_mask(16, tuple(c["center"]), c["radius"]))], x_p[:, ~torch.from_numpy(
                circle_mask(16, tuple(c["center"]), c["radius"]))])
        seen.append((c["source_index"], tuple(c["center"]), x_p))
    assert len({(i, ctr) for i, ctr, _ in seen}) == 1
    assert all(torch.equal(seen[0][2], x) for _, _, x in seen[1:])
    # Another seed picks another canary (the choice is seeded, not fixed).
    other = make_splits(source, image_size=16, n_members=64, pool_size=128, seed=1, n_public=300)
    assert other.canary["source_index"] != seen[0][0]


def _rates(tp: int, n_pos: int, fp_: int, n_neg: int) -> dict:
    fires = np.r_[np.ones(tp), np.zeros(n_pos - tp), np.ones(fp_), np.zeros(n_neg - fp_)]
    return vars(fp.validate(fires, np.r_[np.ones(n_pos), np.zeros(n_neg)]))


def test_tpr_gate_rejects_a_detector_that_misses_half_the_positives_at_95_accuracy():
    from audits.saf import gate_failures

    # 10 % positives, half of them missed, no false alarm: 95 % accurate.
    half = _rates(50, 100, 0, 900)
    assert half["accuracy"] == pytest.approx(0.95) and half["fpr"] == 0.0
    good = _rates(500, 500, 0, 500)
    figures = {"detector": half, "identity": good, "x_saf_copies": _rates(128, 128, 0, 0),
               "fires_on_x_saf": True}
    failed = gate_failures(figures, SAFParams())
    assert [m for m, _ in failed] == ["detector_tpr"]
    assert "C_SAF: true-positive rate 0.500" in failed[0][1]

    # A flawless detector passes; an FPR whose upper bound exceeds the bar fails by name.
    passing = {**figures, "detector": good}
    assert gate_failures(passing, SAFParams()) == []
    noisy = _rates(500, 500, 20, 500)  # FPR 0.04, upper bound ≈ 0.061 > 0.05
    assert [m for m, _ in gate_failures({**passing, "identity": noisy}, SAFParams())] == [
        "identity_fpr"]
    # Both must fire on x_SAF itself and on its augmented copies.
    assert [m for m, _ in gate_failures({**passing, "fires_on_x_saf": False},
                                        SAFParams())] == ["x_saf_copies_tpr"]
    assert [m for m, _ in gate_failures({**passing, "x_saf_copies": _rates(100, 128, 0, 0)},
                                        SAFParams())] == ["x_saf_copies_tpr"]
    # A perfect record on too few trials is not enough: the lower bound decides.
    assert [m for m, _ in gate_failures({**passing, "detector": _rates(10, 10, 0, 500)},
                                        SAFParams())] == ["detector_tpr"]


def test_below_the_gate_the_finding_claims_no_probability_and_names_the_rate(smoke_harness):
    # Smoke classifiers (10 steps) cannot clear a TPR bar of 1.
    f = smoke_harness.run_cell("digits", "ddim", "saf[min_tpr=1.0]")
    names = [m.name for m in f.metrics]
    assert "p_reproduce" not in names and "rho" not in names
    assert f.headline in ("detector_tpr", "identity_tpr", "x_saf_copies_tpr")
    assert "true-positive rate" in f.info["below_gate"] or "x_SAF" in f.info["below_gate"]


def test_sample_count_follows_the_power_rule():
    from audits.saf import resolved_sizes
    from leakbench.config import get_profile

    profile = get_profile("default")
    for d in (64, 128, 256, 512):
        n = resolved_sizes(SAFParams(), profile, d)["n_samples"]
        assert n >= 5 * d and n >= profile.n_samples
        assert (1 - 1 / d) ** n < 0.01  # K = 0 would reject H0 p = 1/|D| at 1 %
    assert resolved_sizes(SAFParams(n_samples=100), profile, 512)["n_samples"] == 100


def test_nearest_members_finds_x_saf_for_a_noisy_copy_and_another_member_otherwise():
    from audits.saf import nearest_members

    gen = torch.Generator().manual_seed(0)
    members = torch.rand(20, 1, 8, 8, generator=gen) * 2 - 1
    x_saf = members[7]
    detected = torch.stack([x_saf + 0.01 * torch.randn(1, 8, 8, generator=gen), members[3]])
    nearest, dist, to_saf = nearest_members(detected, members, x_saf)
    assert nearest.tolist() == [7, 3]
    assert dist[1] == pytest.approx(0.0, abs=1e-9)
    assert to_saf[1] == pytest.approx(float((members[3] - x_saf).norm()))
    assert dist[0] == pytest.approx(to_saf[0]) and to_saf[0] < 0.2
    empty = nearest_members(members[:0], members, x_saf)
    assert all(len(a) == 0 for a in empty)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_rho_reverses_with_the_requested_eta_through_the_one_sampler(smoke_harness, monkeypatch,
                                                                     eta):
    import audits.saf as saf

    seen = []
    real = saf.ddim_sample

    def spy(*args, **kwargs):
        seen.append(kwargs["eta"])
        return real(*args, **kwargs)

    monkeypatch.setattr(saf, "ddim_sample", spy)
    f = smoke_harness.run_cell("digits", "ddim",
                               f"saf[min_tpr=0.0,max_fpr=1.0,reverse_draws=2,eta={eta}]")
    assert seen and set(seen) == {eta}
    assert f"η = {eta:g}" in f.info["reverse"]
    assert ("ancestral" in f.info["reverse"]) == (eta == 1.0)
