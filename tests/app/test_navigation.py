"""The router: every page of ``pages/`` runs inside ``streamlit_app.py`` (its page config and
sidebar drawn once), even in the first run of a process, when a ``pages/`` folder makes Streamlit
run a page asked for by its URL on its own (its old folder mode; ``AppTest`` starts every run so).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import navigation
from tests.helpers import fake_studio

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")


@pytest.mark.parametrize("path", [p for p, _title, _icon in navigation.PAGES[1:]])
def test_each_page_runs_inside_the_router_once(tmp_path: Path, path: str) -> None:
    with fake_studio(tmp_path):
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.switch_page(path).run()
        assert not at.exception, [e.value for e in at.exception]
        title = next(t for p, t, _icon in navigation.PAGES if p == path)
        assert [t.value for t in at.title] == [title]
        # the router's sidebar, once: not missing (the page ran alone) nor doubled
        captions = [c.value for c in at.sidebar.caption]
        assert captions == ["Data: not chosen yet (Data page)", f"Runs folder: {tmp_path}"]


def test_the_first_page_starts_the_heavy_imports_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh server's first Data page waited a second for scikit-learn's import."""
    import sys

    from app import warmup

    monkeypatch.setattr(warmup, "_thread", None)  # a fresh process
    monkeypatch.setattr(warmup, "MODULES", ("xml.dom.minidom",))
    monkeypatch.delitem(sys.modules, "xml.dom.minidom", raising=False)
    with fake_studio(tmp_path):
        AppTest.from_file(APP, default_timeout=120).run()
    thread = warmup._thread
    assert thread is not None
    thread.join(30)
    assert "xml.dom.minidom" in sys.modules
    assert warmup.start() is None  # once per process


def test_the_warm_up_checks_the_data_in_use_for_the_data_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh server's first Data page at 50,000 images waited 1.5 s for the scan, the health
    report and the leakage plan: the warm-up computes them into the caches the page reads."""
    import core.data
    from app import warmup
    from core.runs.drafts import save_chosen_data
    from tests.helpers import write_pngs

    folder = tmp_path / "warm-data"
    for cls in ("ants", "bees"):
        write_pngs(folder / cls, 5)
    loads: list[str] = []
    load_dataset = core.data.load_dataset

    def counted(source: str, *args: object, **kwargs: object) -> object:
        loads.append(source)
        return load_dataset(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(core.data, "load_dataset", counted)
    monkeypatch.setattr(warmup, "_thread", None)  # a fresh process
    with fake_studio(tmp_path / "home"):
        save_chosen_data(tmp_path / "home", str(folder))
        at = AppTest.from_file(APP, default_timeout=120).run()  # the first page: Home
        thread = warmup._thread
        assert thread is not None
        thread.join(60)
        assert loads == [str(folder)]  # checked in the background, before any visit
        at.switch_page("pages/data.py").run()
        assert not at.exception, [e.value for e in at.exception]
        counts = {m.label: m.value for m in at.metric}
        assert counts["Training images"] == "8" and counts["Validation images"] == "2"
        assert loads == [str(folder)]  # the page read what the warm-up computed
