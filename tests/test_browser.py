"""The report and the dashboard as a person sees them, in headless Chromium (via Selenium)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, REPORTED, committed_studies, copy_of, one_line_error, run
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH, HEIGHT = 1280, 1600
# What Chromium needs to run headless as root in a container, without reaching the network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--window-size={WIDTH},{HEIGHT}")
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    binary = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no Chromium and chromedriver installed (Debian: apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    yield chrome
    chrome.quit()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answers(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the dashboard exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"the dashboard did not answer within {WAIT_SECONDS}s:\n{log.read_text()}")


@contextlib.contextmanager
def serving(args: list[str], cwd: Path) -> Iterator[str]:
    """``cifar-search dashboard ARGS`` on a free local port, until the block ends: its URL."""
    port = free_port()
    log = cwd / "dashboard.log"
    with log.open("w") as out:
        process = subprocess.Popen([CLI, "dashboard", *args, "--port", str(port)],
                                   cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(f"{url}/api/studies", process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def dashboard(reported) -> Iterator[str]:
    """The dashboard on the reported study."""
    with serving(["--study", REPORTED], reported[0]) as url:
        yield url


def study_id(dashboard: str, name: str) -> int:
    with urllib.request.urlopen(f"{dashboard}/api/studies", timeout=10) as answer:
        studies = json.load(answer)["study_summaries"]
    (found,) = [s["study_id"] for s in studies if s["study_name"] == name]
    return found


def screenshot(chrome: webdriver.Chrome, path: Path) -> None:
    """Save the whole page, not only the window, as a PNG; then restore the window's size."""
    height = chrome.execute_script("return document.documentElement.scrollHeight")
    chrome.set_window_size(WIDTH, min(max(height, HEIGHT), 12000))
    assert chrome.save_screenshot(str(path))
    chrome.set_window_size(WIDTH, HEIGHT)


def wait_for(chrome: webdriver.Chrome, condition) -> None:
    WebDriverWait(chrome, WAIT_SECONDS).until(lambda _: condition())


def body_text(chrome: webdriver.Chrome) -> str:
    return chrome.find_element(By.TAG_NAME, "body").text


def rendered_plots(chrome: webdriver.Chrome) -> int:
    """Plotly figures that were drawn (plotly.js adds an SVG with this class to each)."""
    return len(chrome.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))


def test_report_renders_offline(browser, reported, tmp_path):
    cwd, done = reported
    browser.get((cwd / done.stdout.strip()).as_uri())
    # 3 trial curves, the final model's and 5 Optuna views: each draws at least one SVG.
    wait_for(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"))
             == 9 and rendered_plots(browser) >= 9)
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Study {REPORTED}"
    assert "total 3" in browser.find_element(By.ID, "counts").text
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")
    assert "JPEG-decoded" in browser.find_element(By.ID, "final-1").find_element(
        By.XPATH, "following-sibling::p[1]").text
    screenshot(browser, tmp_path / "report.png")


def test_dashboard_shows_the_study_its_trials_and_their_curves(browser, dashboard, tmp_path):
    number = study_id(dashboard, REPORTED)
    browser.get(f"{dashboard}/dashboard/studies/{number}")
    wait_for(browser, lambda: REPORTED in body_text(browser) and rendered_plots(browser) >= 1)
    screenshot(browser, tmp_path / "dashboard-study.png")

    browser.get(f"{dashboard}/dashboard/studies/{number}/trials")
    wait_for(browser, lambda: "3 Trials" in body_text(browser)
             and "trial-0-curves.png" in body_text(browser))
    image = browser.find_element(By.CSS_SELECTOR, f"img[src*='/artifacts/{number}/']")
    wait_for(browser, lambda: browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", image) == 1000)
    screenshot(browser, tmp_path / "dashboard-trial.png")


def test_dashboard_refuses_an_unknown_study(reported):
    done = run("dashboard", "--study", "nope", "--storage",
               f"sqlite:///{reported[0]}/studies/{REPORTED}.db", cwd=reported[0], check=False)
    assert "no study named 'nope'" in one_line_error(done)


def test_dashboard_on_a_busy_port_says_so(reported):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run("dashboard", "--study", REPORTED, "--port", str(port), cwd=reported[0],
                   check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"cifar-search: error: cannot serve on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("study", committed_studies(), ids=lambda study: study.name)
def test_dashboard_opens_a_committed_real_study(browser, study, tmp_path):
    """What the README promises of a committed study: its trials, their curves as the
    dashboard draws them from the reported epochs, and each trial's note of its epochs."""
    with serving(["--study", study.name, "--storage", copy_of(study, tmp_path)],
                 tmp_path) as url:
        number = study_id(url, study.name)
        browser.get(f"{url}/dashboard/studies/{number}")
        wait_for(browser, lambda: study.name in body_text(browser)
                 and rendered_plots(browser) >= 2)
        screenshot(browser, tmp_path / "dashboard-study.png")

        browser.get(f"{url}/dashboard/studies/{number}/trials")
        wait_for(browser, lambda: "Best Trial" in body_text(browser)
                 and "val_accuracy" in body_text(browser))  # The selected trial's note.
        screenshot(browser, tmp_path / "dashboard-trials.png")
