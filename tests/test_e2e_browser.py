"""End to end in a real browser: `streamlit run` + headless Chromium driven by Playwright.

Train page → tiny config → Launch → the live chart fills in → the run completes → Predict page →
drop an image → the probability chart appears. Screenshots of every step go to tests/screenshots/.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_STARTED = [time.monotonic()]  # reset when the test starts; screenshots log their time (-s)
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "tests" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
BUSY = "[data-testid='stStatusWidget'], [data-testid='stSpinner'], [data-testid='stSkeleton']"

# CI sets TRANSFER_STUDIO_REQUIRE_BROWSER=1: there a missing browser fails instead of skipping.
REQUIRE_BROWSER = os.environ.get("TRANSFER_STUDIO_REQUIRE_BROWSER") == "1"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,  # trains models through the browser
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not REQUIRE_BROWSER,
        reason=f"{CHROMIUM} is not installed (apt-get install chromium)",
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """A `streamlit run` of the app on a free port with its own studio home."""
    home = tempfile.mkdtemp(prefix="transfer-studio-e2e-")
    port = _free_port()
    env = {**os.environ, "TRANSFER_STUDIO_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(Path(home) / "streamlit.log", "w")  # closed in the finalizer
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
            "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log.name}")
            time.sleep(0.5)
        yield url, Path(home)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _settle(page, timeout: float = 90) -> None:
    """Wait until the app has finished its current run (no spinner, skeleton or status)."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        calm = calm + 1 if page.locator(BUSY).count() == 0 else 0
        if calm >= 3:
            return
        time.sleep(0.4)


def _shot(page, name: str) -> None:
    print(f"{time.monotonic() - _STARTED[0]:6.1f}s {name}", flush=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _select(page, key: str, option: str) -> None:
    page.locator(f".st-key-{key} input[role='combobox']").click()
    page.get_by_role("option").filter(has_text=option).first.click()
    _settle(page)


def _number(page, key: str, value: int) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def _traces(page) -> int:
    return page.locator(".st-key-training_curves .scatterlayer .trace").count()


def test_train_then_predict_in_browser(server):
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is required here (apt-get install chromium)"
    url, home = server
    _STARTED[0] = time.monotonic()
    expect.set_options(timeout=90_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1800})
            page.set_default_timeout(90_000)
            page.goto(f"{url}/train")
            expect(page.locator(".st-key-launch")).to_be_visible()
            _settle(page)
            _shot(page, "1_train_page")

            _select(page, "backbone", "MobileNetV2 ·")
            page.locator(".st-key-weights label").filter(has_text="none").click()
            _settle(page)
            _number(page, "size", 32)
            _select(page, "data", "builtin:textures")
            _number(page, "epochs", 3)
            _number(page, "batch", 4)  # 24 steps per epoch: time to watch the curves grow
            page.locator(".st-key-cache label").click()  # real per-batch training
            _settle(page)
            _shot(page, "2_configured")

            page.locator(".st-key-launch button").click()
            stop = page.locator(".st-key-stop")
            expect(stop).to_be_visible()  # the run is running and can be stopped
            live: list[int] = []  # trace counts seen while the run was still running
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and (not live or live[-1] < 3):
                traces = _traces(page)
                if not stop.count():
                    break
                if traces:
                    live.append(traces)
                    if len(live) == 1:
                        _shot(page, "3_training_live")
                time.sleep(0.25)
            assert live, "the chart never showed data while the run was training"

            done = page.get_by_text("Completed: best validation accuracy")
            expect(done).to_be_visible(timeout=150_000)
            _settle(page)
            assert _traces(page) >= 3  # per-batch, per-epoch train and validation curves
            _shot(page, "4_completed")

            page.locator("[data-testid='stSidebar'] a").filter(has_text="Predict").click()
            expect(page.locator(".st-key-images")).to_be_visible()
            _settle(page)
            expect(page.locator(".st-key-models")).to_contain_text("mobilenet_v2")
            image = next((home / "data" / "builtin" / "textures" / "brick").glob("*.png"))
            page.locator(".st-key-images input[type='file']").set_input_files(str(image))
            chart = page.locator("[data-testid='stPlotlyChart']").first
            expect(chart).to_be_visible()
            _settle(page)
            expect(page.get_by_text(" ms", exact=False).first).to_be_visible()
            assert page.locator("[data-testid='stPlotlyChart'] .bars .point").count() >= 1
            _shot(page, "5_predict")

            page.locator(".st-key-gradcam label").click()  # Grad-CAM beside the bars
            expect(page.get_by_text("Grad-CAM ·")).to_be_visible()
            _settle(page)
            expect(page.get_by_text("feature map is 1×1")).to_be_visible()  # a 32 px model
            _shot(page, "6_predict_gradcam")
        finally:
            browser.close()
