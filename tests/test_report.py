"""The static HTML report: a pure function of the results store, complete and offline."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from leakbench.leaderboard import leaderboard_frame
from reports.site import build_site, load_paper_reference
from reports.tables import leaderboard_rows, pareto_front

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(report_store):
    return report_store.store


@pytest.fixture
def names(report_store):
    return report_store.defenses, report_store.attacks


class Page(HTMLParser):
    """The parts of a page the tests look at: table rows, links, images, scripts."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: dict[str, list[dict[str, str]]] = {}
        self.links: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self._table: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table and "data-defense" in a:
            self.rows.setdefault(self._table, []).append(a)
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a["src"])
        for key in ("src", "href"):
            if tag in ("script", "link", "img") and re.match(r"(https?:)?//", a.get(key) or ""):
                self.external.append(a[key])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_same_store_gives_the_same_bytes_apart_from_the_build_time(store, tmp_path):
    build_site(store, tmp_path / "a", build_time="2026-01-01 00:00:00")
    build_site(store, tmp_path / "b", build_time="2026-01-01 00:00:00")
    build_site(store, tmp_path / "c")  # the real clock
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and len(a) > 10

    def strip(data: bytes) -> bytes:
        return re.sub(rb'<span id="build-time">[^<]*</span>', b"", data)

    assert {k: strip(v) for k, v in a.items()} == {k: strip(v) for k, v in c.items()}
    assert a["index.html"] != c["index.html"]  # the build time is in the footer, and only it


def test_index_has_one_row_per_defense_variant_and_a_column_per_attack(store, tmp_path, names):
    defenses, attacks = names
    index = build_site(store, tmp_path / "site")
    page = Page(index.read_text())
    rows = page.rows["leaderboard"]
    assert sorted(r["data-defense"] for r in rows) == sorted(defenses)
    frame = leaderboard_frame(store.rows())
    assert set(frame["defense"]) == set(defenses)
    html = index.read_text()
    for attack in attacks:
        assert f'data-attack="{attack}"' in html
    # Every number carries its provenance: the run, its git revision and the machine.
    assert "test_report" in html and "CPUs" in html
    assert not page.external, "the report must not fetch anything from the network"


def test_every_link_and_figure_of_the_site_exists(store, tmp_path, names):
    defenses, _ = names
    index = build_site(store, tmp_path / "site")
    site = index.parent
    pages = [index, *sorted((site / "cells").glob("*.html"))]
    assert len(pages) == 1 + len(defenses)
    n_images = 0
    for path in pages:
        page = Page(path.read_text())
        assert not page.external
        for ref in page.links + page.images:
            if ref.startswith("#"):
                continue
            target = (path.parent / ref).resolve()
            assert target.is_file(), f"{path.name} links to missing {ref}"
        for src in page.images:
            assert (path.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        n_images += len(page.images)
    # A cell page draws the similarity histograms, the closest pairs and the ROC curve.
    ddim = next(p for p in pages[1:] if p.name.startswith("digits--ddim--smoke"))
    text = ddim.read_text()
    for title in ("similarity", "ROC"):
        assert title.lower() in text.lower(), f"no {title} figure on the ddim page"
    assert n_images > 2 * len(defenses)


def test_privacy_quality_chart_and_pareto_marks(store, tmp_path, names):
    defenses, _ = names
    index = build_site(store, tmp_path / "site")
    html = index.read_text()
    assert "figures/privacy_quality-digits-smoke.png" in html
    assert (index.parent / "figures" / "privacy_quality-digits-smoke.png").is_file()
    # The starred rows are exactly the Pareto front of (FID, frac_above) in the store.
    frame = leaderboard_frame(store.rows())
    point = {}
    for d in defenses:
        sel = frame[frame["defense"] == d].set_index(["attack", "metric"])["value"]
        point[d] = (float(sel[("fid", "fid")]), float(sel[("replication", "frac_above")]))
    front = {defenses[i] for i in pareto_front([point[d] for d in defenses])}
    starred = {r["data-defense"] for r in Page(html).rows["leaderboard"]
               if "pareto" in r.get("class", "")}
    assert starred == front and starred


def test_pareto_front_on_hand_made_points():
    pts = [(1.0, 5.0), (2.0, 2.0), (3.0, 3.0), (5.0, 1.0), (2.0, 2.0), (6.0, 6.0)]
    assert pareto_front(pts) == [0, 1, 3, 4]  # ties are both kept; (3,3) and (6,6) are dominated
    assert pareto_front([]) == []


def test_paper_reference_entries_cite_paper_and_table():
    entries = load_paper_reference()
    assert entries
    for e in entries:
        assert e["paper"] and e["table"] and e["defense"] and e["metric"]
        assert isinstance(e["value"], (int, float))


def test_report_command_on_a_missing_store_says_what_to_do(tmp_path):
    r = subprocess.run([sys.executable, "-m", "leakbench.cli", "report", "--out",
                        str(tmp_path / "site"), "--results", str(tmp_path / "none")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "No results store at" in r.stderr and "run `pytest benchmarks/` first" in r.stderr
    assert not (tmp_path / "site").exists()


def test_reference_row_is_run_and_marked_when_only_one_defense_was_asked(smoke_harness, tmp_path):
    h = smoke_harness
    for attack in ("replication", "loss_mia"):
        h.run_cell("digits", "cpsample", attack)
    assert h.missing_reference_cells() == [("digits", "ddim", "replication"),
                                           ("digits", "ddim", "loss_mia")]
    h.finish()
    assert h.missing_reference_cells() == []
    rows = leaderboard_rows(leaderboard_frame(h.store.rows()), h.store.findings())
    assert [(r.defense, r.reference) for r in rows] == [("ddim", True), ("cpsample", False)]
    assert set(rows[0].cells) == set(rows[1].cells) == {"replication", "loss_mia"}
    html = build_site(h.store, tmp_path / "site").read_text()
    first = Page(html).rows["leaderboard"][0]
    assert first["data-defense"] == "ddim" and first.get("data-reference") == "true"
    assert 'class="verdict" data-defense="cpsample"' in html
    assert 'class="verdict" data-defense="ddim"' not in html  # the reference has no verdict


def test_report_command_takes_a_title_and_an_about_text(report_store, tmp_path):
    about = "Run by the <imaging> lab on 2 CPUs.\nDefault profile."
    r = subprocess.run([sys.executable, "-m", "leakbench.cli", "report", "--out",
                        str(tmp_path / "site"), "--results", str(report_store.store.root),
                        "--title", "Lab X privacy leaderboard", "--about", about],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    assert "<title>Lab X privacy leaderboard</title>" in html
    assert "<h1>Lab X privacy leaderboard</h1>" in html
    assert "Run by the &lt;imaging&gt; lab" in html  # plain text, escaped
    r = subprocess.run([sys.executable, "-m", "leakbench.cli", "report", "--out",
                        str(tmp_path / "site2"), "--results", str(report_store.store.root),
                        "--about", "x" * 5000], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "keep it under 2,000" in r.stderr
    assert not (tmp_path / "site2").exists()


def test_chart_axes_start_at_zero_and_show_one_or_two_points():
    from reports.figures import axis_limits

    lo, hi = axis_limits([0.031])  # from zero: not an axis spanning its rounding error
    assert lo == 0.0 and 0.031 < hi < 0.04
    lo, hi = axis_limits([28.8, 70.9])
    assert lo == 0.0 and 70.9 < hi < 80
    assert axis_limits([0.0]) == (0.0, 1.0)
    lo, hi = axis_limits([-1.0, 1.0])
    assert lo < -1.0 and hi > 1.0
