"""Issue 14 end to end in a real browser (`streamlit run` + headless Chromium via Playwright):

Data → Your dataset → create "garden" → classes red and blue → upload files per class → one
picture with Chromium's fake camera → Use this dataset → Train (EfficientNet-Lite0, feature
extraction, tiny) → Run → Review → relabel one image → the embedding map → Retrain with these
fixes → Compare shows before and after. Screenshots of each step at 1280x800:
tests/screenshots/dataset_*.png.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e._browser import (  # the same server, browser and waiting helpers
    CAMERA_ARGS,
    CHROMIUM,
    CHROMIUM_ARGS,
    REQUIRE_BROWSER,
    SHOTS,
    number,
    serve,
    settle,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [  # e2e and slow: tests/e2e/conftest.py
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not REQUIRE_BROWSER,
        reason=f"{CHROMIUM} is not installed (apt-get install chromium)",
    ),
]
_STARTED = [time.monotonic()]


def _shot(page, name: str) -> None:
    print(f"{time.monotonic() - _STARTED[0]:6.1f}s {name}", flush=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"dataset_{name}.png"), full_page=True)


def _pictures(folder: Path, colour: tuple[int, int, int], n: int, seed: int) -> list[str]:
    """``n`` noisy 48 px PNGs around ``colour`` in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        noise = rng.integers(-30, 30, (48, 48, 3))
        pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        path = folder / f"{folder.name}-{i}.png"
        path.write_bytes(out.getvalue())
        paths.append(str(path))
    return paths


def _type(page, key: str, text: str) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(text)
    box.press("Enter")
    settle(page)


def _choose(page, key: str, option: str) -> None:
    """Pick ``option`` in select box ``key``, opening it again if a rerun closed it."""
    for _ in range(10):
        page.locator(f".st-key-{key} input[role='combobox']").click()
        choice = page.get_by_role("option").filter(has_text=option).first
        try:
            choice.click(timeout=3_000)
            break
        except Exception:  # the list closed under a rerun: open it again
            settle(page)
    settle(page)
    value = page.locator(f".st-key-{key} input[role='combobox']").input_value()
    assert value == option, value


def _click(page, key: str) -> None:
    page.locator(f".st-key-{key} button").first.click()
    settle(page)


