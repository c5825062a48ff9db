"""In a real browser at 1280x800: the Run page's reliability diagram and a prediction set on the
Predict page ("Not sure: … or …"), with screenshots in tests/screenshots/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e._browser import CHROMIUM, CHROMIUM_ARGS, REQUIRE_BROWSER, SHOTS, serve, settle
from tests.helpers import ROOT

pytestmark = [  # e2e and slow: this folder's conftest
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not REQUIRE_BROWSER,
        reason=f"{CHROMIUM} is not installed (apt-get install chromium)",
    ),
]


def _core(home: Path, *args: str) -> str:
    """``python -m core ARGS`` in ``home``; its stdout."""
    env = {**os.environ, "TRANSFER_STUDIO_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _train(home: Path) -> str:
    """One short epoch on the built-in textures at 32 px (an imperfect model: its confidence
    spreads over the reliability diagram), through the CLI, in ``home``."""
    out = _core(home, "train", "--data", "builtin:textures", "--backbone", "efficientnet_lite0",
                "--weights", "imagenet", "--image-size", "32", "--mode", "feature_extraction",
                "--epochs", "1", "--batch-size", "16", "--json")  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])["run_id"]


def _unsure_image(home: Path, run_id: str) -> Path:
    """A validation image whose 90 % prediction set holds two labels (else more, else one)."""
    evaluation = json.loads((home / "runs" / run_id / "evaluation.json").read_text())
    paths = [img["path"] for img in evaluation["images"]]
    results = json.loads(_core(home, "predict", "--run", run_id, *paths, "--json"))
    by_size = sorted(results, key=lambda r: {2: 0, 1: 2}.get(len(r["set"] or []), 1))
    return Path(by_size[0]["image"])


def test_reliability_diagram_and_prediction_set_in_browser() -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)
    with serve() as (url, home):
        run_id = _train(home)
        image = _unsure_image(home, run_id)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(120_000)
                page.goto(f"{url}/run?run={run_id}")
                diagram = page.locator(".st-key-reliability_diagram")
                expect(diagram).to_be_visible()
                settle(page)
                assert diagram.locator(".scatterlayer .trace").count() == 3
                diagram.evaluate("e => e.scrollIntoView({block: 'end'})")
                time.sleep(1)
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "trust_reliability_diagram.png"))

                page.goto(f"{url}/predict")
                expect(page.locator(".st-key-images")).to_be_visible()
                settle(page)
                page.locator(".st-key-images input[type='file']").set_input_files(str(image))
                said = page.get_by_text("prediction set", exact=False).first
                expect(said).to_be_visible()
                settle(page)
                said.evaluate("e => e.scrollIntoView({block: 'center'})")
                time.sleep(1)
                page.screenshot(path=str(SHOTS / "trust_prediction_set.png"))
                assert any(w in said.inner_text() for w in ("Sure: ", "Not sure: "))
            finally:
                browser.close()
