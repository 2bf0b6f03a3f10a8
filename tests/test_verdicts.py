"""Verdicts against the reference, paper entries matched on their settings (constructed stores)."""

from __future__ import annotations

import pytest

from leakbench.api import Finding, Metric
from leakbench.leaderboard import leaderboard_frame
from leakbench.results import ResultsStore
from reports.site import _paper_rows, build_site, setting_matches
from reports.tables import leaderboard_rows
from reports.verdicts import difference_ci, verdicts

CPSAMPLE_DEFAULT = {"alpha": 0.25, "scale": 100.0, "classifier_width": None}


def _store(tmp_path, cells, reference="ddim") -> ResultsStore:
    """A results store holding ``cells``: (defense, defense params, attack, metrics)."""
    store = ResultsStore(tmp_path / "results")
    run = store.start_run(profile="smoke", seed=0, command="constructed")
    for defense, params, attack, metrics in cells:
        store.record(run, dataset="digits", defense=defense, defense_params=params,
                     attack=attack, attack_params={},
                     finding=Finding(metrics, info={"reference_defense": reference},
                                     headline=metrics[0].name))
    return store


def _rows(store):
    return leaderboard_rows(leaderboard_frame(store.rows()), store.findings())


def _auc(value, lo, hi):
    return Metric("auc", value, lo, hi, n=192, direction="lower")


def _frac(value, lo, hi, p=None):
    out = [Metric("frac_above", value, lo, hi, n=1000, direction="lower")]
    if p is not None:
        out.append(Metric("chi2_p", p, p_value=p, n=1000, direction="lower"))
    return out


def test_mover_interval_equals_newcombe_for_two_proportions():
    from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

    for k1, n1, k2, n2 in [(31, 1000, 653, 1000), (0, 500, 12, 400), (45, 100, 40, 100)]:
        a, b = k1 / n1, k2 / n2
        ci_a = proportion_confint(k1, n1, method="wilson")
        ci_b = proportion_confint(k2, n2, method="wilson")
        want = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff")
        assert difference_ci(a, ci_a, b, ci_b) == pytest.approx(want, abs=1e-9)


def test_verdict_says_no_significant_reduction_when_the_difference_ci_covers_zero(tmp_path):
    store = _store(tmp_path, [
        ("ddim", {}, "loss_mia", [_auc(0.99, 0.97, 1.0)]),
        ("cpsample", CPSAMPLE_DEFAULT, "loss_mia", [_auc(0.98, 0.95, 1.0)]),
    ])
    rows = _rows(store)
    assert [r.defense for r in rows if r.reference] == ["ddim"]
    (v,) = verdicts(rows)
    assert v.defense == "cpsample" and v.reference == "ddim"
    (clause,) = v.clauses
    assert clause.kind == "no reduction"
    assert "no significant reduction" in clause.text and "0.98 vs 0.99" in clause.text
    assert clause.access == "white-box/effective"  # loss_mia's threat model, from the spec
    # The index and the cell page both carry it.
    index = build_site(store, tmp_path / "site")
    html = index.read_text()
    assert 'class="verdict" data-defense="cpsample"' in html
    assert "no significant reduction" in html
    page = next(p for p in (index.parent / "cells").glob("digits--cpsample--*.html"))
    assert "no significant reduction" in page.read_text()


def test_verdict_words_follow_the_metric_metadata(tmp_path):
    store = _store(tmp_path, [
        ("ddim", {}, "replication", _frac(0.653, 0.623, 0.682)),
        ("ddim", {}, "fid", [Metric("fid", 28.8, n=256)]),
        ("ddim", {}, "shield", [Metric("score", 0.5, 0.45, 0.55, direction="higher")]),
        ("cpsample", CPSAMPLE_DEFAULT, "replication", _frac(0.031, 0.022, 0.044, p=3e-189)),
        ("cpsample", CPSAMPLE_DEFAULT, "fid", [Metric("fid", 70.9, n=256)]),
        ("cpsample", CPSAMPLE_DEFAULT, "shield", [Metric("score", 0.3, 0.25, 0.35,
                                                         direction="higher")]),
    ])
    (v,) = verdicts(_rows(store))
    by = {c.attack: c for c in v.clauses}
    assert by["replication"].kind == "reduced"
    assert "replication frac_above 21× lower" in by["replication"].text
    assert "chi2_p = 3.0e-189" in by["replication"].text  # the attack's test is cited
    assert by["fid"].kind == "cost" and "2.5× the reference" in by["fid"].text
    # higher is safer here, and it went down: less safe, never "reduced"
    assert by["shield"].kind == "less safe" and "1.7× lower" in by["shield"].text


