"""A tour of the studio, as a person would take it, in headless Chromium.

Starts `streamlit run streamlit_app.py` on a free port with a fresh studio home, then: Home
(pages/home.py) → "Train the default" → Train (pages/train.py, watch the curves move) →
"Compare all modes" on the same data → Compare (pages/compare.py, overlaid curves) → Predict
(pages/predict.py, drop an image, one chart per run). The page URLs are the file names that
streamlit_app.py routes with st.navigation. Screenshots go to artifacts/tour/.

    .venv/bin/python scripts/tour.py [--image-size 96] [--epochs 2]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages (and tests/) importable

from tests.e2e._browser import (  # noqa: E402  (the e2e tests' server and browser helpers)
    CHROMIUM,
    CHROMIUM_ARGS,
    number,
    serve,
    settle,
)

SHOTS = ROOT / "artifacts" / "tour"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=600_000)
    with serve() as (url, home):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1600})
            page.set_default_timeout(600_000)
            page.goto(url)
            settle(page)
            shot(page, "01_home")
            page.locator(".st-key-train_default button").click()
            settle(page)
            shot(page, "02_home_queued")
            page.goto(f"{url}/train")
            for i in range(40):  # watch the default run train
                time.sleep(3)
                shot(page, f"03_default_training_{i:02d}")
                if page.get_by_text("Completed: best validation accuracy").count():
                    break
            settle(page)
            shot(page, "04_default_completed")

            number(page, "size", args.image_size)
            number(page, "epochs", args.epochs)
            number(page, "ft", 1)
            page.locator(".st-key-compare button").click()
            settle(page)
            shot(page, "05_compare_all_queued")
            page.goto(url)
            for i in range(200):
                time.sleep(5)
                if i % 6 == 0:
                    shot(page, f"06_queue_{i:03d}")
                if page.get_by_text("Nothing is training").count():
                    break
            shot(page, "07_home_done")
            page.goto(f"{url}/compare")
            settle(page)
            shot(page, "08_compare")
            page.goto(f"{url}/predict")
            settle(page)
            # The newest run is preselected; add the other two modes of the comparison.
            for pattern in (r"^\W*fine_tuning", r"^\W*feature_extraction"):
                page.locator(".st-key-models input[role='combobox']").click()
                page.get_by_role("option").filter(has_text=re.compile(pattern)).first.click()
                settle(page)
                page.keyboard.press("Escape")
            photos = home / "data" / "builtin" / "photos"  # the default data the runs used
            images = [sorted((photos / c).glob("*.jpg"))[3] for c in ("cat", "rocket")]
            page.locator(".st-key-images input[type='file']").set_input_files(images)
            settle(page)
            time.sleep(25)  # first use of each model compiles its forward pass
            settle(page)
            shot(page, "09_predict")
            browser.close()


if __name__ == "__main__":
    main()
