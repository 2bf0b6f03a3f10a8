"""The built HTML report in a real browser: headless Chromium driven by Selenium.

Marked ``browser``.  Skipped, with the reason, when Chromium, its driver or Selenium
is missing (``.ci/run`` installs Debian's ``chromium`` and ``chromium-driver``).
Set ``LEAKBENCH_SCREENSHOTS=DIR`` to keep PNG screenshots of the pages it visits.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reports.site import build_site

pytestmark = pytest.mark.browser

# Chromium must not reach out: no network services, no updates, a fresh profile.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1280,900"]
# The report must fit a 1,280 px wide window without horizontal scrolling.


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium is not installed: pip install -e '.[test]'")
    browser = _find("chromium", "chromium-browser", "google-chrome")
    chromedriver = _find("chromedriver")
    if browser is None or chromedriver is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium "
                    "chromium-driver); .ci/run installs it")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = webdriver.ChromeService(executable_path=chromedriver)
    d = webdriver.Chrome(options=options, service=service)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def site(report_store, tmp_path_factory) -> Path:
    return build_site(report_store.store, tmp_path_factory.mktemp("browser") / "site")


def _screenshot(driver, name: str) -> None:
    folder = os.environ.get("LEAKBENCH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def _column_values(driver, index: int) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[index].get_attribute("data-sort") for r in rows]


def _assert_no_horizontal_scroll(driver, page: str) -> None:
    width, scroll = driver.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth]")
    assert width <= 1280, f"the window is {width} px wide; the check needs at most 1,280"
    assert scroll <= width, f"{page} is {scroll} px wide in a {width} px window: it scrolls"


def test_leaderboard_rows_sorting_and_a_cell_page(driver, site, report_store):
    from selenium.webdriver.common.by import By

    defenses = report_store.defenses
    driver.get(site.as_uri())
    assert driver.title == "leakbench leaderboard"
    rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    assert sorted(r.get_attribute("data-defense") for r in rows) == sorted(defenses)
    assert [r.get_attribute("data-defense") for r in rows
            if r.get_attribute("data-reference") == "true"] == ["ddim"]
    _assert_no_horizontal_scroll(driver, "the index")
    # One visible verdict line per defense that is not the reference.
    verdicts = driver.find_elements(By.CSS_SELECTOR, "#verdicts li.verdict")
    assert sorted(v.get_attribute("data-defense") for v in verdicts) == \
        sorted(d for d in defenses if d != "ddim")
    for v in verdicts:
        assert v.is_displayed() and "frac_above" in v.text and "fid" in v.text
    _screenshot(driver, "index")

    # The reader can hide a group of columns.
    box = driver.find_element(By.CSS_SELECTOR, "#columns input[data-toggle='costs']")
    cost_header = driver.find_element(By.CSS_SELECTOR, "#leaderboard th.col-costs")
    assert cost_header.is_displayed()
    box.click()
    assert not cost_header.is_displayed()
    box.click()
    assert cost_header.is_displayed()

    # Sort by the replication column: ascending, then descending on a second click.
    headers = driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
    col = next(i for i, h in enumerate(headers) if h.get_attribute("data-attack") == "replication")
    headers[col].click()
    assert headers[col].get_attribute("aria-sort") == "ascending"
    asc = [float(v) for v in _column_values(driver, col)]
    assert asc == sorted(asc)
    headers[col].click()
    desc = [float(v) for v in _column_values(driver, col)]
    assert desc == sorted(asc, reverse=True)
    # Text columns sort too: the defense names.
    defense_col = next(i for i, h in enumerate(headers) if h.text.startswith("defense"))
    headers[defense_col].click()
    names = [driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")[i]
             .get_attribute("data-defense") for i in range(len(defenses))]
    assert names == sorted(defenses)

    # Open a defended page: its verdict is on top, and it fits the window too.
    driver.find_element(By.LINK_TEXT, "cpsample").click()
    assert "cpsample" in driver.title
    verdict = driver.find_element(By.ID, "verdict")
    assert "against the reference" in verdict.text and "frac_above" in verdict.text
    _assert_no_horizontal_scroll(driver, "the cpsample page")
    _screenshot(driver, "cell-cpsample")
    driver.back()

    # Open the ddim page from its link; every figure on it must have loaded.
    driver.find_element(By.LINK_TEXT, "ddim").click()
    assert "ddim" in driver.title
    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 3
    for img in images:
        loaded = driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        assert loaded, f"figure {img.get_attribute('src')} did not load"
    _assert_no_horizontal_scroll(driver, "the ddim page")
    _screenshot(driver, "cell-ddim")