def test_build_a_dataset_train_review_and_retrain(server) -> None:
    from playwright.sync_api import expect, sync_playwright

    from core.runs.store import RunStore

    url, home = server
    _STARTED[0] = time.monotonic()
    expect.set_options(timeout=90_000)
    files = Path(tempfile.mkdtemp(prefix="e2e-dataset-files-"))
    red = _pictures(files / "red", (220, 40, 40), 8, 1)
    blue = _pictures(files / "blue", (40, 40, 220), 8, 2)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + CAMERA_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 800}, permissions=["camera"]
            )
            page = context.new_page()
            page.set_default_timeout(90_000)

            # 1. Data → Your dataset → a new dataset named garden.
            page.goto(f"{url}/data")
            page.locator(".st-key-kind button").filter(has_text="Your dataset").click()
            settle(page)
            _type(page, "builder_new_name", "garden")
            _click(page, "builder_create")
            expect(page.get_by_text("Created dataset garden")).to_be_visible()
            _shot(page, "1_created")

            # 2. Two classes, each filled by uploading files to it.
            for cls in ("red", "blue"):
                _type(page, "builder_class_name", cls)
                _click(page, "builder_add_class")
                expect(page.get_by_text(f"Added class {cls}")).to_be_visible()
            for cls, paths in (("red", red), ("blue", blue)):
                if cls != "red":  # red, the first class, is already chosen
                    _choose(page, "builder_target", cls)
                uploader = page.locator(f".st-key-builder_files_garden_{cls} input[type='file']")
                uploader.first.set_input_files(paths)
                expect(page.get_by_text(f"Added {len(paths)} images to {cls}")).to_be_visible()
                settle(page)
            main = page.locator("[data-testid='stMain']")
            assert main.inner_text().count("8 images") >= 2, main.inner_text()
            _shot(page, "2_classes_uploaded")

            # 3. One picture with the (fake) camera, into blue.
            page.locator(".st-key-builder_camera_on label").click()
            settle(page)
            take = page.locator(".st-key-builder_camera_0 button").filter(has_text="Take Photo")
            expect(take).to_be_enabled(timeout=60_000)
            page.wait_for_timeout(1500)  # the fake device's first frames
            take.click()
            keep = page.locator(".st-key-builder_camera_keep_0 button")  # shown, kept on a click
            expect(keep).to_be_visible()
            settle(page)
            keep.click()
            expect(page.get_by_text("Added 1 image to blue")).to_be_visible()
            settle(page)
            page.get_by_text("Added 1 image to blue").scroll_into_view_if_needed()
            expect(page.locator(".st-key-builder_camera_1")).to_be_visible()  # ready again
            assert "9 images" in main.inner_text()
            _shot(page, "3_camera_picture")

            # 4. Use it: the data in use is dataset:garden.
            _click(page, "builder_use")
            expect(page.get_by_role("heading", name="In use: garden")).to_be_visible()
            expect(page.get_by_text("Your dataset · dataset:garden")).to_be_visible()
            _shot(page, "4_in_use")

            # 5. Train: EfficientNet-Lite0 (offline weights), feature extraction, tiny.
            page.locator("[data-testid='stSidebar'] a").filter(has_text="Train").click()
            expect(page.locator(".st-key-launch")).to_be_visible()
            settle(page)
            expect(page.locator(".st-key-data input")).to_have_value(re.compile("garden"))
            number(page, "size", 96)
            number(page, "epochs", 3)
            page.locator(".st-key-launch button").click()
            expect(page.get_by_text("Completed: best validation accuracy")).to_be_visible(
                timeout=240_000
            )
            settle(page)
            store = RunStore(home, recover=False)
            (before,) = [r for r in store.list_runs() if r["data"] == "dataset:garden"]
            _shot(page, "5_trained")

            # 6. Run → Review: the likely mistakes per class.
            run_id = before["run_id"]
            page.goto(f"{url}/run?run={run_id}")
            expect(page.locator(f".st-key-review_on_{run_id}")).to_be_visible()
            page.locator(f".st-key-review_on_{run_id} label").click()
            relabel = page.locator("[class*='st-key-review_s_relabel_'] button")
            expect(relabel.first).to_be_visible(timeout=120_000)
            settle(page)
            notice = page.get_by_text("Edits go to your dataset garden")
            expect(notice).to_be_visible()
            notice.scroll_into_view_if_needed()
            _shot(page, "6_review")

            # 7. Relabel one image: one the model disagrees with (its prediction is chosen), or
            # else pick a class first (none is chosen where the model agrees).
            if not page.locator("[class*='st-key-review_s_relabel_'] button:enabled").count():
                box = page.locator("[class*='st-key-review_s_to_'] input[role='combobox']").first
                for _ in range(10):  # as in _choose: a rerun may close the list under the click
                    box.click()
                    try:
                        page.get_by_role("option").first.click(timeout=3_000)
                        break
                    except Exception:
                        settle(page)
                settle(page)
            page.locator("[class*='st-key-review_s_relabel_'] button:enabled").first.click()
            done = page.get_by_text(re.compile("^Relabelled "))
            expect(done).to_be_visible()
            settle(page)
            done.scroll_into_view_if_needed()
            _shot(page, "7_relabelled")

            # 8. The embedding map: drag a box over it; the images picked show with the actions.
            page.locator(f".st-key-review_map_on_{run_id} label").click()
            chart = page.locator(f".st-key-review_map_{run_id}_pca")
            expect(chart.locator(".scatterlayer .point").first).to_be_visible(timeout=120_000)
            settle(page)
            chart.scroll_into_view_if_needed()
            area = chart.locator(".nsewdrag").first.bounding_box()
            assert area is not None
            page.mouse.move(area["x"] + 3, area["y"] + 3)
            page.mouse.down()
            page.mouse.move(area["x"] + area["width"] - 3, area["y"] + area["height"] - 3, steps=8)
            page.mouse.up()
            picked = page.get_by_text(re.compile(r"^\d+ selected images?"))
            expect(picked).to_be_visible()
            settle(page)
            expect(page.locator("[class*='st-key-review_m_relabel_']").first).to_be_visible()
            picked.scroll_into_view_if_needed()  # the map's lower half and the picked images
            _shot(page, "8_embedding_map")

            # 9. Retrain with these fixes, then Compare before and after.
            _click(page, f"review_retrain_{run_id}")
            expect(page.get_by_text("with these fixes.")).to_be_visible()
            after = next(r for r in store.list_runs() if r["name"].endswith("· fixed"))
            assert after["data"] == "dataset:garden"
            page.get_by_text("with these fixes.").scroll_into_view_if_needed()
            _shot(page, "9_retrain_queued")
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and store.status(after["run_id"]) != "completed":
                time.sleep(0.5)
            assert store.status(after["run_id"]) == "completed"
            page.get_by_text("Compare before and after").click()
            compare = page.locator(".st-key-compare_runs")
            expect(compare).to_contain_text("· fixed")
            expect(compare).to_contain_text(before["name"])
            settle(page)
            _shot(page, "10_compare_before_after")
        finally:
            browser.close()


@pytest.fixture
def own_server() -> Iterator[tuple[str, Path]]:
    """A server of its own: a studio home without the other test's datasets."""
    with serve() as started:
        yield started


def test_a_denied_camera_says_so_and_the_uploads_still_work(own_server, tmp_path) -> None:
    """Camera permission denied: the camera says it has no access, our caption says how to allow
    it, and adding images by upload to the same class still works (nothing is lost)."""
    from playwright.sync_api import expect, sync_playwright

    url, _ = own_server
    expect.set_options(timeout=90_000)
    with sync_playwright() as pw:
        # No fake-UI flag: Chromium asks, and a context without the permission is refused.
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                *CHROMIUM_ARGS,
                "--use-fake-device-for-media-stream",
                "--deny-permission-prompts",
            ],
        )
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.set_default_timeout(90_000)
            page.goto(f"{url}/data")
            page.locator(".st-key-kind button").filter(has_text="Your dataset").click()
            settle(page)
            _type(page, "builder_new_name", "nocam")
            _click(page, "builder_create")
            _type(page, "builder_class_name", "things")
            _click(page, "builder_add_class")
            page.locator(".st-key-builder_camera_on label").click()
            settle(page)
            expect(page.get_by_text("If the browser blocked the camera, allow it")).to_be_visible()
            camera = page.locator("[data-testid='stCameraInput']")
            expect(camera).to_contain_text(re.compile("allow|access|permission", re.I))
            _shot(page, "camera_denied")
            paths = _pictures(tmp_path / "things", (30, 160, 60), 3, 5)
            page.locator(
                ".st-key-builder_files_nocam_things input[type='file']"
            ).first.set_input_files(paths)
            expect(page.get_by_text("Added 3 images to things")).to_be_visible()
        finally:
            browser.close()
