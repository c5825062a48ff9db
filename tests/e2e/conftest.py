"""Real-browser tests: every test in this folder drives Chromium against `streamlit run`, so
every one is marked ``e2e`` and ``slow`` here (``-m "not slow"`` never starts a browser)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._browser import serve

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Path]]:
    """A `streamlit run` of the app on a free port with its own studio home: (url, home)."""
    with serve() as started:
        yield started
