"""Privacy auditing with one training run (Steinke, Nasr and Jagielski, NeurIPS 2023).

The dataset spec ``audit_canaries=m`` sets m canaries aside, each trained on (a member)
with probability 1/2 by a seeded coin recorded in the manifest.  After the one training
run every canary gets a membership score: how much better the target predicts the noise
added to it than the public pretrained checkpoint does, on a fixed grid of (t, ε) draws,

    s(x) = mean_{t, ε} [ e_ref(x; t, ε) − e_target(x; t, ε) ],
    e(x; t, ε) = ‖ε − ε̂(√ᾱ_t x + √(1−ᾱ_t) ε, t)‖²        (loss_mia's Algorithm 1 error),

(without a public checkpoint, s(x) = −mean e_target).  The auditor guesses IN for the
k₊ highest scores and OUT for the k₋ lowest and abstains on the rest (the paper's
Algorithm 1 with an input-space attack); k₊ and k₋ are fixed fractions of m set before
any score is seen, never searched on the scored canaries.  Of r = k₊ + k₋ guesses, v are
right; Theorem 3.1 turns (m, r, v) into the largest ε that (ε, δ)-DP rules out at 95 %
confidence (``leakbench.stats.one_run_eps_lower_bound``).  When the target states the ε
it claims (DP-SGD's accountant), the bound is set beside it and a bound above the claim
is flagged: that is a privacy bug, not noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from audits.loss_mia import noise_errors
from leakbench.api import Attack, AuditTarget, Finding, Metric
from leakbench.membership import progress_bar, timestep_grid
from leakbench.stats import one_run_eps_lower_bound

DEFAULT_DELTA = 1e-5
"""δ of the audit when the target does not state its own."""


@dataclass(frozen=True)
class OneRunParams:
    guess_in: float = 0.25  # k₊ / m: fraction of canaries guessed IN (the highest scores)
    guess_out: float = 0.25  # k₋ / m: fraction guessed OUT (the lowest scores)
    grid_size: int = 8  # timesteps of the fixed (t, ε) grid, geometric in [0.005 T, 0.5 T]
    noise_draws: int | None = None  # ε draws per t; None: the profile's mia_noise_draws
    delta: float | None = None  # None: the δ the target claims, else 1e-5
    confidence: float = 0.95

    def __post_init__(self):
        for name in ("guess_in", "guess_out"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be a fraction of the canaries in [0, 1]")
        if self.guess_in + self.guess_out > 1.0:
            raise ValueError(f"guess_in + guess_out = {self.guess_in + self.guess_out:g} exceeds "
                             "1; a canary gets at most one guess")
        if self.guess_in + self.guess_out == 0.0:
            raise ValueError("guess_in and guess_out are both 0; the audit needs some guesses")
        if self.grid_size < 1:
            raise ValueError(f"grid_size={self.grid_size} must be at least 1")
        if self.noise_draws is not None and self.noise_draws < 1:
            raise ValueError(f"noise_draws={self.noise_draws} must be at least 1")
        if self.delta is not None and not 0.0 <= self.delta < 1.0:
            raise ValueError(f"delta={self.delta} must be in [0, 1)")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence={self.confidence} must be in (0, 1)")


def guess_counts(m: int, guess_in: float, guess_out: float) -> tuple[int, int]:
    """(k₊, k₋): how many canaries are guessed IN and OUT, from m and the fixed fractions."""
    return math.floor(guess_in * m + 1e-9), math.floor(guess_out * m + 1e-9)


def one_run_guesses(scores: np.ndarray, k_in: int, k_out: int) -> np.ndarray:
    """+1 (IN) for the k₊ highest scores, −1 (OUT) for the k₋ lowest, 0 (abstain) otherwise.

    Ties are broken by canary order (a stable sort), so the guesses are a function of
    the scores alone: the inclusion coins are never looked at.
    """
    scores = np.asarray(scores, np.float64)
    if k_in + k_out > scores.size:
        raise ValueError(f"{k_in} + {k_out} guesses for {scores.size} canaries")
    order = np.argsort(-scores, kind="stable")
    guesses = np.zeros(scores.size, np.int8)
    guesses[order[:k_in]] = 1
    if k_out:
        guesses[order[-k_out:]] = -1
    return guesses


class OneRun(Attack):
    """ε lower bound from one training run: m canaries, guesses on the extremes, Theorem 3.1."""

    name = "one_run"
    version = "1"
    access = "white-box"
    Params = OneRunParams
    description = ("one-run privacy audit: canaries in with probability 1/2, IN/OUT guesses on the "
                   "highest/lowest noise-prediction gain over the public checkpoint, ε lower bound "
                   "(Theorem 3.1) beside the ε the defense claims")
    paper = "Steinke, Nasr and Jagielski 2023, Privacy Auditing with One (1) Training Run"

    def run(self, target: AuditTarget, ctx) -> Finding:
        from leakbench.errors import NotApplicable, UsageError

        p = self.params
        splits = target.splits
        if splits.audit_canaries is None:
            raise NotApplicable("one_run needs audit canaries in the split; add audit_canaries=M to "
                             "the dataset spec, e.g. --dataset 'digits[audit_canaries=256]'.")
        canaries, included = splits.audit_canaries, np.asarray(splits.audit_included, bool)
        m = len(canaries)
        k_in, k_out = guess_counts(m, p.guess_in, p.guess_out)
        if k_in + k_out == 0:
            raise UsageError(f"guess_in={p.guess_in:g} and guess_out={p.guess_out:g} of {m} "
                             "canaries make no guess; raise them or add canaries.")
        draws = p.noise_draws or ctx.profile.mia_noise_draws
        grid = timestep_grid(target.schedule.num_timesteps, p.grid_size)
        reference = ctx.public_denoiser()

        # Score each canary on the fixed (t, ε) grid: the reference's error minus the target's.
        n_models = 1 if reference is None else 2
        bar = progress_bar(m * n_models, f"one-run audit ({m} canaries)", ctx.progress)
        seed = int(np.random.default_rng([int(ctx.seed), 0x0E1]).integers(2**62))

        def mean_error(predict_noise) -> np.ndarray:
            errors = noise_errors(predict_noise, target.schedule, canaries, grid, draws=draws,
                                  seed=seed, batch_size=ctx.profile.sample_batch_size,
                                  device=target.device, bar=bar)
            return np.mean([errors[t] for t in grid], axis=0)

        target_error = mean_error(target.predict_noise)
        scores = -target_error if reference is None else mean_error(reference) - target_error
        bar.close()

        # Guess on the extremes, count the right guesses, and bound ε (Theorem 3.1).
        guesses = one_run_guesses(scores, k_in, k_out)
        truth = np.where(included, 1, -1)
        r = int((guesses != 0).sum())
        v = int((guesses == truth).sum())
        claimed_eps, claimed_delta = target.info.get("epsilon"), target.info.get("delta")
        delta = p.delta if p.delta is not None else (
            float(claimed_delta) if claimed_delta is not None else DEFAULT_DELTA)
        eps = one_run_eps_lower_bound(m, r, v, delta=delta, confidence=p.confidence)

        pct = f"{100 * p.confidence:g} %"
        metrics = [
            Metric("eps_lower_bound", eps, n=m, direction="lower", bounds=(0.0, None),
                   description=f"ε that (ε, δ = {delta:g})-DP rules out at {pct} confidence "
                               f"(Steinke et al. 2023, Thm 3.1; {v} of {r} guesses right)"),
            Metric("guesses", r, n=m, bounds=(0.0, float(m)),
                   description=f"r: canaries guessed (k₊ = {k_in} IN, k₋ = {k_out} OUT; "
                               "fixed fractions, the rest abstain)"),
            Metric("correct", v, n=r, bounds=(0.0, float(r)),
                   description="v: right guesses (r/2 is chance)"),
            Metric("guess_accuracy", v / r, n=r, bounds=(0.0, 1.0), direction="lower",
                   description="v / r (0.5 is chance)"),
            Metric("delta", delta, bounds=(0.0, 1.0),
                   description="δ of the audited guarantee (the target's own where it states one)"),
        ]
        info = {"canaries": m, "included": int(included.sum()), "k_in": k_in, "k_out": k_out,
                "timesteps": grid, "noise_draws": draws, "delta": delta,
                "score": ("noise-prediction error of the public checkpoint minus the target's"
                          if reference is not None else "minus the target's noise-prediction "
                                                         "error (no public checkpoint)")}
        headline = "eps_lower_bound"

        # The loud check: a bound above the ε the target claims refutes the claim.
        if claimed_eps is not None:
            claimed_eps = float(claimed_eps)
            excess = eps - claimed_eps
            metrics += [
                Metric("claimed_epsilon", claimed_eps, bounds=(0.0, None),
                       description="ε the target states for itself (its accountant's)"),
                Metric("eps_excess", excess, n=m, direction="lower", bounds=(None, 0.0),
                       description="audited ε lower bound minus the claimed ε; above 0 the "
                                   "claim is refuted (a privacy bug)"),
            ]
            info["claimed_epsilon"] = claimed_eps
            if excess > 0:
                headline = "eps_excess"
                info["alarm"] = (f"PRIVACY BUG: the audit proves ε ≥ {eps:.3g} at δ = {delta:g} "
                                 f"({pct} confidence) but the target claims ε = "
                                 f"{claimed_eps:.3g}; its clipping, sampling, noise or "
                                 "accounting is wrong.")

        arrays = {"canary_scores": scores.astype(np.float32),
                  "canary_included": included.astype(np.int8), "canary_guesses": guesses}
        return Finding(metrics, arrays=arrays, info=info, headline=headline)
