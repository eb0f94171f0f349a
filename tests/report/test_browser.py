"""The report in a real headless browser (Debian's chromium + chromedriver, driven by selenium).

What `make run` writes is opened from disk and from ``avminer report --serve``'s server: it must load
without console errors, show every mined frame with its images, and filter by reason and by slice.
Chromium missing is a failure, not a skip: ``tools/test-services.sh`` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avminer.report.serve import make_server
from avminer.sinks.local import read_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("the report's browser test needs Debian's chromium and chromedriver: run tools/test-services.sh "
                    "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1400", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def mined_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make run`'s command on an empty directory; returns its output directory."""
    cwd = tmp_path_factory.mktemp("run")
    done = subprocess.run([sys.executable, "-m", "avminer.cli.main", "mine", "--profile", "sample"], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "avminer-out"


def _console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _visible(driver: Any) -> list[Any]:
    return [c for c in driver.find_elements("css selector", "#gallery .card") if c.is_displayed()]


def _check_page(driver: Any, url: str, mined: list[dict[str, Any]]) -> None:
    from selenium.webdriver.support.ui import Select

    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(url)
    assert driver.find_element("css selector", "h1").text == "avminer mining report"
    cards = driver.find_elements("css selector", "#gallery .card")
    assert len(cards) == len(mined) > 0
    shown = {c.find_element("css selector", ".fid").text for c in cards}
    assert shown == {m["frame_id"] for m in mined}
    # Every frame and uncertainty map decoded (naturalWidth is 0 for a broken image). The gallery loads
    # lazily, as a person scrolling it would: bring each image into view, then wait for all to finish.
    from selenium.webdriver.support.ui import WebDriverWait

    widths_js = ("return Array.from(document.querySelectorAll('#gallery img'))"
                 ".map(i => i.complete ? i.naturalWidth : -1);")
    for img in driver.find_elements("css selector", "#gallery img"):
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", img)
    WebDriverWait(driver, 30).until(lambda d: min(d.execute_script(widths_js), default=0) != -1)
    driver.execute_script("window.scrollTo(0, 0);")
    widths = driver.execute_script(widths_js)
    assert len(widths) == 2 * len(mined) and min(widths) > 0, widths
    count = driver.find_element("id", "filter-count")
    assert count.text == f"{len(mined)} of {len(mined)} mined frames shown"

    reason = "shift" if any("shift" in m["reasons"] for m in mined) else mined[0]["reasons"][0]
    Select(driver.find_element("id", "filter-reason")).select_by_value(reason)
    expected = {m["frame_id"] for m in mined if reason in m["reasons"]}
    assert {c.find_element("css selector", ".fid").text for c in _visible(driver)} == expected
    assert count.text == f"{len(expected)} of {len(mined)} mined frames shown"
    Select(driver.find_element("id", "filter-reason")).select_by_value("")

    dusk = next(m["slice"] for m in mined if m["slice"].startswith("dusk/"))
    Select(driver.find_element("id", "filter-slice")).select_by_value(dusk)
    expected = {m["frame_id"] for m in mined if m["slice"] == dusk}
    assert {c.find_element("css selector", ".fid").text for c in _visible(driver)} == expected
    assert 0 < len(expected) < len(mined)

    errors = _console_errors(driver)
    assert errors == [], errors
    # The console is really being read: an error the page did not make must show up.
    driver.execute_script("console.error('avminer-report-probe')")
    assert any("avminer-report-probe" in e for e in _console_errors(driver))


def test_report_from_disk_loads_shows_the_mined_frames_and_filters(browser: Any, mined_run: Path) -> None:
    mined = read_jsonl(mined_run / "requests.jsonl")
    _check_page(browser, (mined_run / "report" / "index.html").resolve().as_uri(), mined)


def test_report_served_on_loopback(browser: Any, mined_run: Path, tmp_path: Path) -> None:
    server = make_server(mined_run / "report")
    assert server.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _check_page(browser, f"http://127.0.0.1:{server.server_address[1]}/", read_jsonl(mined_run / "requests.jsonl"))
        _visible(browser)[0].find_element("css selector", "a[href^='requests/']").click()
        assert '"source": "label request as sent"' in browser.page_source  # the frame's label request
    finally:
        server.shutdown()
        server.server_close()
