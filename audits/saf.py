"""SAF fingerprint extraction (paper 003, Sec. 3.1–3.4 and 5).

One member x_p was replaced by x_SAF, its copy with a synthetic anatomical
fingerprint (a filled grey circle; see ``leakbench.data.splits``).  Two classifiers
decide whether an image is that private sample: C_SAF detects the fingerprint and
C_ID recognises x_p.  The attack reports

* how often the target reproduces it (k of N samples where both fire) against the
  rate 1/|D| of a model that samples its training images uniformly, and
* the diffuse-and-reverse indicator: noise x_SAF to step t, run the target's own
  reverse process back to 0 (ancestral, η = 1, by default; the paper's is stochastic),
  and measure p̂_t, the fraction that is still x_SAF; ρ is the upper Darboux sum of p̂_t
  over t, normalised to [0, 1].

Both numbers are claimed only above a gate: each classifier's true- and false-positive
rates, separately and by their Clopper–Pearson bounds, and both classifiers firing on
x_SAF and its augmented copies.  Every detection is checked: its nearest member and its
distance to x_SAF are kept, and one not nearest to x_SAF is a false positive.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from leakbench import fingerprint as fp
from leakbench.api import Attack, AuditTarget, Finding, Metric
from leakbench.diffusion.sampling import ddim_sample, ddim_timesteps
from leakbench.errors import DataError
from leakbench.stats import clopper_pearson


@dataclass(frozen=True)
class SAFParams:
    """Sizes default to ``profile.extras["saf_<name>"]``, then to the values noted here."""

    classifier_steps: int | None = None  # None: extras, else profile.saf_classifier_steps
    batch_size: int | None = None  # None: extras, else 32
    learning_rate: float = 1e-3
    noise_std: float = 0.1  # largest Gaussian noise std added in training ([-1, 1] scale)
    max_shift: int = 1  # random shifts in pixels
    max_blur: float = 0.0  # largest Gaussian blur sigma in pixels (blur costs detector accuracy)
    augmix: float = 0.5  # fraction of training images that get AugMix (paper 003, App. A)
    # The gate: below it no reproduction probability is reported.  The 95 % Clopper–Pearson
    # bounds must clear the bars: each classifier's TPR (and both firing on augmented copies
    # of x_SAF) from below, each FPR from above.  min_tpr 0 turns the TPR checks off, x_SAF
    # itself included; max_fpr 1 the FPR checks.
    min_tpr: float = 0.9
    max_fpr: float = 0.05
    # Augmented views per validation image (positives and negatives alike): 4 gives ≥ 100
    # trials per rate at 64 members, where a flawless classifier's bounds clear the bars.
    val_views: int = 4
    saf_copies: int = 128  # augmented copies of x_SAF both classifiers must fire on
    threshold: float = 0.5  # a classifier fires when P(positive) exceeds it
    n_samples: int | None = None  # None: max(extras or profile n_samples, 5·|D|) (power rule)
    grid_points: int | None = None  # None: extras, else 21 values of t over 0..T−1
    reverse_draws: int | None = None  # M per t; None: extras, else 16
    eta: float = 1.0  # reverse process for rho: 1 ancestral (stochastic), 0 deterministic DDIM

    def __post_init__(self):
        for name in ("classifier_steps", "batch_size", "n_samples", "reverse_draws"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}={v} must be a positive integer or None")
        if self.val_views < 1 or self.saf_copies < 1:
            raise ValueError(f"val_views={self.val_views} and saf_copies={self.saf_copies} must "
                             "be positive integers")
        if self.grid_points is not None and self.grid_points < 2:
            raise ValueError(f"grid_points={self.grid_points} must be at least 2")
        if not (0.0 <= self.min_tpr <= 1.0 and 0.0 <= self.max_fpr <= 1.0):
            raise ValueError(f"min_tpr={self.min_tpr} and max_fpr={self.max_fpr} must be rates "
                             "in [0, 1]")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold} must be in (0, 1)")
        if not 0.0 <= self.augmix <= 1.0:
            raise ValueError(f"augmix={self.augmix} must be a fraction in [0, 1]")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta={self.eta} must be in [0, 1] (1: ancestral, 0: DDIM)")
        if self.learning_rate <= 0 or min(self.noise_std, self.max_shift, self.max_blur) < 0:
            raise ValueError("learning_rate must be positive; noise_std, max_shift and max_blur "
                             "non-negative")


# N ≥ 5·|D| samples: under H0 (p = 1/|D|) P(K = 0) = (1 − 1/|D|)^N ≤ e^−5 < 0.01, so the
# binomial test can reject H0 at every member count when the canary never comes back.
SAMPLES_PER_MEMBER = 5


def resolved_sizes(p: SAFParams, profile, n_members: int | None = None) -> dict[str, int]:
    """The params' sizes with None filled from ``profile.extras`` or the defaults.

    Without an explicit ``n_samples`` the sample count is at least 5·|D| (``n_members``).
    """
    extras = profile.extras

    def pick(name: str, default: int) -> int:
        v = getattr(p, name)
        return int(v if v is not None else extras.get(f"saf_{name}", default))

    n_samples = pick("n_samples", profile.n_samples)
    if p.n_samples is None and n_members is not None:
        n_samples = max(n_samples, SAMPLES_PER_MEMBER * int(n_members))
    return {
        "classifier_steps": pick("classifier_steps", profile.saf_classifier_steps),
        "batch_size": pick("batch_size", 32),
        "n_samples": n_samples,
        "grid_points": pick("grid_points", 21),
        "reverse_draws": pick("reverse_draws", 16),
    }


def gate_failures(figures: dict[str, Any], p: SAFParams) -> list[tuple[str, str]]:
    """(metric, sentence) for every rate that keeps the classifiers below the gate.

    Each rate is judged by its 95 % Clopper–Pearson bound, so a small validation set
    cannot pass on luck, and TPR and FPR separately, so accuracy cannot hide misses.
    Empty: both classifiers may be trusted.
    """
    failed = []
    for key, who in (("detector", "C_SAF"), ("identity", "C_ID"),
                     ("x_saf_copies", "C_SAF and C_ID together on augmented copies of x_SAF")):
        v = figures[key]
        if p.min_tpr > 0 and v["tpr_ci"][0] < p.min_tpr:
            failed.append((f"{key}_tpr", f"{who}: true-positive rate {v['tpr']:.3f} (95 % lower "
                           f"bound {v['tpr_ci'][0]:.3f}, {v['n_positive']} trials) is below "
                           f"{p.min_tpr}"))
        if p.max_fpr < 1 and v["n_negative"] and v["fpr_ci"][1] > p.max_fpr:
            failed.append((f"{key}_fpr", f"{who}: false-positive rate {v['fpr']:.3f} (95 % upper "
                           f"bound {v['fpr_ci'][1]:.3f}, {v['n_negative']} trials) is above "
                           f"{p.max_fpr}"))
    if p.min_tpr > 0 and not figures["fires_on_x_saf"]:
        failed.append(("x_saf_copies_tpr", "C_SAF and C_ID do not both fire on x_SAF itself"))
    return failed


@dataclass
class Classifiers:
    detector: torch.nn.Module
    identity: torch.nn.Module
    figures: dict[str, Any]


class SAF(Attack):
    """Reproduction probability and diffuse-and-reverse indicator of a fingerprinted member."""

    name = "saf"
    version = "2"
    access = "white-box"  # p_reproduce needs samples only; rho runs the target's reverse process
    Params = SAFParams
    description = ("how often the target reproduces a fingerprinted member (C_SAF and C_ID both "
                   "fire), with the diffuse-and-reverse indicator rho")
    paper = "Quantifying Sample Anonymity with Adversarial Fingerprinting (paper 003), Sec. 3, 5"

    def run(self, target: AuditTarget, ctx) -> Finding:
        p = self.params
        splits = target.splits
        canary = splits.canary
        if canary is None:
            raise DataError("The saf attack needs the fingerprinted member, but the dataset's "
                            "canary is off; drop canary=false from the dataset spec.")
        d = int(len(splits.members))
        sizes = resolved_sizes(p, ctx.profile, d)
        x_saf = splits.members[canary["member_position"]]
        clf = self.classifiers(ctx, splits, sizes)
        figures = clf.figures
        metrics = []
        for key, who, pos, neg in (("detector", "C_SAF", "marked", "unmarked"),
                                   ("identity", "C_ID", "x_p", "other")):
            v = figures[key]
            metrics += [
                Metric(f"{key}_tpr", v["tpr"], *v["tpr_ci"], n=v["n_positive"], bounds=(0.0, 1.0),
                       description=f"{who} true-positive rate on augmented {pos} validation views"),
                Metric(f"{key}_fpr", v["fpr"], *v["fpr_ci"], n=v["n_negative"], bounds=(0.0, 1.0),
                       description=f"{who} false-positive rate on augmented {neg} validation "
                                   "views"),
            ]
        v = figures["x_saf_copies"]
        metrics.append(Metric("x_saf_copies_tpr", v["tpr"], *v["tpr_ci"], n=v["n_positive"],
                              bounds=(0.0, 1.0),
                              description="fraction of augmented copies of x_SAF where C_SAF and "
                                          "C_ID both fire"))
        info: dict[str, Any] = {"sizes": sizes, "canary": dict(canary),
                                "classifier_seconds": figures["seconds"],
                                "fires_on_x_saf": bool(figures["fires_on_x_saf"]),
                                "gate": {"min_tpr": p.min_tpr, "max_fpr": p.max_fpr}}
        arrays: dict[str, np.ndarray] = {"x_saf": x_saf.numpy().astype(np.float32)}
        failed = gate_failures(figures, p)
        if failed:
            info["below_gate"] = ("below the gate, no reproduction probability reported: "
                                  + "; ".join(sentence for _, sentence in failed))
            return Finding(metrics, arrays=arrays, info=info, headline=failed[0][0])

        def both_fire(x: torch.Tensor) -> np.ndarray:
            det = fp.positive_prob(clf.detector, x, device=ctx.device) > p.threshold
            ide = fp.positive_prob(clf.identity, x, device=ctx.device) > p.threshold
            return det & ide

        # Reproduction: k of N samples where both classifiers fire (paper 003, Sec. 3.2).
        n = sizes["n_samples"]
        samples = target.sample(n)
        hits = both_fire(samples)
        k = int(hits.sum())
        p_rep = k / n
        binom = _binom_less(k, n, 1.0 / d)
        floor = (1.0 - 1.0 / d) ** n  # binom_p at K = 0: the smallest these N can give
        val_holdout = splits.holdout[figures["val_holdout_idx"]]
        fp_count = int(both_fire(val_holdout).sum())
        lo, hi = clopper_pearson(k, n)

        # Check what was detected: each detection's nearest member (pixel L2) and its
        # distance to x_SAF; one whose nearest member is not x_SAF is a false positive.
        detected = samples[torch.from_numpy(hits)]
        nearest, nearest_dist, saf_dist = nearest_members(detected, splits.members, x_saf)
        generated_fp = int((nearest != canary["member_position"]).sum())
        metrics += [
            Metric("p_reproduce", p_rep, lo, hi, n=n, direction="lower", bounds=(0.0, 1.0),
                   description=f"{k} of {n} samples where C_SAF and C_ID both fire"),
            Metric("ratio_to_memorization", p_rep * d, lo * d, hi * d, n=n, direction="lower",
                   bounds=(0.0, None),
                   description=f"p_reproduce · |D| (|D| = {d}); 1 = samples members uniformly"),
            Metric("binom_p", binom, p_value=binom, n=n, direction="lower", bounds=(0.0, 1.0),
                   description="one-sided binomial test of H0 p = 1/|D| against H1 p < 1/|D|"),
            Metric("binom_p_floor", floor, n=n, direction=None, bounds=(0.0, 1.0),
                   description=f"binom_p if no sample reproduced x_SAF, (1 − 1/|D|)^N: the "
                               f"smallest p these N = {n} samples can give (N ≥ 5·|D| unless "
                               "n_samples is set)"),
            Metric("false_positives", fp_count, n=len(val_holdout), direction=None,
                   bounds=(0.0, None),
                   description="unseen holdout images where both classifiers fire"),
            Metric("generated_false_positives", generated_fp, n=n, direction=None,
                   bounds=(0.0, None),
                   description="detected samples whose nearest member (pixel L2) is not x_SAF "
                               "(paper 003, App. B)"),
        ]
        info.update(k=k, n=n, members=d, samples_rule=(
            "n_samples as set" if p.n_samples is not None
            else f"max(profile, {SAMPLES_PER_MEMBER}·|D|)"))
        arrays["detected"] = detected[: ctx.profile.top_k_pairs].numpy()
        arrays["detected_nearest_member"] = nearest
        arrays["detected_member_distance"] = nearest_dist
        arrays["detected_saf_distance"] = saf_dist

        # Diffuse and reverse: p̂_t = P(both fire | reverse from x_SAF noised to t) (Sec. 3.3).
        t_grid, p_hat = self.diffuse_and_reverse(target, ctx, x_saf, both_fire, sizes)
        rho = fp.upper_darboux(t_grid, p_hat)
        above = t_grid[p_hat >= 0.5]
        breakout = int(above.max()) if above.size else -1
        m = sizes["reverse_draws"]
        reverse = (f"{'ancestral' if p.eta == 1 else 'DDIM'} reverse (η = {p.eta:g}, "
                   f"{ctx.profile.ddim_steps} steps over T) of the target's predict_noise; a "
                   "sampling-time filter such as rejection's is not run, so for rejection rho "
                   "measures the unfiltered model")
        info["reverse"] = reverse
        metrics += [
            Metric("rho", rho, n=m * len(t_grid), direction="lower", bounds=(0.0, 1.0),
                   description=f"upper Darboux sum of p̂_t over t, normalised; {reverse}"),
            Metric("breakout_t", breakout, n=m, direction="lower",
                   bounds=(-1.0, float(target.schedule.num_timesteps - 1)),
                   description=f"largest t with p̂_t ≥ 0.5 (−1: none); η = {p.eta:g}"),
        ]
        arrays["saf_t"] = t_grid.astype(np.int64)
        arrays["saf_p"] = p_hat.astype(np.float64)
        return Finding(metrics, arrays=arrays, info=info, headline="p_reproduce")

    def diffuse_and_reverse(self, target: AuditTarget, ctx, x_saf: torch.Tensor, both_fire,
                            sizes: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """p̂_t on a grid of t over 0..T−1: M noisings of x_SAF to t, each run back to 0.

        Paper 003 reverses with the learned (stochastic) reverse diffusion; the engine's one
        DDIM sampler at η = 1 (the default) is that ancestral reverse on the profile's
        step grid, at η = 0 the deterministic DDIM path.
        """
        big_t = target.schedule.num_timesteps
        m = sizes["reverse_draws"]
        t_grid = np.unique(np.round(np.linspace(0, big_t - 1, sizes["grid_points"])).astype(int))
        gen = torch.Generator().manual_seed(int(ctx.seed) + 0x5AF)
        p_hat = []
        for t in tqdm(t_grid, desc="diffuse and reverse", disable=not ctx.progress, leave=False):
            # Noise x_SAF to step t: x_t = √ᾱ_t x_SAF + √(1−ᾱ_t) ε.
            x0 = x_saf.unsqueeze(0).expand(m, -1, -1, -1)
            eps = torch.randn(x0.shape, generator=gen)
            x_t = target.schedule.add_noise(x0, torch.full((m,), int(t)), eps)

            # Run the target's own reverse process from t to 0 and ask both classifiers.
            timesteps = ddim_timesteps(big_t, ctx.profile.ddim_steps, t_start=int(t))
            out = ddim_sample(target.predict_noise, x_t.to(ctx.device), timesteps,
                              schedule=target.schedule, eta=self.params.eta, generator=gen,
                              clip_denoised=ctx.profile.clip_x0).clamp(-1, 1).cpu()
            p_hat.append(float(both_fire(out).mean()))
        return t_grid, np.asarray(p_hat)

    def classifier_spec(self, ctx, splits, sizes: dict[str, int]) -> dict[str, Any]:
        """The cache spec of C_SAF and C_ID: splits, profile, seed, config and the code that
        trains them (``classifier_code_hash``), so edited training code never reuses them."""
        p = self.params
        config = {"classifier_steps": sizes["classifier_steps"], "batch_size": sizes["batch_size"],
                  "learning_rate": p.learning_rate, "noise_std": p.noise_std,
                  "max_shift": p.max_shift, "max_blur": p.max_blur,
                  "augmix": float(p.augmix),
                  "threshold": p.threshold, "val_views": p.val_views,
                  "saf_copies": p.saf_copies, "resnet_depth": ctx.profile.saf_resnet_depth,
                  "code": classifier_code_hash()}
        spec = {"splits": splits.hash, "profile": ctx.profile.to_dict(), "seed": ctx.seed,
                "config": config, "device": ctx.device.split(":")[0]}
        return spec

    def classifiers(self, ctx, splits, sizes: dict[str, int]) -> Classifiers:
        """C_SAF and C_ID, trained once per ``classifier_spec`` and cached."""
        p = self.params
        spec = self.classifier_spec(ctx, splits, sizes)
        payload = ctx.cache.get_or_build(
            "saf-classifiers", spec, lambda: train_saf_classifiers(ctx, splits, sizes, p),
            label="saf classifiers")
        depth = ctx.profile.saf_resnet_depth
        detector = fp.resnet_small(depth, splits.channels)
        detector.load_state_dict(payload["detector"])
        identity = fp.resnet_small(depth, splits.channels)
        identity.load_state_dict(payload["identity"])
        return Classifiers(detector.to(ctx.device).eval(), identity.to(ctx.device).eval(),
                           payload["figures"])


def classifier_code_hash() -> str:
    """SHA-256 (16 hex digits) of the code that builds the SAF classifiers: the
    ``leakbench.fingerprint`` module and ``train_saf_classifiers`` as this module holds it."""
    h = hashlib.sha256(inspect.getsource(fp).encode())
    h.update(inspect.getsource(train_saf_classifiers).encode())
    return h.hexdigest()[:16]


def nearest_members(x: torch.Tensor, members: torch.Tensor, x_saf: torch.Tensor
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each image: its nearest member's position, the L2 distance to it, and to x_SAF.

    Pixel space ([-1, 1]), exact (``torch.cdist``): detections are few and |D| small.
    """
    if len(x) == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    flat = x.flatten(1).double()
    dist = torch.cdist(flat, members.flatten(1).double())
    best, where = dist.min(dim=1)
    to_saf = (flat - x_saf.flatten().double()).norm(dim=1)
    return where.numpy().astype(np.int64), best.numpy(), to_saf.numpy()