def test_a_comparison_test_decides_without_cis(tmp_path):
    store = _store(tmp_path, [
        ("ddim", {}, "replication", [Metric("frac_above", 0.05, n=100, direction="lower")]),
        ("cpsample", CPSAMPLE_DEFAULT, "replication",
         [Metric("frac_above", 0.03, n=100, direction="lower"),
          Metric("chi2_p", 0.25, p_value=0.25, n=100, direction="lower")]),
        ("rejection", {}, "replication", [Metric("frac_above", 0.03, n=100, direction="lower")]),
    ])
    by = {v.defense: v.clauses[0] for v in verdicts(_rows(store))}
    assert by["cpsample"].kind == "no reduction" and "chi2_p = 0.25" in by["cpsample"].text
    assert by["rejection"].kind == "not judged"


def test_the_reference_comes_from_the_store_not_from_a_name(tmp_path):
    store = _store(tmp_path, [
        ("mymodel", {}, "loss_mia", [_auc(0.99, 0.97, 1.0)]),
        ("ddim", {}, "loss_mia", [_auc(0.6, 0.5, 0.7)]),
    ], reference="mymodel")
    rows = _rows(store)
    assert rows[0].defense == "mymodel" and rows[0].reference and not rows[1].reference
    (v,) = verdicts(rows)
    assert v.defense == "ddim" and v.reference == "mymodel" and v.clauses[0].kind == "reduced"


def test_paper_entry_is_matched_on_its_setting_only(tmp_path):
    fid = [Metric("fid", 70.9, n=256)]
    store = _store(tmp_path, [("ddim", {}, "fid", [Metric("fid", 28.8, n=256)]),
                              ("cpsample", CPSAMPLE_DEFAULT, "fid", fid)])
    rows = _rows(store)
    df = leaderboard_frame(store.rows())
    paper = {(p["table"], p["dataset"][:5], p["defense"]): p for p in _paper_rows(rows, df)}
    cifar = paper[("Table 4", "CIFAR", "cpsample")]
    assert cifar["params"] == {"alpha": 0.001}
    assert cifar["measured"] == []  # the α = 0.25 cell is not the paper's α = 0.001
    assert cifar["run_spec"] == "cpsample[alpha=0.001]"
    assert [m["value"] for m in paper[("Table 4", "CIFAR", "ddim")]["measured"]] == [28.8]
    table1 = paper[("Table 1", "CIFAR", "cpsample")]
    assert table1["run_spec"] == "cpsample[alpha=0.001,scale=1]"
    html = build_site(store, tmp_path / "site").read_text()
    assert "--defense &#39;cpsample[<wbr>alpha=0.001,<wbr>scale=1]&#39; --attack replication" in html

    # Once the paper's setting has run, it is the one shown beside the paper's number.
    run = store.start_run(profile="smoke", seed=0, command="constructed")
    store.record(run, dataset="digits", defense="cpsample[alpha=0.001]",
                 defense_params={**CPSAMPLE_DEFAULT, "alpha": 0.001}, attack="fid",
                 attack_params={}, finding=Finding([Metric("fid", 31.0, n=256)],
                                                   info={"reference_defense": "ddim"}))
    rows, df = _rows(store), leaderboard_frame(store.rows())
    cifar = next(p for p in _paper_rows(rows, df)
                 if p["table"] == "Table 4" and p["defense"] == "cpsample" and "CIFAR" in p["dataset"])
    assert [(m["defense"], m["value"]) for m in cifar["measured"]] == [("cpsample[alpha=0.001]", 31.0)]


def test_paper_003_entries_are_shown_only_beside_their_own_medmnist_dataset(tmp_path):
    store = ResultsStore(tmp_path / "results")
    run = store.start_run(profile="smoke", seed=0, command="constructed")
    for dataset, value in [("digits", 0.003), ("medmnist:breastmnist[split=official]", 0.0011)]:
        store.record(run, dataset=dataset, defense="ddim", defense_params={}, attack="saf",
                     attack_params={}, finding=Finding([Metric("p_reproduce", value, n=1000)],
                                                       info={"reference_defense": "ddim"}))
    paper = [p for p in _paper_rows(_rows(store), leaderboard_frame(store.rows()))
             if p["attack"] == "saf" and p["metric"] == "p_reproduce"]
    breast = next(p for p in paper if p["dataset"].startswith("BreastMNIST"))
    assert [(m["dataset"], m["value"]) for m in breast["measured"]] == [
        ("medmnist:breastmnist[split=official]", 0.0011)]
    blood = next(p for p in paper if p["dataset"].startswith("BloodMNIST"))
    assert blood["measured"] == []  # the digits row is not BloodMNIST's
    assert "--dataset 'medmnist:bloodmnist[split=official]'" in blood["run_command"]
    assert all(m["dataset"] != "digits" for p in paper for m in p["measured"])


def test_setting_matches_compares_numbers_as_numbers():
    assert setting_matches({"alpha": 0.001, "scale": 1.0}, {"alpha": 0.001, "scale": 1})
    assert not setting_matches({"alpha": 0.25, "scale": 1.0}, {"alpha": 0.001})
    assert not setting_matches({"scale": 1.0}, {"alpha": 0.001})
    assert setting_matches({"anything": 1}, {})
    assert not setting_matches({"flag": True}, {"flag": 1})
