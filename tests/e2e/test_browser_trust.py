"""In a real browser at 1280x800: the Run page's reliability diagram and a prediction set on the
Predict page ("Not sure: … or …"), with screenshots in tests/screenshots/."""

from __future__ import annotations

import json
import os
import re
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


def _twinned(folder: Path) -> None:
    """Two classes of 12 distinct pictures, every 2nd with a cropped, re-encoded twin."""
    from PIL import Image

    from tests.helpers import cropped_twin, smooth_picture

    for c, name in enumerate(("ants", "bees")):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            picture = smooth_picture(100 * c + i, lean=c)
            Image.fromarray(picture).save(folder / name / f"{i}.png")
            if i % 2 == 0:
                (folder / name / f"{i}-twin.jpg").write_bytes(cropped_twin(picture))


def test_leakage_on_the_data_and_run_pages_in_browser(tmp_path) -> None:
    """A managed dataset with planted twins, one run on it (which caches its features): the Data
    page finds the twins by itself before the next run; the Run page shows the pairs with Move
    and Exclude. Screenshots: trust_data_leakage.png, trust_run_leakage.png."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)
    _twinned(tmp_path / "bugs")
    with serve() as (url, home):
        _core(home, "dataset", "create", "bugs", "--from", str(tmp_path / "bugs"))
        out = _core(home, "train", "--data", "dataset:bugs", "--backbone",
                    "efficientnet_lite0", "--weights", "imagenet", "--image-size", "32",
                    "--mode", "feature_extraction", "--epochs", "1", "--json")  # fmt: skip
        run_id = json.loads(out.strip().splitlines()[-1])["run_id"]
        # The Train form's choice (what the Data page checks with) and the data in use.
        script = (
            "from core.config import RunConfig; from core.paths import runs_root; "
            "from core.runs.drafts import save_draft, save_chosen_data; "
            "save_draft(runs_root(), RunConfig(data='dataset:bugs', "
            "backbone='efficientnet_lite0', image_size=32)); "
            "save_chosen_data(runs_root(), 'dataset:bugs')"
        )
        env = {**os.environ, "TRANSFER_STUDIO_HOME": str(home)}
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(120_000)
                page.goto(f"{url}/data")
                said = page.get_by_text("near-copy in training", exact=False).first
                expect(said).to_be_visible()
                settle(page)
                said.evaluate("e => e.scrollIntoView({block: 'center'})")
                time.sleep(1)
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "trust_data_leakage.png"))
                assert " of " in said.inner_text() and "None of" not in said.inner_text()

                page.goto(f"{url}/run?run={run_id}")
                move = page.locator(f".st-key-move_twins_{run_id}")
                expect(move).to_be_visible()
                expect(page.locator(f".st-key-exclude_twins_{run_id}")).to_be_visible()
                settle(page)
                move.evaluate("e => e.scrollIntoView({block: 'end'})")
                time.sleep(1)
                page.screenshot(path=str(SHOTS / "trust_run_leakage.png"))
                page.get_by_role("button", name=re.compile(r"^Move the \d+ pair")).click()
                expect(page.get_by_text("to training in dataset", exact=False)).to_be_visible()
            finally:
                browser.close()
