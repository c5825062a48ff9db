"""Headless Chromium driving the dashboard as a user does: open a page, fill in the Train page's
form, launch a run, wait for the page to go quiet."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from core.bench.common import ProgressCb
from core.bench.procstat import tree_cpu_s
from core.bench.server import StreamlitServer
from core.config import AUGMENTATIONS, RunConfig

__all__ = [
    "BUSY",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "PAGE_TIMEOUT_MS",
    "WIDGET_TIMEOUT_MS",
    "browser_missing",
    "config_differences",
    "launch",
    "new_page",
    "open_browser",
    "open_home_once",
    "quiet",
    "settle",
    "render_page",
]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
PAGE_TIMEOUT_MS = 180_000  # the first page of a fresh server imports TensorFlow
WIDGET_TIMEOUT_MS = 30_000
BUSY = "[data-testid='stStatusWidget'], [data-testid='stSpinner'], [data-testid='stSkeleton']"


def browser_missing(chromium: str) -> str | None:
    """Why a headless browser cannot be used, or ``None``."""
    if not os.path.exists(chromium):
        return f"{chromium} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    return None


@contextlib.contextmanager
def open_browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any) -> Any:
    page = browser.new_page(viewport={"width": 1440, "height": 1800})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return page


def settle(page: Any, timeout: float = 120.0) -> None:
    """Wait until the app has finished its current script run (no spinner, skeleton, status)."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        calm = calm + 1 if page.locator(BUSY).count() == 0 else 0
        if calm >= 3:
            return
        time.sleep(0.3)


def open_home_once(url: str, chromium: str, say: ProgressCb) -> tuple[bool, str]:
    """Open the Home page in headless Chromium until its script has run, then close it."""
    missing = browser_missing(chromium)
    if missing:
        return False, missing
    started = time.monotonic()
    with open_browser(chromium) as browser:
        page = new_page(browser)
        page.goto(url)
        page.locator(".st-key-train_default").wait_for(state="visible")
        settle(page)
        page.close()
    note = f"Home page rendered in {time.monotonic() - started:.1f} s, then closed"
    say(f"browser: {note}")
    return True, note


def render_page(browser: Any, url: str, key: str) -> float:
    """Open ``url`` until the widget ``key`` shows and the script settled, then close it;
    the seconds it took."""
    started = time.monotonic()
    page = new_page(browser)
    try:
        page.goto(url)
        page.locator(f".st-key-{key}").wait_for(state="visible")
        settle(page)
    finally:
        page.close()
    return time.monotonic() - started


def _live(page: Any, key: str, inner: str) -> Any:
    """The ``inner`` elements of widget ``key`` that are not stale: while a script reruns,
    Streamlit keeps the previous run's element (marked ``data-stale``) beside the new one
    when the layout moved, and a strict locator would match both."""
    return page.locator(
        f".st-key-{key}:not([data-stale='true']):not([data-stale='true'] *) {inner}"
    )


def _widget(page: Any, key: str, inner: str) -> Any:
    return _live(page, key, inner).first


def _fill_number(page: Any, key: str, value: float | int | None) -> None:
    if value is None:
        return
    box = _widget(page, key, "input")
    current = box.input_value()
    try:
        if current.strip() and float(current) == float(value):
            return
    except ValueError:
        pass
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def _set_toggle(page: Any, key: str, on: bool) -> None:
    if _widget(page, key, "input[type='checkbox']").is_checked() != on:
        _widget(page, key, "label").click()
        settle(page)


def _choose(page: Any, key: str, text: str, prefix: str | None = None) -> None:
    """A selectbox: type ``text`` and pick the option that is exactly it (or that starts with
    ``prefix``); a new option (Enter) when the box accepts them and none matches."""
    combo = _widget(page, key, "input[role='combobox']")
    shown = combo.input_value().strip()
    if shown == text or (prefix and shown.startswith(prefix)):
        return
    combo.click()
    combo.fill(prefix.split(" ·")[0] if prefix else text)  # typing filters the options
    wanted = re.compile(rf"^\s*{re.escape(prefix)}" if prefix else rf"^\s*{re.escape(text)}\s*$")
    option = page.get_by_role("option").filter(has_text=wanted).first
    try:
        option.wait_for(state="visible", timeout=5_000)
        option.click()
    except Exception:  # playwright's TimeoutError: no such option
        combo.press("Enter")
    settle(page)


def _radio(page: Any, key: str, option: str) -> None:
    label = _live(page, key, "label").filter(has_text=re.compile(rf"^\s*{re.escape(option)}(\s|$)"))
    _check(page, label.first)


def _radio_nth(page: Any, key: str, index: int) -> None:
    """The ``index``-th option of a radio whose options show titles rather than their values
    (the mode: its options are ``MODES`` in order, each shown by its title)."""
    _check(page, _live(page, key, "label:has(input)").nth(index))