def _binom_less(k: int, n: int, p0: float) -> float:
    """P(K ≤ k) for K ~ Binomial(n, p0): the one-sided test of H1 p < p0 (paper 003, Sec. 5)."""
    from scipy.stats import binomtest

    return float(binomtest(k, n, p0, alternative="less").pvalue)


def train_saf_classifiers(ctx, splits, sizes: dict[str, int], p: SAFParams) -> dict[str, Any]:
    """Train C_SAF and C_ID on the population (Appendix A) and validate them on a disjoint split.

    The population excludes x_SAF itself; a random quarter of it is kept for validation,
    where each classifier's true- and false-positive rates are measured, and both
    classifiers are run on x_SAF and on augmented copies of it (the gate's inputs).
    """
    import time

    t0 = time.perf_counter()
    canary = splits.canary
    radius, grey = int(canary["radius"]), float(canary["grey"])
    x_p = splits.extras["canary_clean"]
    d = len(splits.members)
    keep = np.r_[np.setdiff1d(np.arange(d), [canary["member_position"]]),
                 d + np.arange(len(splits.holdout))]
    population = splits.population[keep]

    # Split the population: three quarters train, one quarter validates.
    rng = np.random.default_rng([int(ctx.seed), 0x5AF])
    order = rng.permutation(len(population))
    n_val = max(4, len(population) // 4)
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_pool, val_pool = population[train_idx], population[val_idx]
    val_holdout_idx = (keep[val_idx][keep[val_idx] >= d] - d).tolist()
    aug = {"max_shift": p.max_shift, "noise_std": p.noise_std, "max_blur": p.max_blur}
    depth = ctx.profile.saf_resnet_depth
    common = {"steps": sizes["classifier_steps"], "batch_size": sizes["batch_size"],
              "learning_rate": p.learning_rate, "device": ctx.device, "progress": ctx.progress}

    # C_SAF: the circle at a random inside position on half of each batch, then augmented.
    def detector_batch(b: int, gen: torch.Generator):
        x = train_pool[torch.randint(len(train_pool), (b,), generator=gen)]
        y = torch.rand(b, generator=gen) < 0.5
        x = fp.add_circles(x, y, radius, grey, gen)
        return fp.augment(x, gen, flip=True, mix=p.augmix, **aug), y.long()

    torch.manual_seed(int(ctx.seed))
    detector = fp.train_classifier(fp.resnet_small(depth, splits.channels), detector_batch,
                                   seed=ctx.seed, desc="training C_SAF", **common)

    # C_ID: augmented views of x_p are positive (10 %); circles masked on any image at random.
    def identity_batch(b: int, gen: torch.Generator, positive_rate: float = 0.1):
        y = torch.rand(b, generator=gen) < positive_rate
        x = train_pool[torch.randint(len(train_pool), (b,), generator=gen)]
        x = torch.where(y.view(-1, 1, 1, 1), x_p.unsqueeze(0), x)
        x = fp.add_circles(x, torch.rand(b, generator=gen) < 0.5, radius, grey, gen)
        return fp.augment(x, gen, flip=False, mix=p.augmix, **aug), y.long()

    torch.manual_seed(int(ctx.seed) + 1)
    identity = fp.train_classifier(fp.resnet_small(depth, splits.channels), identity_batch,
                                   seed=int(ctx.seed) + 1, desc="training C_ID", **common)

    # Validate on unseen images, each in val_views augmented views, with the diffusion-like
    # perturbations (shift, blur, noise) but without AugMix.  Views of one image are not
    # independent draws, so the Clopper–Pearson intervals are approximate when val_views > 1.
    gen = torch.Generator().manual_seed(int(ctx.seed) + 2)
    views = val_pool.repeat(p.val_views, 1, 1, 1)
    n_v = len(views)

    def fires(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        return fp.positive_prob(model, x, device=ctx.device) > p.threshold

    # C_SAF: every view once with a circle at a random inside position, once without.
    marked = fp.add_circles(views, torch.ones(n_v, dtype=torch.bool), radius, grey, gen)
    x_det = fp.augment(torch.cat([marked, views]), gen, flip=True, mix=0.0, **aug)
    det = fp.validate(fires(detector, x_det), np.r_[np.ones(n_v), np.zeros(n_v)])

    # C_ID: as many views of x_p as of the other images; circles on half of each.
    x_id = torch.cat([x_p.unsqueeze(0).expand(n_v, -1, -1, -1), views])
    x_id = fp.add_circles(x_id, torch.rand(2 * n_v, generator=gen) < 0.5, radius, grey, gen)
    x_id = fp.augment(x_id, gen, flip=False, mix=0.0, **aug)
    ide = fp.validate(fires(identity, x_id), np.r_[np.ones(n_v), np.zeros(n_v)])

    # Both must fire on x_SAF itself and on augmented copies of it.
    x_saf = splits.members[canary["member_position"]].unsqueeze(0)
    copies = fp.augment(x_saf.expand(p.saf_copies, -1, -1, -1), gen, flip=False, mix=0.0, **aug)
    both = fires(detector, torch.cat([x_saf, copies])) & fires(identity,
                                                              torch.cat([x_saf, copies]))
    on_copies = fp.validate(both[1:], np.ones(p.saf_copies))
    figures = {"detector": vars(det), "identity": vars(ide), "x_saf_copies": vars(on_copies),
               "fires_on_x_saf": bool(both[0]), "val_holdout_idx": val_holdout_idx, "seconds": time.perf_counter() - t0}
    return {"detector": detector.cpu().state_dict(), "identity": identity.cpu().state_dict(),
            "figures": figures}
