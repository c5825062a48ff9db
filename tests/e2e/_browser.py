"""What the real-browser tests (and ``scripts/tour.py``) share: a `streamlit run` of the app on a
free port with a studio home of its own, headless Chromium's settings, and waiting for a page."""

from __future__ import annotations

import contextlib
import os
import signal
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
STARTUP_S = 90  # seconds a `streamlit run` may take to answer its health check


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# `streamlit run` with faulthandler armed on SIGUSR1: a start that hangs can be asked where it is.
_STREAMLIT = (
    "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "from streamlit.web.cli import main; sys.argv[0] = 'streamlit'; main()"
)


def _start(home: str, log) -> tuple[subprocess.Popen, str]:
    """One `streamlit run` of the app on a free port; returns (process, url) once it is healthy,
    or raises with what it printed (and, if it hung, every thread's stack)."""
    port = free_port()
    env = {**os.environ, "TRANSFER_STUDIO_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "2"}
    mark = log.tell()
    proc = subprocess.Popen(
        [
            sys.executable, "-c", _STREAMLIT, "run", "streamlit_app.py",
            "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    # No proxy for our own server: a CI machine's HTTP(S)_PROXY must not route 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    while True:
        try:
            with opener.open(f"{url}/_stcore/health", timeout=5) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > started + STARTUP_S:
            break
        time.sleep(0.5)
    state = f"exited with {proc.returncode}" if proc.poll() is not None else "hung"
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)  # faulthandler prints every thread's stack
        time.sleep(2)
        proc.kill()
        proc.wait(timeout=10)
    log.flush()
    with open(log.name, errors="replace") as printed:
        printed.seek(mark)
        output = printed.read()[-6000:]
    raise RuntimeError(
        f"streamlit did not answer /_stcore/health on port {port} within "
        f"{time.monotonic() - started:.0f} s (process {state}); it printed:\n{output}"
    )


@contextlib.contextmanager
def serve() -> Iterator[tuple[str, Path]]:
    """Start `streamlit run` on a free port with a new studio home; yield (url, home).

    A start that fails is tried once more on another port (a CI run once saw two starts in a row
    not answer for 60 s on a loaded machine); the error then carries both starts' output.
    """
    home = tempfile.mkdtemp(prefix="transfer-studio-e2e-")
    log = open(Path(home) / "streamlit.log", "w")  # closed in the finalizer
    proc: subprocess.Popen | None = None
    try:
        try:
            proc, url = _start(home, log)
        except RuntimeError as first:
            print(f"first start failed, trying again: {first}", file=sys.stderr)
            proc, url = _start(home, log)
        yield url, Path(home)
    finally:
        if proc is not None:
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
