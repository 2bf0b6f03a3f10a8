"""One verdict line per (dataset, defense): each attack's headline against the reference row.

Every word comes from the stored metric's metadata, never from the defense's name:

- a metric with a direction (``lower`` or ``higher`` is safer) is *reduced* when the 95 %
  CI of its difference from the reference excludes zero on the safer side; when that CI
  covers zero the clause says "no significant reduction"; on the other side, "less
  safe".  Without CIs, an attack's comparison test against the reference (a p-value the
  reference row does not carry, e.g. ``chi2_p``) decides at 5 %; the test that decided
  is cited either way;
- a metric without a direction (FID: quality, not privacy) is a cost, stated as a ratio
  to the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from reports.tables import Cell, Row, column_order, fmt

LEVEL = 0.05
"""Significance level of a comparison test that decides a clause without CIs."""


def difference_ci(a: float, a_ci: tuple[float, float], b: float, b_ci: tuple[float, float]
                  ) -> tuple[float, float]:
    """95 % CI of ``a - b`` from the two estimates' own 95 % CIs (MOVER).

    The method of variance estimates recovery (Zou & Donner 2008; Newcombe 1998, method 10,
    for two proportions with Wilson intervals):

        L = (a - b) - sqrt((a - l_a)² + (u_b - b)²),  U = (a - b) + sqrt((u_a - a)² + (b - l_b)²)

    Hand-written because only the two stored intervals are available, not the counts
    (statsmodels' ``confint_proportions_2indep(method="newcomb")`` needs the counts and
    gives the same interval for proportions).  It assumes independent estimates; for
    estimates on shared images (positively correlated) it is conservative.
    """
    (l_a, u_a), (l_b, u_b) = a_ci, b_ci
    d = a - b
    return (d - math.hypot(a - l_a, u_b - b), d + math.hypot(u_a - a, b - l_b))


@dataclass
class Clause:
    """One attack's part of a verdict; ``kind`` is what the reader should take from it."""

    attack: str
    metric: str
    kind: str  # "reduced", "no reduction", "less safe", "cost", "not judged"
    text: str
    access: str | None = None


@dataclass
class Verdict:
    dataset: str
    defense: str
    profile: str
    reference: str | None
    clauses: list[Clause] = field(default_factory=list)
    note: str = ""

    @property
    def text(self) -> str:
        body = "; ".join(c.text for c in self.clauses) or self.note
        return f"{self.defense} on {self.dataset} ({self.profile}): {body}"


def _ratio(value: float, ref: float) -> str | None:
    """``"21× lower"`` / ``"1.3× higher"`` (None when the ratio says nothing)."""
    if value == ref:
        return None
    lo, hi = sorted((abs(value), abs(ref)))
    word = "lower" if value < ref else "higher"
    if lo == 0:
        return f"{word}, to {fmt(value, 2)}" if value == 0 else f"{word}, from {fmt(ref, 2)}"
    return f"{fmt(hi / lo, 2)}× {word}"


def _p_text(name: str, p: float) -> str:
    return f"{name} < 1e-300" if p == 0 else f"{name} = {fmt(p, 2)}"


def _comparison_p(cell: Cell, ref: Cell) -> tuple[str, float] | None:
    """The attack's own test against the reference: a p-value the reference row lacks."""
    if cell.p_value is None or cell.p_metric in (None, cell.metric):
        return None
    if ref.p_metric == cell.p_metric:
        return None
    return cell.p_metric, cell.p_value


def compare_cell(attack: str, cell: Cell, ref: Cell) -> Clause:
    """The clause for one attack: ``cell`` (a defense) against ``ref`` (the reference)."""
    name = attack if cell.metric == attack else f"{attack} {cell.metric}"
    values = f"{fmt(cell.value, 3)} vs {fmt(ref.value, 3)}"
    if cell.direction not in ("lower", "higher"):  # not a safety metric: a cost (FID) or a figure
        ratio = (f"{fmt(cell.value / ref.value, 2)}× the reference" if ref.value > 0 and
                 cell.value >= 0 else "against the reference")
        return Clause(attack, cell.metric, "cost",
                      f"{name} {ratio} ({values}; no safer direction)", cell.access)

    # The evidence: the CI of the difference, else the attack's comparison test.
    tests = []
    comp = _comparison_p(cell, ref)
    if comp is not None:
        tests.append(_p_text(*comp))
    d = cell.value - ref.value
    if None not in (cell.ci_low, cell.ci_high, ref.ci_low, ref.ci_high):
        lo, hi = difference_ci(cell.value, (cell.ci_low, cell.ci_high),
                               ref.value, (ref.ci_low, ref.ci_high))
        significant = lo > 0 or hi < 0
        tests.append(f"difference CI [{fmt(lo, 2)}, {fmt(hi, 2)}]")
    elif comp is not None:
        significant = comp[1] < LEVEL
    else:
        return Clause(attack, cell.metric, "not judged",
                      f"{name} {values} (no CI or test against the reference: not judged)",
                      cell.access)
    evidence = "; ".join([values, *tests])
    safer = d < 0 if cell.direction == "lower" else d > 0
    if significant and d != 0:
        kind = "reduced" if safer else "less safe"
        label = "" if safer else ", less safe than the reference"
        return Clause(attack, cell.metric, kind,
                      f"{name} {_ratio(cell.value, ref.value)}{label} ({evidence})", cell.access)
    return Clause(attack, cell.metric, "no reduction",
                  f"{name}: no significant reduction ({evidence})", cell.access)


def verdicts(rows: list[Row]) -> list[Verdict]:
    """A verdict for every non-reference row, against its dataset and profile's reference."""
    attacks, _ = column_order(rows)
    refs = {(r.dataset, r.profile): r for r in rows if r.reference}
    out = []
    for row in rows:
        if row.reference:
            continue
        ref = refs.get((row.dataset, row.profile))
        v = Verdict(row.dataset, row.defense, row.profile, ref.defense if ref else None)
        if ref is None:
            v.note = ("no reference row for this dataset and profile: rerun with the same "
                      "--dataset and --profile to add it")
        else:
            for attack in attacks:
                cell, base = row.cells.get(attack), ref.cells.get(attack)
                if cell is None:
                    continue
                if base is None or base.metric != cell.metric:
                    v.clauses.append(Clause(attack, cell.metric, "not judged",
                                            f"{attack}: not run on the reference", cell.access))
                else:
                    v.clauses.append(compare_cell(attack, cell, base))
            if not v.clauses:
                v.note = "no attack in common with the reference"
        out.append(v)
    return out


def verdict_lines(rows: list[Row]) -> list[str]:
    """The verdicts as plain text, one line each (the terminal summary)."""
    return [v.text for v in verdicts(rows)]
