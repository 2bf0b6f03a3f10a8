"""Permutation test of sample-to-member similarity (CPSample paper 001, Appendix E).

H0: samples are no more similar to the training data S than to arbitrary same-size
subsets of the population T they were drawn from.  With P the generated samples and
k = |S|:

1. draw P⁰ ⊂ P, |P⁰| = k, without replacement; a₀ = the largest nearest-neighbour
   cosine similarity of P⁰ to S;
2. for i = 1..ℓ draw Sⁱ ⊂ T and Pⁱ ⊂ P, both of size k and without replacement;
   aᵢ = the largest nearest-neighbour similarity of Pⁱ to Sⁱ;
3. report (1/ℓ) Σ 1{a₀ > aᵢ} (the paper's Table 6 figure, rejecting when it exceeds
   the level) and the permutation p-value (1 + #{aᵢ ≥ a₀}) / (1 + ℓ).

T = members + holdout here (the paper's "entire training set" from which the
fine-tuning subset S was taken).  Because Sⁱ may contain members, copies of a few
members can also give large aᵢ: the p-value cannot fall far below the chance that a
random Sⁱ meets a copied member.  Same feature space and index code as ``replication``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from leakbench.api import Attack, AuditTarget, Finding, Metric
from leakbench.features.extractors import get_extractor
from leakbench.features.index import nearest_member_similarity


@dataclass(frozen=True)
class PermutationParams:
    feature: str = "pixels"
    n_samples: int | None = None  # |P|; None: the profile's n_samples (shared with replication)
    n_permutations: int | None = None  # ℓ; None: the profile's n_permutations

    def __post_init__(self):
        if self.n_samples is not None and self.n_samples < 1:
            raise ValueError(f"n_samples={self.n_samples} must be at least 1")
        if self.n_permutations is not None and self.n_permutations < 1:
            raise ValueError(f"n_permutations={self.n_permutations} must be at least 1")


def max_similarity(samples: np.ndarray, refs: np.ndarray) -> float:
    """The similarity of the most similar (sample, nearest reference) pair."""
    sims, _ = nearest_member_similarity(samples, refs)
    return float(sims.max())


def permutation_test(
    sample_feats: np.ndarray,
    member_feats: np.ndarray,
    population_feats: np.ndarray,
    *,
    n_permutations: int,
    seed: int,
    progress: bool = False,
) -> tuple[float, np.ndarray]:
    """(a₀, [a₁..a_ℓ]) of Appendix E; features are unit vectors, k = len(member_feats)."""
    from leakbench.errors import DataError

    k = len(member_feats)
    if len(sample_feats) < k or len(population_feats) < k:
        raise DataError(f"The permutation test needs at least |S| = {k} samples and population "
                        f"images; it has {len(sample_feats)} samples and "
                        f"{len(population_feats)} population images (raise n_samples).")
    rng = np.random.default_rng([int(seed), 0x9E27])

    # a₀: k samples against the members.
    p0 = rng.choice(len(sample_feats), size=k, replace=False)
    a0 = max_similarity(sample_feats[p0], member_feats)

    # aᵢ: k fresh draws of samples against random k-subsets of the population.
    a = np.empty(n_permutations)
    for i in tqdm(range(n_permutations), desc="permutations", disable=not progress, leave=False):
        s_i = rng.choice(len(population_feats), size=k, replace=False)
        p_i = rng.choice(len(sample_feats), size=k, replace=False)
        a[i] = max_similarity(sample_feats[p_i], population_feats[s_i])
    return a0, a


class Permutation(Attack):
    """Is the closest sample-member pair closer than pairs with random population subsets?"""

    name = "permutation"
    version = "1"
    access = "black-box"
    Params = PermutationParams
    description = ("Appendix E permutation test: max nearest-member similarity of samples vs the "
                   "same for random same-size subsets of the population")
    paper = "Kazdan et al., CPSample (paper 001), Appendix E, Table 6"

    def run(self, target: AuditTarget, ctx) -> Finding:
        p = self.params
        n = p.n_samples or ctx.profile.n_samples
        ell = p.n_permutations or ctx.profile.n_permutations
        extract = get_extractor(p.feature, ctx)
        splits = target.splits

        # Embed S, T and P in the replication attack's feature space (P is the shared draw).
        member_feats = extract(splits.members)
        population_feats = extract(splits.population)
        sample_feats = extract(target.sample(n))

        a0, a = permutation_test(sample_feats, member_feats, population_feats,
                                 n_permutations=ell, seed=ctx.seed, progress=ctx.progress)
        frac = float((a0 > a).mean())
        p_value = float((1 + (a >= a0).sum()) / (1 + ell))
        k = len(member_feats)
        metrics = [
            Metric("frac_a0_greater", frac, n=ell, direction="lower", bounds=(0.0, 1.0),
                   description="(1/ℓ) Σ 1{a₀ > aᵢ}: how often the members beat a random subset"),
            Metric("p_value", p_value, n=ell, direction="higher", bounds=(0.0, 1.0),
                   description="permutation p-value (1 + #{aᵢ ≥ a₀}) / (1 + ℓ)"),
            Metric("a0", a0, n=k, description="max nearest-member similarity of k samples"),
        ]
        info = {"feature": p.feature, "k": k, "n_samples": n, "n_permutations": ell,
                "a_mean": float(a.mean()), "a_max": float(a.max())}
        arrays = {"a": a.astype(np.float32)}
        return Finding(metrics, arrays=arrays, info=info, headline="p_value")
