"""SAF fingerprint extraction (paper 003, Sec. 3.1–3.4 and 5).

One member x_p was replaced by x_SAF, its copy with a synthetic anatomical
fingerprint (a filled grey circle; see ``leakbench.data.splits``).  Two classifiers
decide whether an image is that private sample: C_SAF detects the fingerprint and
C_ID recognises x_p.  The attack reports

* how often the target reproduces it (k of N samples where both fire) against the
  rate 1/|D| of a model that samples its training images uniformly, and
* the diffuse-and-reverse indicator: noise x_SAF to step t, run the target's own
  reverse process back to 0, and measure p̂_t, the fraction that is still x_SAF;
  ρ is the upper Darboux sum of p̂_t over t, normalised to [0, 1].
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
    accuracy_bar: float = 0.95  # below it no reproduction probability is reported
    threshold: float = 0.5  # a classifier fires when P(positive) exceeds it
    n_samples: int | None = None  # None: the profile's n_samples
    grid_points: int | None = None  # None: extras, else 21 values of t over 0..T−1
    reverse_draws: int | None = None  # M per t; None: extras, else 16

    def __post_init__(self):
        for name in ("classifier_steps", "batch_size", "n_samples", "reverse_draws"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}={v} must be a positive integer or None")
        if self.grid_points is not None and self.grid_points < 2:
            raise ValueError(f"grid_points={self.grid_points} must be at least 2")
        if not 0.0 <= self.accuracy_bar <= 1.0:
            raise ValueError(f"accuracy_bar={self.accuracy_bar} must be in [0, 1]")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold} must be in (0, 1)")
        if not 0.0 <= self.augmix <= 1.0:
            raise ValueError(f"augmix={self.augmix} must be a fraction in [0, 1]")
        if self.learning_rate <= 0 or min(self.noise_std, self.max_shift, self.max_blur) < 0:
            raise ValueError("learning_rate must be positive; noise_std, max_shift and max_blur "
                             "non-negative")


def resolved_sizes(p: SAFParams, profile) -> dict[str, int]:
    """The params' sizes with None filled from ``profile.extras`` or the defaults."""
    extras = profile.extras

    def pick(name: str, default: int) -> int:
        v = getattr(p, name)
        return int(v if v is not None else extras.get(f"saf_{name}", default))

    return {
        "classifier_steps": pick("classifier_steps", profile.saf_classifier_steps),
        "batch_size": pick("batch_size", 32),
        "n_samples": pick("n_samples", profile.n_samples),
        "grid_points": pick("grid_points", 21),
        "reverse_draws": pick("reverse_draws", 16),
    }


@dataclass
class Classifiers:
    detector: torch.nn.Module
    identity: torch.nn.Module
    figures: dict[str, Any]


