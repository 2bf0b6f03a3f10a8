"""Replication counting (CPSample paper 001, Sec. 4.1 and Table 1).

The fraction of generated samples whose nearest member (cosine similarity in a
feature space) exceeds a threshold.  The threshold is calibrated on fresh real
data: the ``quantile`` of how close holdout images come to the members.  Half of
the holdout calibrates, the other half measures how often fresh real images pass
(``holdout_frac_above``, about 1 − quantile by construction, but measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leakbench.api import Attack, AuditTarget, Finding, Metric
from leakbench.features.calibration import replication_calibration
from leakbench.stats import fraction_above, two_proportion_test, wilson_interval

PAPER_THRESHOLDS = (0.90, 0.95, 0.97)


@dataclass(frozen=True)
class ReplicationParams:
    feature: str = "pixels"
    quantile: float | None = None  # None: the profile's holdout_quantile
    n_samples: int | None = None  # None: the profile's n_samples

    def __post_init__(self):
        if self.quantile is not None and not 0.5 <= self.quantile < 1.0:
            raise ValueError(f"quantile={self.quantile} must be in [0.5, 1)")
        if self.n_samples is not None and self.n_samples < 1:
            raise ValueError(f"n_samples={self.n_samples} must be at least 1")


class Replication(Attack):
    """Fraction of samples closer to a member than fresh real images come."""

    name = "replication"
    version = "1"
    access = "black-box"
    Params = ReplicationParams
    description = ("fraction of samples whose nearest member (cosine, FAISS) exceeds the holdout-"
                   "calibrated threshold, plus the paper's fixed thresholds")
    paper = "Kazdan et al., CPSample (paper 001), Sec. 4.1, Table 1"
    reference_defense = "ddim"

    def run(self, target: AuditTarget, ctx) -> Finding:
        p = self.params
        n = p.n_samples or ctx.profile.n_samples
        splits = target.splits

        # Calibrate the threshold on one half of the holdout, measure on the other.
        cal = replication_calibration(ctx, splits, p.feature, p.quantile)
        quantile, threshold = cal.quantile, cal.threshold
        calib, evaluate, holdout_sims = cal.calib_idx, cal.eval_idx, cal.holdout_sims

        # Count samples whose nearest member (same feature space) is above it.
        samples = target.sample(n)
        sims, nn_idx = cal.nearest(samples)
        frac, k, n_s = fraction_above(sims, threshold)
        h_frac, h_k, h_n = fraction_above(holdout_sims[evaluate], threshold)
        metrics = [
            Metric("frac_above", frac, *wilson_interval(k, n_s), n=n_s, direction="lower",
                   bounds=(0.0, 1.0),
                   description=f"samples above the holdout {quantile:.0%} similarity threshold"),
            Metric("holdout_frac_above", h_frac, *wilson_interval(h_k, h_n), n=h_n,
                   bounds=(0.0, 1.0), description="fresh real images above the same threshold"),
            Metric("threshold", threshold, n=len(calib), description="calibrated cosine threshold"),
        ]
        for t in PAPER_THRESHOLDS:
            f, kt, nt = fraction_above(sims, t)
            metrics.append(Metric(f"frac_above_{t:.2f}", f, *wilson_interval(kt, nt), n=nt,
                                  direction="lower", bounds=(0.0, 1.0)))

        # Keep the most similar (sample, member) pairs for the report.
        top = np.argsort(-sims, kind="stable")[: ctx.profile.top_k_pairs]
        arrays = {
            "sample_sims": sims.astype(np.float32),
            "holdout_sims": holdout_sims[evaluate].astype(np.float32),
            "top_sample_idx": top.astype(np.int64),
            "top_member_idx": nn_idx[top].astype(np.int64),
            "top_sims": sims[top].astype(np.float32),
            "top_samples": samples[top].numpy().astype(np.float32),
            "top_members": splits.members[nn_idx[top]].numpy().astype(np.float32),
        }
        info = {"feature": p.feature, "quantile": quantile, "k_above": k,
                "holdout_k_above": h_k}
        return Finding(metrics, arrays=arrays, info=info, headline="frac_above")

    def compare(self, finding: Finding, reference: Finding) -> list[Metric]:
        """``chi2_p``: one-sided χ² test against the undefended reference (paper 001, Table 1).

        H0: this defense did not reduce the fraction of samples above the calibrated
        threshold; a small p says it did.
        """
        k, n = finding.info["k_above"], finding["frac_above"].n
        k_ref, n_ref = reference.info["k_above"], reference["frac_above"].n
        chi2, p = two_proportion_test(k, n, k_ref, n_ref)
        return [Metric("chi2_p", p, p_value=p, n=n, direction="lower", bounds=(0.0, 1.0),
                       description=f"one-sided χ² = {chi2:.2f} of {k}/{n} against the reference's "
                                   f"{k_ref}/{n_ref} above the threshold")]
