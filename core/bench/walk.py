"""A user's walk through the dashboard on one run, in headless Chromium at 1280 x 800: the Data
page (its health check), the Run page (the confusion matrix, then the review of every class's
likely mistakes), Compare and Predict (top-5 of one image), each timed from the click or address
until the page's script has finished, with a screenshot of each; the server's resident memory
(VmRSS) read after every step.

The studio at ``home`` holds the run; its scores and maps were computed beforehand (the review
page shows them, it does not compute them). Home is opened first, untimed, as a user's first
visit is: a fresh server's first page imports the app.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from core.bench.browser import (
    BUSY,
    CHROMIUM,
    browser_missing,
    open_browser,
    settle,
)
from core.bench.common import ProgressCb
from core.bench.procstat import status_mb
from core.bench.server import running_server

__all__ = ["VIEWPORT", "share_caches", "walk_or_error", "walk_pages"]

VIEWPORT = {"width": 1280, "height": 800}
TOP_K = 5


def share_caches(home: Path) -> None:
    """The run's studio sees the caches its training filled (the scan of every image, the
    converted LiteRT base), as a user's one studio home does: the pages are timed on them."""
    from core.paths import studio_home

    shared, link = studio_home() / "cache", home / "cache"
    if shared.resolve() != link.resolve() and not link.exists():
        shared.mkdir(parents=True, exist_ok=True)
        link.symlink_to(shared, target_is_directory=True)


def walk_pages(
    home: Path,
    run_id: str,
    data: str,
    image: Path,
    shots: Path,
    say: ProgressCb,
    chromium: str = CHROMIUM,
    prefix: str = "scale",
) -> dict[str, Any]:
    """Seconds per page of the walk (see the module docstring), the screenshots' paths (named
    ``<prefix>-<page>.png``) and the server's largest VmRSS in MB; ``{"skipped": why}`` without
    a browser."""
    missing = browser_missing(chromium)
    if missing:
        return {"skipped": missing}
    from core.runs.drafts import save_chosen_data

    save_chosen_data(home, data)  # the Data page opens on the run's data, as after "Use"
    shots.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    files: dict[str, str] = {}
    rss: list[float] = []
    with running_server(home, None, say) as server, open_browser(chromium) as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(300_000)

        def memory() -> None:
            value = status_mb("VmRSS", server.pid)
            if value is not None:
                rss.append(value)

        def step(name: str, action: Any, ready: str) -> None:
            started = time.monotonic()
            action()
            page.locator(ready).first.wait_for(state="visible")
            seconds[name] = round(_quiet_since(page) - started, 2)
            path = shots / f"{prefix}-{name}.png"
            page.screenshot(path=str(path))
            files[name] = str(path)
            memory()
            say(f"browser walk: {name} {seconds[name]:.1f} s, server {rss[-1] if rss else '?'} MB")

        url = server.url
        started = time.monotonic()
        page.goto(url)
        page.locator(".st-key-train_default").wait_for(state="visible")
        settle(page)
        seconds["home_first_visit"] = round(time.monotonic() - started, 2)
        memory()
        step("data", lambda: page.goto(f"{url}/data"), "[data-testid='stMetric']")
        _shot(page, page.locator("[data-testid='stMetric']"), shots / f"{prefix}-data-health.png")
        files["data_health"] = str(shots / f"{prefix}-data-health.png")
        step("run", lambda: page.goto(f"{url}/run?run={run_id}"), ".st-key-run_page_run")
        # The matrix's own caption: a heatmap's, or a many-class run's overview.
        matrix = page.get_by_text(re.compile("Rows: true class|too many to label the confusion"))
        _shot(page, matrix, shots / f"{prefix}-run-matrix.png")
        files["run_matrix"] = str(shots / f"{prefix}-run-matrix.png")

        def review_on() -> None:  # a click, not ``_set_toggle``: it would wait for the page
            page.locator(f".st-key-review_on_{run_id} label").first.click()

        step("review", review_on, f".st-key-review_undo_{run_id}")
        step("compare", lambda: page.goto(f"{url}/compare"), "[data-testid='stPlotlyChart']")
        page.goto(f"{url}/predict")
        page.locator(".st-key-images").wait_for(state="visible")
        settle(page)
        _top_k(page, TOP_K)

        def upload() -> None:
            page.locator(".st-key-images input[type='file']").set_input_files(str(image))

        step("predict", upload, "[data-testid='stPlotlyChart']")
        _shot(
            page,
            page.locator("[data-testid='stPlotlyChart']"),
            shots / f"{prefix}-predict-top5.png",
        )
        files["predict_top5"] = str(shots / f"{prefix}-predict-top5.png")
        memory()
    return {
        "seconds": seconds,
        "screenshots": files,
        "server_rss_mb_max": round(max(rss), 1) if rss else None,
        "server_rss_mb": [round(v, 1) for v in rss],
        "viewport": dict(VIEWPORT),
    }


def walk_or_error(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``walk_pages``, or ``{"error": ...}`` when a page never settled: a benchmark's other
    figures still count."""
    try:
        return walk_pages(*args, **kwargs)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _shot(page: Any, target: Any, path: Path) -> None:
    """A screenshot of the window scrolled so that ``target``'s first element is at its top
    (what follows it, a matrix under its caption, fills the window)."""
    target.first.evaluate("element => element.scrollIntoView({block: 'start'})")
    time.sleep(0.5)  # the scroll's repaint
    page.screenshot(path=str(path))


def _quiet_since(page: Any, timeout: float = 300.0) -> float:
    """When the page's script run ended: the first of three quiet checks 0.1 s apart (no
    spinner, skeleton or running status), so the confirming checks are not counted."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    calm = 0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if page.locator(BUSY).count() == 0:
            since = now if calm == 0 else since
            calm += 1
            if calm >= 3 and since is not None:
                return since
        else:
            calm = 0
        time.sleep(0.1)
    return time.monotonic()


def _top_k(page: Any, value: int) -> None:
    """Predict's Top-k slider (1..10) to ``value`` with the arrow keys."""
    thumb = page.locator(".st-key-top_k input[type='range']").first
    for _ in range(12):
        shown = int(float(thumb.input_value() or 0))
        if shown == value:
            return
        thumb.focus()
        thumb.press("ArrowRight" if shown < value else "ArrowLeft")
        settle(page)
