"""End to end in a real browser: `streamlit run` + headless Chromium driven by Playwright.

Train page → tiny config → Launch → the live chart fills in → the run completes → Predict page →
drop an image → the probability chart appears. Screenshots of every step go to tests/screenshots/.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.e2e._browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LAYOUT_PROBE,
    REQUIRE_BROWSER,
    SHOTS,
    number,
    select,
    serve,
    settle,
)

ROOT = Path(__file__).resolve().parents[2]
_STARTED = [time.monotonic()]  # reset when the test starts; screenshots log their time (-s)
pytestmark = [  # e2e and slow: tests/e2e/conftest.py
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not REQUIRE_BROWSER,
        reason=f"{CHROMIUM} is not installed (apt-get install chromium)",
    ),
]


def _shot(page, name: str) -> None:
    print(f"{time.monotonic() - _STARTED[0]:6.1f}s {name}", flush=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


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
            settle(page)
            _shot(page, "1_train_page")

            select(page, "backbone", "MobileNetV2 ·")
            page.locator(".st-key-weights label").filter(has_text="none").click()
            settle(page)
            number(page, "size", 32)
            select(page, "data", "builtin:textures")
            number(page, "epochs", 3)
            number(page, "batch", 4)  # 24 steps per epoch: time to watch the curves grow
            page.locator(".st-key-cache label").click()  # real per-batch training
            settle(page)
            _shot(page, "2_configured")

            page.locator(".st-key-launch button").click()
            stop = page.locator(".st-key-stop")
            expect(stop).to_be_visible()  # the run is running and can be stopped
            live: list[int] = []  # trace counts seen while the run was still running
            deadline = time.monotonic() + 150
            gone = 0  # polls in a row without the Stop button: the run has ended
            while time.monotonic() < deadline and (not live or live[-1] < 3):
                traces = _traces(page)
                gone = 0 if stop.count() else gone + 1
                if gone >= 8:  # 2 s: not a rerun's passing moment
                    break
                if gone:
                    time.sleep(0.25)
                    continue
                if traces:
                    live.append(traces)
                    if len(live) == 1:
                        _shot(page, "3_training_live")
                time.sleep(0.25)
            assert live, "the chart never showed data while the run was training"

            done = page.get_by_text("Completed: best validation accuracy")
            expect(done).to_be_visible(timeout=150_000)
            settle(page)
            assert _traces(page) >= 3  # per-batch, per-epoch train and validation curves
            _shot(page, "4_completed")

            page.locator("[data-testid='stSidebar'] a").filter(has_text="Predict").click()
            expect(page.locator(".st-key-images")).to_be_visible()
            settle(page)
            expect(page.locator(".st-key-models")).to_contain_text("mobilenet_v2")
            image = next((home / "data" / "builtin" / "textures" / "brick").glob("*.png"))
            page.locator(".st-key-images input[type='file']").set_input_files(str(image))
            chart = page.locator("[data-testid='stPlotlyChart']").first
            expect(chart).to_be_visible()
            settle(page)
            expect(page.get_by_text(" ms", exact=False).first).to_be_visible()
            assert page.locator("[data-testid='stPlotlyChart'] .bars .point").count() >= 1
            _shot(page, "5_predict")

            page.locator(".st-key-gradcam label").click()  # Grad-CAM beside the bars
            expect(page.get_by_text("Grad-CAM ·")).to_be_visible()
            settle(page)
            expect(page.get_by_text("feature map is 1×1")).to_be_visible()  # a 32 px model
            _shot(page, "6_predict_gradcam")
        finally:
            browser.close()


def _monitor_text(page) -> str:
    return page.locator("[data-testid='stMain']").inner_text()


def _fits(locator) -> bool:
    """Whether an element shows all its text (no ellipsis, no cut)."""
    return locator.evaluate("el => el.scrollWidth <= el.clientWidth + 1")


def test_refresh_stop_resume_and_following_the_queue(server):
    """Issue 13 in a real browser: the Train form survives a reload (1); Stop then Resume say
    one thing (4); the monitor follows Compare all modes from run to run and Home shows the
    running job's chart (5); Predict starts with the best run on the data (3)."""
    from playwright.sync_api import expect, sync_playwright

    from core.runs.store import COMPLETED, RunStore

    url, home = server
    expect.set_options(timeout=90_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(90_000)
            page.goto(f"{url}/train")
            expect(page.locator(".st-key-launch")).to_be_visible()
            settle(page)
            select(page, "backbone", "MobileNetV2")
            page.locator(".st-key-weights label").filter(has_text="none").click()
            settle(page)
            number(page, "size", 32)
            select(page, "data", "builtin:textures")
            number(page, "epochs", 3)
            number(page, "ft", 1)
            number(page, "batch", 2)  # 48 steps per epoch: time to stop in the second
            if page.locator(".st-key-cache input").is_checked():
                page.locator(".st-key-cache label").click()  # per-batch training to stop
                settle(page)

            # 1. A reload is a new session: the form is the one the user left, not the defaults.
            page.reload()
            expect(page.locator(".st-key-launch")).to_be_visible()
            settle(page)
            assert "MobileNetV2" in page.locator(".st-key-backbone input").input_value()
            assert "textures" in page.locator(".st-key-data input").input_value()
            assert page.locator(".st-key-size input").input_value() == "32"
            assert page.locator(".st-key-epochs input").input_value() == "3"
            assert page.locator(".st-key-batch input").input_value() == "2"
            _shot(page, "7_train_after_reload")

            # 4. Stop mid-run: one story in the badge, the metrics and the message.
            page.locator(".st-key-launch button").click()
            stop = page.locator(".st-key-stop button")
            expect(stop).to_be_visible()
            expect(page.get_by_text("Step", exact=True)).to_be_visible()
            store = RunStore(home, recover=False)
            running = store.list_runs(("queued", "running"))
            assert running, "Launch did not start a run"
            # Stop in epoch 2: one epoch done and a batch of the next recorded (a stop between
            # epochs ends the run before the next one starts: "after epoch 1, step 48/48").
            deadline = time.monotonic() + 120
            run_id = running[0]["run_id"]
            while time.monotonic() < deadline and not any(
                b["epoch"] >= 2 for b in store.batches(run_id, after_step=0)
            ):
                time.sleep(0.2)
            stop.click()
            # Where the click lands depends on the machine's speed: mid-epoch or between two.
            stopped = re.compile(r"Stopped after epoch \d+, step")
            expect(page.get_by_text(stopped).first).to_be_visible()
            settle(page)
            text = _monitor_text(page)
            assert "Epochs done" in text and "Step\n" not in text, text
            resume = page.locator(".st-key-resume button")
            expect(resume).to_be_visible()
            assert _fits(resume), "the Resume button's label is cut"
            _shot(page, "8_stopped")
            resume.click()
            # Until the resumed run's first batch: "resuming", never the old epoch/step/ETA. On
            # a quiet machine the rest of the run can end between two polls, so the page may go
            # straight to "Completed" (what it shows meanwhile is tested without a browser:
            # test_a_resumed_run_says_resuming_until_its_first_new_batch).
            resuming = page.get_by_text("resuming", exact=False).first
            done = page.get_by_text("Completed: best validation accuracy")
            expect(resuming.or_(done).first).to_be_visible()
            expect(page.get_by_text(stopped)).to_have_count(0)  # the old stop message is gone
            if resuming.is_visible():
                _shot(page, "9_resuming")
            expect(page.get_by_text("Completed: best validation accuracy")).to_be_visible(
                timeout=150_000
            )
            settle(page)

            # 5. Compare all modes: the monitor moves on to the run training now.
            number(page, "batch", 8)  # the three modes in about a minute
            page.locator(".st-key-compare button").click()
            deadline = time.monotonic() + 60
            group: list = []
            while time.monotonic() < deadline and len(group) < 3:
                group = [r for r in store.list_runs() if r["status"] in ("queued", "running")]
                time.sleep(0.3)
            assert len(group) >= 3, group
            last = group[0]  # newest first: the last mode of the comparison
            monitor = page.locator("[data-testid='stMain'] .stSelectbox input").last

            home_page = browser.new_page(viewport={"width": 1280, "height": 800})
            home_page.goto(url)
            # A drawn line (an SVG path with segments), not only the chart's frame and legend.
            line = home_page.locator("[class*='st-key-queue_chart_'] .scatterlayer path.js-line")
            expect(line.first).to_have_attribute("d", re.compile("L"), timeout=150_000)
            _shot(home_page, "10_home_queue_chart")
            home_page.close()

            # Nobody touches the Train page's run picker: it moves on to the last mode by itself.
            shown: list[str] = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and last["run_id"][-6:] not in monitor.input_value():
                value = monitor.input_value()
                if not shown or shown[-1] != value:
                    shown.append(value)
                time.sleep(0.3)
            assert last["run_id"][-6:] in monitor.input_value(), shown
            _shot(page, "11_following_the_queue")
            expect(page.get_by_text("Completed: best validation accuracy")).to_be_visible(
                timeout=300_000
            )

            # 3. Predict starts with the best finished run on the data (the rule that names
            # Compare's best, ties included): never simply the newest.
            from app.views.dashboard import best_run

            runs = {
                r["run_id"]: r
                for r in RunStore(home, recover=False).list_runs()
                if r["status"] == COMPLETED and r["data"] == "builtin:textures"
            }
            expected = runs[best_run(list(runs.values())) or ""]
            page.locator("[data-testid='stSidebar'] a").filter(has_text="Predict").click()
            expect(page.locator(".st-key-models")).to_be_visible()
            settle(page)
            _shot(page, "12_predict_preselects_the_best")
            models = page.locator(".st-key-models")
            expect(models).to_contain_text(re.compile(re.escape(expected["name"]) + " ·"))
            assert models.inner_text().count("val acc") == 1, "one model preselected"
        finally:
            browser.close()


SIZES = ((1280, 800), (1920, 1080))
LAYOUT_PAGES = ("", "data", "train", "compare", "predict", "run")


def test_every_page_at_laptop_and_desktop_sizes(server):
    """Each page at 1280x800 and 1920x1080: no sideways scroll, no label cut with an ellipsis,
    no exception; the screenshots are tests/screenshots/layout_<page>_<w>x<h>.png."""
    from playwright.sync_api import sync_playwright

    url, _ = server
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width, height in SIZES:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.set_default_timeout(90_000)
                for name in LAYOUT_PAGES:
                    page.goto(f"{url}/{name}")
                    page.locator("[data-testid='stMain'] h1").first.wait_for()
                    settle(page)
                    page.screenshot(
                        path=str(_shot_path(f"layout_{name or 'home'}_{width}x{height}"))
                    )
                    probe = page.evaluate(LAYOUT_PROBE)
                    where = f"{name or 'home'} at {width}x{height}"
                    if probe["overflow"] > 0:
                        problems.append(f"{where}: scrolls sideways by {probe['overflow']} px")
                    problems += [f"{where}: cut short: {text!r}" for text in probe["cut"]]
                    if page.locator("[data-testid='stException']").count():
                        problems.append(f"{where}: shows an exception")
                    if name == "train":  # the monitor stays in view beside the Launch button
                        page.locator(".st-key-launch").scroll_into_view_if_needed()
                        page.wait_for_timeout(300)
                        # The run's progress (or, with no run, the panel's own top) is on screen.
                        panel = page.locator(".st-key-monitor_panel")
                        progress = panel.locator("[data-testid='stProgress']")
                        box = (progress if progress.count() else panel).bounding_box()
                        if box is None or not 0 <= box["y"] < height:
                            problems.append(f"{where}: the monitor is out of view at Launch")
                        page.screenshot(
                            path=str(_shot_path(f"layout_train_launch_{width}x{height}"))
                        )
                page.close()
        finally:
            browser.close()
    assert not problems, "\n".join(problems)


def _shot_path(name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS / f"{name}.png"


def test_a_fresh_servers_first_page_lists_each_page_once_in_order():
    """A new server asked for a page by its URL first (a bookmark): with a ``pages/`` folder,
    Streamlit's folder mode would run that page alone and list every file of ``pages/`` plus the
    main script, alphabetically. The page hands over to the router: its six pages, once each."""
    from playwright.sync_api import sync_playwright

    with serve() as (url, _home), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{url}/train")
            page.locator("h1").first.wait_for(timeout=60_000)
            settle(page)
            nav = page.locator("[data-testid='stSidebarNav'] a")
            titles = [text.split("\n")[-1] for text in nav.all_inner_texts()]
            assert titles == ["Home", "Data", "Train", "Compare", "Predict", "Run"]
            assert page.locator("h1").first.inner_text() == "Train"
            assert "Runs folder:" in page.locator("[data-testid='stSidebar']").inner_text()
            _shot(page, "fresh-server-first-page")
        finally:
            browser.close()