class SAF(Attack):
    """Reproduction probability and diffuse-and-reverse indicator of a fingerprinted member."""

    name = "saf"
    version = "1"
    access = "white-box"  # p_reproduce needs samples only; rho runs the target's reverse process
    Params = SAFParams
    description = ("how often the target reproduces a fingerprinted member (C_SAF and C_ID both "
                   "fire), with the diffuse-and-reverse indicator rho")
    paper = "Quantifying Sample Anonymity with Adversarial Fingerprinting (paper 003), Sec. 3, 5"

    def run(self, target: AuditTarget, ctx) -> Finding:
        p = self.params
        sizes = resolved_sizes(p, ctx.profile)
        splits = target.splits
        canary = splits.canary
        if canary is None:
            raise DataError("The saf attack needs the fingerprinted member, but the dataset's "
                            "canary is off; drop canary=false from the dataset spec.")
        x_saf = splits.members[canary["member_position"]]
        clf = self.classifiers(ctx, splits, sizes)
        figures = clf.figures
        metrics = [
            Metric("detector_val_acc", figures["detector"]["accuracy"], n=figures["detector"]["n"],
                   bounds=(0.0, 1.0), description="C_SAF accuracy, validation with 10 % marked"),
            Metric("detector_fpr", figures["detector"]["fpr"],
                   n=figures["detector"]["n_negative"], bounds=(0.0, 1.0),
                   description="C_SAF false-positive rate on unmarked validation images"),
            Metric("id_val_acc", figures["identity"]["accuracy"], n=figures["identity"]["n"],
                   bounds=(0.0, 1.0), description="C_ID accuracy, validation with 50 % x_p views"),
            Metric("id_fpr", figures["identity"]["fpr"], n=figures["identity"]["n_negative"],
                   bounds=(0.0, 1.0), description="C_ID false-positive rate on other images"),
        ]
        info: dict[str, Any] = {"sizes": sizes, "canary": dict(canary),
                                "classifier_seconds": figures["seconds"]}
        arrays: dict[str, np.ndarray] = {"x_saf": x_saf.numpy().astype(np.float32)}
        weakest = min(figures["detector"]["accuracy"], figures["identity"]["accuracy"])
        if weakest < p.accuracy_bar:
            info["below_bar"] = (f"a classifier's validation accuracy {weakest:.3f} is below the "
                                 f"bar {p.accuracy_bar}; no reproduction probability reported")
            return Finding(metrics, arrays=arrays, info=info, headline="detector_val_acc")

        def both_fire(x: torch.Tensor) -> np.ndarray:
            det = fp.positive_prob(clf.detector, x, device=ctx.device) > p.threshold
            ide = fp.positive_prob(clf.identity, x, device=ctx.device) > p.threshold
            return det & ide

        # Reproduction: k of N samples where both classifiers fire (paper 003, Sec. 3.2).
        n = sizes["n_samples"]
        samples = target.sample(n)
        hits = both_fire(samples)
        k = int(hits.sum())
        d = int(len(splits.members))
        p_rep = k / n
        binom = _binom_less(k, n, 1.0 / d)
        val_holdout = splits.holdout[figures["val_holdout_idx"]]
        fp_count = int(both_fire(val_holdout).sum())
        lo, hi = clopper_pearson(k, n)
        metrics += [
            Metric("p_reproduce", p_rep, lo, hi, n=n, direction="lower", bounds=(0.0, 1.0),
                   description=f"{k} of {n} samples where C_SAF and C_ID both fire"),
            Metric("ratio_to_memorization", p_rep * d, lo * d, hi * d, n=n, direction="lower",
                   bounds=(0.0, None),
                   description=f"p_reproduce · |D| (|D| = {d}); 1 = samples members uniformly"),
            Metric("binom_p", binom, p_value=binom, n=n, direction="lower", bounds=(0.0, 1.0),
                   description="one-sided binomial test of H0 p = 1/|D| against H1 p < 1/|D|"),
            Metric("false_positives", fp_count, n=len(val_holdout), direction=None,
                   bounds=(0.0, None),
                   description="unseen holdout images where both classifiers fire"),
        ]
        info.update(k=k, n=n, members=d)
        arrays["detected"] = samples[torch.from_numpy(hits)][: ctx.profile.top_k_pairs].numpy()

        # Diffuse and reverse: p̂_t = P(both fire | reverse from x_SAF noised to t) (Sec. 3.3).
        t_grid, p_hat = self.diffuse_and_reverse(target, ctx, x_saf, both_fire, sizes)
        rho = fp.upper_darboux(t_grid, p_hat)
        above = t_grid[p_hat >= 0.5]
        breakout = int(above.max()) if above.size else -1
        m = sizes["reverse_draws"]
        metrics += [
            Metric("rho", rho, n=m * len(t_grid), direction="lower", bounds=(0.0, 1.0),
                   description="upper Darboux sum of p̂_t over t, normalised"),
            Metric("breakout_t", breakout, n=m, direction="lower",
                   bounds=(-1.0, float(target.schedule.num_timesteps - 1)),
                   description="largest t with p̂_t ≥ 0.5 (−1: none)"),
        ]
        arrays["saf_t"] = t_grid.astype(np.int64)
        arrays["saf_p"] = p_hat.astype(np.float64)
        return Finding(metrics, arrays=arrays, info=info, headline="p_reproduce")

    def diffuse_and_reverse(self, target: AuditTarget, ctx, x_saf: torch.Tensor, both_fire,
                            sizes: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """p̂_t on a grid of t over 0..T−1: M noisings of x_SAF to t, each run back with DDIM."""
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
                              schedule=target.schedule,
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
                  "threshold": p.threshold, "resnet_depth": ctx.profile.saf_resnet_depth,
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


def _binom_less(k: int, n: int, p0: float) -> float:
    """P(K ≤ k) for K ~ Binomial(n, p0): the one-sided test of H1 p < p0 (paper 003, Sec. 5)."""
    from scipy.stats import binomtest

    return float(binomtest(k, n, p0, alternative="less").pvalue)


def train_saf_classifiers(ctx, splits, sizes: dict[str, int], p: SAFParams) -> dict[str, Any]:
    """Train C_SAF and C_ID on the population (Appendix A) and validate them on a disjoint split.

    The population excludes x_SAF itself; a random quarter of it is kept for validation.
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

    # Validate: C_SAF with 10 % marked images, C_ID with 50 % views of x_p, on unseen images,
    # with the diffusion-like perturbations (shift, blur, noise) but without AugMix.
    gen = torch.Generator().manual_seed(int(ctx.seed) + 2)
    marked = torch.rand(len(val_pool), generator=gen) < 0.1
    x_det = fp.add_circles(val_pool, marked, radius, grey, gen)
    x_det = fp.augment(x_det, gen, flip=True, mix=0.0, **aug)
    det = fp.validate(fp.positive_prob(detector, x_det, device=ctx.device) > p.threshold,
                      marked.numpy())
    n_id = len(val_pool)
    is_p = torch.arange(n_id) < n_id // 2
    x_id = torch.where(is_p.view(-1, 1, 1, 1), x_p.unsqueeze(0), val_pool)
    x_id = fp.add_circles(x_id, torch.rand(n_id, generator=gen) < 0.5, radius, grey, gen)
    x_id = fp.augment(x_id, gen, flip=False, mix=0.0, **aug)
    ide = fp.validate(fp.positive_prob(identity, x_id, device=ctx.device) > p.threshold,
                      is_p.numpy())
    figures = {"detector": vars(det), "identity": vars(ide),
               "val_holdout_idx": val_holdout_idx, "seconds": time.perf_counter() - t0}
    return {"detector": detector.cpu().state_dict(), "identity": identity.cpu().state_dict(),
            "figures": figures}
