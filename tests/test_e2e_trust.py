"""In a real browser at 1280x800: the Run page's reliability diagram and a prediction set on the
Predict page ("Not sure: … or …"), with screenshots in tests/screenshots/."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, REQUIRE_BROWSER, SHOTS, serve

ROOT = Path(__file__).resolve().parents[1]
BUSY = "[data-testid='stStatusWidget'], [data-testid='stSpinner'], [data-testid='stSkeleton']"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not REQUIRE_BROWSER,
        reason=f"{CHROMIUM} is not installed (apt-get install chromium)",
    ),
]


def _calm(page, timeout: float = 120) -> None:
    """Wait until the app's script run has finished (no spinner, skeleton or status)."""
    deadline, calm = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and calm < 3:
        calm = calm + 1 if page.locator(BUSY).count() == 0 else 0
        time.sleep(0.4)


def _train(home: Path) -> str:
    """One feature-extraction run on the built-in photos, through the CLI, in ``home``."""
    env = {**os.environ, "TRANSFER_STUDIO_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "core", "train", "--data", "builtin:photos",
         "--backbone", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "96",
         "--mode", "feature_extraction", "--epochs", "3", "--no-augment", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1].split('"run_id": "')[1].split('"')[0]


def _ambiguous(home: Path, out: Path) -> Path:
    """Half a cat photo, half a coffee cup: a picture the model should not be sure about."""
    photos = home / "data" / "builtin" / "photos"
    cat = np.asarray(Image.open(next((photos / "cat").glob("*"))).convert("RGB").resize((224, 224)))
    cup = np.asarray(
        Image.open(next((photos / "coffee").glob("*"))).convert("RGB").resize((224, 224))
    )
    mixed = (0.5 * cat + 0.5 * cup).astype(np.uint8)
    Image.fromarray(mixed).save(out)
    return out


def test_reliability_diagram_and_prediction_set_in_browser(tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with serve() as (url, home):
        run_id = _train(home)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(120_000)
                page.goto(f"{url}/run?run={run_id}")
                diagram = page.locator(".st-key-reliability_diagram")
                expect(diagram).to_be_visible()
                _calm(page)
                expect(page.get_by_text("Calibrated confidence")).to_be_visible()
                page.get_by_text("Calibrated confidence").scroll_into_view_if_needed()
                page.mouse.wheel(0, 120)
                time.sleep(1)
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "trust_reliability_diagram.png"))
                assert diagram.locator(".scatterlayer .trace").count() == 3

                page.goto(f"{url}/predict")
                expect(page.locator(".st-key-images")).to_be_visible()
                _calm(page)
                image = _ambiguous(home, tmp_path / "cat-or-coffee.png")
                page.locator(".st-key-images input[type='file']").set_input_files(str(image))
                said = page.get_by_text("prediction set", exact=False).first
                expect(said).to_be_visible()
                _calm(page)
                said.scroll_into_view_if_needed()
                page.mouse.wheel(0, 200)
                time.sleep(1)
                page.screenshot(path=str(SHOTS / "trust_prediction_set.png"))
                assert said.inner_text().startswith(("Sure: ", "Not sure: "))
            finally:
                browser.close()
