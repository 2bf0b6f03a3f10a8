"""What every white-box membership attack shares: splits, batching, DDIM steps, metrics.

An attack computes a per-image statistic s(x) that is *lower for members* (a loss or
a reconstruction error).  It chooses its timestep on a calibration split (part of the
members and as many holdout images) and is scored on the rest: equal numbers of
members and holdout images, disjoint from the calibration images.  The metrics are
the same for every attack (``membership_metrics``) and come from ``leakbench.stats``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from leakbench.api import Metric
from leakbench.diffusion.schedule import NoiseSchedule
from leakbench.stats import (
    bootstrap_ci,
    eps_lower_bound,
    eps_threshold,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    two_sample_z,
)

DELTA = 1e-5
"""δ of the empirical ε lower bound."""

FPR_POINTS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def unresolvable_fpr(fpr: float, n_negatives: int) -> str | None:
    """Why TPR at ``fpr`` cannot be measured from ``n_negatives`` negatives, or None if it can.

    The smallest non-zero FPR an ROC curve on n negatives reaches is 1/n, so an FPR
    point below it is not a measurement: it needs at least ⌈1/fpr⌉ negatives.
    """
    needed = math.ceil(1 / fpr - 1e-9)
    if n_negatives >= needed:
        return None
    return (f"TPR at {fpr:g} FPR needs at least {needed} non-member images; only {n_negatives} "
            f"were scored (the smallest non-zero FPR they resolve is 1/{n_negatives})")


@dataclass(frozen=True)
class MembershipSplit:
    """Indices into members and holdout: calibration pairs and evaluation pairs."""

    calib_members: np.ndarray
    calib_holdout: np.ndarray
    eval_members: np.ndarray
    eval_holdout: np.ndarray


def membership_split(n_members: int, n_holdout: int, *, calibration_fraction: float,
                     seed: int, max_members: int | None = None) -> MembershipSplit:
    """Seeded disjoint calibration / evaluation subsets with as many holdout as member images.

    ``max_members`` caps how many members take part (calibration plus evaluation).
    """
    from leakbench.errors import DataError

    rng = np.random.default_rng([int(seed), 0x3A1A])
    n = min(n_members, n_holdout, max_members or n_members)
    if n < 4:
        raise DataError(f"Membership inference needs at least 4 members and 4 holdout images; "
                        f"this split has {n_members} and {n_holdout}: use a larger profile.")
    n_calib = min(max(1, round(calibration_fraction * n)), n - 2)
    members = rng.permutation(n_members)[:n]
    holdout = rng.permutation(n_holdout)[:n]
    return MembershipSplit(np.sort(members[:n_calib]), np.sort(holdout[:n_calib]),
                           np.sort(members[n_calib:]), np.sort(holdout[n_calib:]))


def timestep_grid(num_timesteps: int, size: int, *, low: float = 0.005, high: float = 0.5,
                  multiple_of: int = 1) -> list[int]:
    """About ``size`` timesteps spaced geometrically from low·T to high·T (multiples of k)."""
    k = max(1, int(multiple_of))
    ts = np.geomspace(max(low * num_timesteps, k), max(high * num_timesteps, k), max(size, 1))
    ts = np.unique(np.clip(np.round(ts / k).astype(int) * k, k, num_timesteps - 1))
    return [int(t) for t in ts]


def batched_statistic(fn: Callable[[torch.Tensor, slice], torch.Tensor], images: torch.Tensor, *,
                      batch_size: int, bar: tqdm | None = None) -> np.ndarray:
    """Apply ``fn(batch, rows)`` to consecutive batches; returns the concatenated statistic."""
    out = []
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        with torch.no_grad():
            out.append(fn(images[rows], rows).detach().double().cpu())
        if bar is not None:
            bar.update(len(images[rows]))
    return torch.cat(out).numpy() if out else np.zeros(0)


def timestep_batch(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), int(t), dtype=torch.long, device=like.device)


def ddim_step(predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              x_t: torch.Tensor, t: int, s: int, schedule: NoiseSchedule) -> torch.Tensor:
    """One deterministic DDIM update from step t to step s (Song et al. 2021, Eq. 12, σ = 0).

    x_s = √ᾱ_s x̂₀ + √(1−ᾱ_s) ε̂,  x̂₀ = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t,  ε̂ = ε̂(x_t, t).
    With s > t this is the DDIM inversion ("deterministic reverse") step; no clipping.
    """
    a_t = schedule.at(timestep_batch(t, x_t), x_t)
    a_s = schedule.at(timestep_batch(s, x_t), x_t)
    eps = predict_noise(x_t, timestep_batch(t, x_t)).to(x_t.dtype)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def progress_bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)


def best_timestep(calib_stats: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[int, float]:
    """(t, AUC) maximising the calibration AUC; ``calib_stats[t] = (member s, holdout s)``."""
    aucs = {t: roc_auc(-m, -h) for t, (m, h) in calib_stats.items()}
    t = max(aucs, key=lambda k: (aucs[k], -k))
    return t, aucs[t]


def membership_metrics(
    member_stat: np.ndarray,
    holdout_stat: np.ndarray,
    *,
    calib_member_stat: np.ndarray,
    calib_holdout_stat: np.ndarray,
    n_bootstrap: int,
    seed: int,
    statistic_name: str,
) -> tuple[list[Metric], dict[str, np.ndarray], dict[str, str]]:
    """The metric set of every membership attack, from a statistic that is lower for members.

    ``z``/``p_value``: the one-sided two-sample Z test of CPSample Sec. 4.3 on the statistic
    (holdout playing "test", members "train"); ``auc`` and TPR at 1 % / 0.1 % FPR with
    percentile-bootstrap CIs; ``eps_lower_bound``: the Jagielski et al. (2020) ε at δ = 1e-5,
    its threshold chosen on the calibration split and evaluated on the scored images.
    A TPR at an FPR the negatives cannot resolve is not reported: the third value maps
    its name to the reason (``unresolvable_fpr``).
    """
    # Members should score higher: the membership score is −s(x).
    pos, neg = -np.asarray(member_stat, np.float64), -np.asarray(holdout_stat, np.float64)
    n = pos.size + neg.size

    # Two-sample Z test of the mean statistic.
    z, p = two_sample_z(holdout_stat, member_stat)
    metrics = [
        Metric("z", z, p_value=p, n=n, direction="lower",
               description=f"(μ_holdout − μ_member)/SE of the {statistic_name}"),
        Metric("p_value", p, n=n, direction="higher", bounds=(0.0, 1.0),
               description="one-sided Z-test p-value, H0: members' mean statistic is not lower"),
    ]

    # Threshold-free AUC and the low-FPR operating points, with bootstrap CIs.
    auc = roc_auc(pos, neg)
    metrics.append(Metric("auc", auc, *bootstrap_ci(roc_auc, pos, neg, n_bootstrap=n_bootstrap,
                                                    seed=seed),
                          n=n, direction="lower", bounds=(0.0, 1.0),
                          description="ROC AUC of members vs holdout (0.5 = chance)"))
    missing: dict[str, str] = {}
    for name, fpr in FPR_POINTS.items():
        reason = unresolvable_fpr(fpr, neg.size)
        if reason is not None:
            missing[name] = reason
            continue

        stat = functools.partial(tpr_at_fpr, fpr=fpr)  # takes ``axis``: bootstrapped in one call
        metrics.append(Metric(name, stat(pos, neg),
                              *bootstrap_ci(stat, pos, neg, n_bootstrap=n_bootstrap, seed=seed),
                              n=n, direction="lower", bounds=(0.0, 1.0),
                              description=f"TPR at FPR <= {fpr:g} (0 when no ROC point is that low)"))

    # Empirical ε: threshold from the calibration split, Clopper–Pearson bounds on the rest.
    threshold, calib_eps = eps_threshold(-np.asarray(calib_member_stat, np.float64),
                                         -np.asarray(calib_holdout_stat, np.float64), delta=DELTA)
    eps = eps_lower_bound(pos, neg, threshold, delta=DELTA)
    metrics.append(Metric("eps_lower_bound", eps, n=n, direction="lower", bounds=(0.0, None),
                          description="empirical ε at δ = 1e-5 (95 % Clopper–Pearson, "
                                      "threshold from the calibration split)"))

    fpr_arr, tpr_arr, _ = roc_curve(pos, neg)
    arrays = {"member_stat": np.asarray(member_stat, np.float32),
              "holdout_stat": np.asarray(holdout_stat, np.float32),
              "roc_fpr": fpr_arr.astype(np.float32), "roc_tpr": tpr_arr.astype(np.float32)}
    return metrics, arrays, missing


Statistic = Callable[[torch.Tensor, list[int], int, tqdm], dict[int, np.ndarray]]
"""``statistic(images, timesteps, seed, bar) -> {t: s(x) per image}``; lower s means member."""


def run_membership_attack(
    target,
    ctx,
    statistic: Statistic,
    *,
    grid: list[int],
    fixed_t: int | None,
    calibration_fraction: float,
    n_bootstrap: int,
    max_members: int | None,
    statistic_name: str,
) -> tuple[list[Metric], dict[str, np.ndarray], dict]:
    """Calibrate t on a calibration split, score the disjoint evaluation split, build metrics.

    With ``fixed_t`` the calibration split still sets the ε threshold, but t is not searched.
    """
    splits = target.splits
    split = membership_split(len(splits.members), len(splits.holdout),
                             calibration_fraction=calibration_fraction, seed=ctx.seed,
                             max_members=max_members)
    sets = {"calib_members": splits.members[split.calib_members],
            "calib_holdout": splits.holdout[split.calib_holdout],
            "eval_members": splits.members[split.eval_members],
            "eval_holdout": splits.holdout[split.eval_holdout]}
    calib_ts = [fixed_t] if fixed_t is not None else grid
    total = sum(len(v) for v in sets.values())
    bar = progress_bar(total, f"{statistic_name} ({len(calib_ts)} calibration t)", ctx.progress)

    # Choose t on the calibration split only.
    calib = {}
    for role in ("calib_members", "calib_holdout"):
        calib[role] = statistic(sets[role], calib_ts, _role_seed(ctx.seed, role), bar)
    t, calib_auc = best_timestep({s: (calib["calib_members"][s], calib["calib_holdout"][s])
                                  for s in calib_ts})

    # Score the evaluation split at that t.
    scored = {role: statistic(sets[role], [t], _role_seed(ctx.seed, role), bar)[t]
              for role in ("eval_members", "eval_holdout")}
    bar.close()

    metrics, arrays, missing = membership_metrics(
        scored["eval_members"], scored["eval_holdout"],
        calib_member_stat=calib["calib_members"][t], calib_holdout_stat=calib["calib_holdout"][t],
        n_bootstrap=n_bootstrap, seed=ctx.seed, statistic_name=statistic_name)
    metrics.append(Metric("timestep", t, n=len(split.calib_members) * 2,
                          description="t chosen on the calibration split"))
    arrays["calib_grid"] = np.asarray(calib_ts, np.int64)
    arrays["calib_auc"] = np.asarray(
        [roc_auc(-calib["calib_members"][s], -calib["calib_holdout"][s]) for s in calib_ts],
        np.float32)
    info = {"timestep": t, "calibration_auc": calib_auc,
            "n_calibration": 2 * len(split.calib_members),
            "n_members_scored": len(split.eval_members),
            "n_holdout_scored": len(split.eval_holdout)}
    if missing:
        info["missing_metrics"] = missing
    return metrics, arrays, info


def _role_seed(seed: int, role: str) -> int:
    return int(np.random.default_rng([int(seed), *role.encode()]).integers(2**62))


def check_membership_params(params) -> None:
    """Validation shared by the membership attacks' params dataclasses (raises ValueError)."""
    if params.grid_size < 1:
        raise ValueError(f"grid_size={params.grid_size} must be at least 1")
    if not 0.0 < params.calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction={params.calibration_fraction} must be in (0, 1)")
    if params.max_members is not None and params.max_members < 4:
        raise ValueError(f"max_members={params.max_members} must be at least 4")
    if params.n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={params.n_bootstrap} must be >= 0")
    if getattr(params, "access", "effective") not in ("effective", "released"):
        raise ValueError(f"access={params.access!r} must be 'effective' (the sampler's predictor) "
                         "or 'released' (the published weights)")


def check_timestep(name: str, t: int | None, T: int, *, low: int = 0,
                   interval: int | None = None) -> None:
    """Refuse a fixed attack timestep ``t`` the schedule of ``T`` steps cannot run (UsageError).

    ``low`` is the smallest t the attack accepts (its params check it); with ``interval`` k,
    t must also be a multiple of k with t + k < T (SecMI steps from t to t + k).  None
    (calibrate t) always passes.
    """
    from leakbench.errors import UsageError

    if t is None:
        return
    if interval is not None:
        if t % interval or t + interval >= T:
            raise UsageError(f"{name} t={t} must be a multiple of the interval {interval} with "
                             f"t + {interval} < {T}.")
    elif t >= T:
        raise UsageError(f"{name} t={t} is outside the schedule; use {low} <= t < {T}.")
