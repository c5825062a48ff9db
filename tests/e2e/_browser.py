"""What the real-browser tests (and ``scripts/tour.py``) share: a `streamlit run` of the app on a
free port with a studio home of its own, headless Chromium's settings, and waiting for a page."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import stop_studio_workers

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "screenshots"  # gitignored
# Chromium grants the camera without asking and films its own test pattern.
CAMERA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
CHROMIUM = "/usr/bin/chromium"
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
STARTUP_S = 180  # seconds a `streamlit run` may take to answer its health check


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve() -> Iterator[tuple[str, Path]]:
    """Start `streamlit run` on a free port with a new studio home; yield (url, home)."""
    home = tempfile.mkdtemp(prefix="transfer-studio-e2e-")
    port = free_port()
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
    # No proxy for our own server: a CI machine's HTTP(S)_PROXY must not route 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    try:
        # Generous: on a loaded 2-core machine (the other test process converting models) a
        # start has been seen to take over a minute; the error then says what the server printed.
        deadline = started + STARTUP_S
        while True:
            try:
                with opener.open(f"{url}/_stcore/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                printed = Path(log.name).read_text(errors="replace")[-3000:]
                state = f"exited with {proc.returncode}" if proc.poll() is not None else "running"
                raise RuntimeError(
                    f"streamlit did not answer /_stcore/health on port {port} within "
                    f"{time.monotonic() - started:.0f} s (process {state}); it printed:\n{printed}"
                )
            time.sleep(0.5)
        yield url, Path(home)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        stop_studio_workers(home)  # they outlive the server while a run is in progress
        log.close()


def settle(page, timeout: float = 90) -> None:
    """Wait until the app has finished its current run (no spinner, skeleton or status)."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        calm = calm + 1 if page.locator(BUSY).count() == 0 else 0
        if calm >= 3:
            return
        time.sleep(0.4)


def select(page, key: str, option: str) -> None:
    page.locator(f".st-key-{key} input[role='combobox']").click()
    page.get_by_role("option").filter(has_text=option).first.click()
    settle(page)


def number(page, key: str, value: int) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    settle(page)


# What a page must not do at a common screen size: scroll sideways, or cut a label short.
LAYOUT_PROBE = """() => {
  const cut = [];
  for (const el of document.querySelectorAll('[data-testid="stMain"] *')) {
    if (el.closest('.js-plotly-plot, [data-testid="stDataFrame"], svg')) continue;
    const text = (el.tagName === 'INPUT' ? el.value : el.innerText || '').trim();
    if (!text || el.offsetParent === null) continue;
    const style = getComputedStyle(el);
    const clips = el.tagName === 'INPUT' || style.textOverflow === 'ellipsis'
      || ['hidden', 'clip'].includes(style.overflowX);
    if (clips && el.scrollWidth > el.clientWidth + 1) cut.push(text.slice(0, 80));
  }
  return {overflow: document.documentElement.scrollWidth - window.innerWidth, cut};
}"""