def _check(page: Any, label: Any) -> None:
    if not label.locator("input").is_checked():
        label.click()
        settle(page)


def _slide_to(page: Any, key: str, value: float) -> None:
    """A select_slider of numbers shown with ``{:g}``: arrow keys until it shows ``value``."""
    thumb = _widget(page, key, "input[type='range']")
    target = format(value, "g")
    for _ in range(32):
        shown = (thumb.get_attribute("aria-valuetext") or "").strip()
        if shown == target:
            return
        try:
            right = float(shown) < value
        except ValueError:
            return  # not a numeric select_slider: the config check reports the difference
        thumb.focus()
        thumb.press("ArrowRight" if right else "ArrowLeft")
        settle(page)


def _pills(page: Any, key: str, wanted: tuple[str, ...]) -> None:
    for name in AUGMENTATIONS:
        button = _live(page, key, "button").filter(has_text=name).first
        active = button.get_attribute("aria-pressed") == "true"
        if active != (name in wanted):
            button.click()
            settle(page)


def _configure_train_page(page: Any, config: RunConfig) -> None:
    """Set the Train page's widgets to ``config`` (what the page has: dropout, head units and
    the name are not on it; ``config_differences`` reports what could not be set)."""
    from core.config import MODES
    from core.models.backbones import get_backbone

    _choose(
        page, "backbone", config.backbone, prefix=f"{get_backbone(config.backbone).display_name} ·"
    )
    _radio_nth(page, "mode", MODES.index(str(config.mode)))
    if config.mode != "scratch" and config.weights in ("imagenet", "none"):
        _radio(page, "weights", config.weights)
    _choose(page, "data", config.data)
    _fill_number(page, "size", config.image_size)
    _fill_number(page, "batch", config.batch_size)
    _fill_number(page, "val_split", config.val_split)
    _fill_number(page, "seed", config.seed)
    _set_toggle(page, "augment", config.augment)
    _set_toggle(page, "cache", config.feature_cache == "auto")
    if config.augment:
        _pills(page, "augs", config.augmentations)
    _fill_number(page, "epochs", config.epochs)
    _slide_to(page, "lr", config.lr)
    _fill_number(page, "ft", config.fine_tune_epochs)
    _slide_to(page, "ft_lr", config.fine_tune_lr)
    _fill_number(page, "unfreeze", config.unfreeze)


def config_differences(wanted: RunConfig, got: RunConfig) -> dict[str, list[Any]]:
    """Fields that change the work and differ: {field: [wanted, got]} (the name never counts,
    nor the augmentation list without augmentation, nor the weights of a scratch run)."""
    a, b = wanted.to_dict(), got.to_dict()
    ignore = {"name"}
    if not wanted.augment and not got.augment:
        ignore.add("augmentations")
    if wanted.mode == got.mode == "scratch":
        ignore.add("weights")
    out: dict[str, list[Any]] = {}
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        x, y = a.get(key), b.get(key)
        if key == "augmentations" and set(x or ()) == set(y or ()):
            continue
        if x != y:
            out[key] = [x, y]
    return out


def launch(
    page: Any, server: StreamlitServer, store: Any, config: RunConfig, say: ProgressCb, label: str
) -> str:
    """Open the Train page in ``page``, set its widgets to ``config``, click Launch; the run id."""
    from core.errors import StudioError

    page.goto(f"{server.url}/train")
    page.locator(".st-key-launch").wait_for(state="visible")
    settle(page)
    page.set_default_timeout(WIDGET_TIMEOUT_MS)
    _configure_train_page(page, config)
    before = {r["run_id"] for r in store.list_runs()}
    say(f"{label}: Launch on the Train page")
    _widget(page, "launch", "button").click()
    started = time.monotonic()
    while True:
        new = [r["run_id"] for r in store.list_runs() if r["run_id"] not in before]
        if new:
            return str(new[0])
        if time.monotonic() - started > 60:
            raise StudioError("The Train page's Launch queued no run within 60 s.")
        time.sleep(0.2)


def quiet(
    me: int, server_pid: int, min_s: float, max_s: float = 60.0, quiet_cpu: float = 0.25
) -> bool:
    """Wait at least ``min_s``, then until the browser (this process's descendants but the
    server) used under ``quiet_cpu`` s of CPU in each of two seconds running, at most ``max_s``:
    a page polling every few seconds has such seconds between its polls once it has loaded.
    Whether it got quiet (always ``True`` without /proc)."""
    time.sleep(min_s)
    deadline = time.monotonic() + max_s
    calm = 0
    last = tree_cpu_s(me, exclude=frozenset({server_pid}))
    while calm < 2:
        if last is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
        now = tree_cpu_s(me, exclude=frozenset({server_pid}))
        calm = calm + 1 if now is not None and now - last < quiet_cpu else 0
        last = now
    return True
