"""The studio's page table, the session keys pages share, the chosen data and the sidebar.

``streamlit_app.py`` routes with ``st.navigation(pages())`` over ``PAGES`` (the scripts in
``pages/``); pages link to each other with the paths named here.
"""

from __future__ import annotations

import gc
import runpy
import sys
from pathlib import Path
from typing import Any

import streamlit as st

from app.views.text import md_escape
from core.paths import runs_root

DATA_SOURCE = "data_source"  # session key: the source chosen on the Data page


RUN_ID = "run_id"  # session key: the run the Train page follows


FOLLOWED_ACTIVE = "followed_was_active"  # session key: the followed run was active when shown


HOME, DATA, TRAIN, COMPARE, PREDICT, RUN = (
    f"pages/{name}.py" for name in ("home", "data", "train", "compare", "predict", "run")
)


ROUTER = Path(__file__).resolve().parents[1] / "streamlit_app.py"
PAGES = (  # path (relative to streamlit_app.py), title, icon
    (HOME, "Home", ":material/home:"),
    (DATA, "Data", ":material/photo_library:"),
    (TRAIN, "Train", ":material/model_training:"),
    (COMPARE, "Compare", ":material/compare_arrows:"),
    (PREDICT, "Predict", ":material/image_search:"),
    (RUN, "Run", ":material/analytics:"),
)


# Progress bars and metrics are redrawn at every poll while a run trains; their CSS transitions
# then animate each time, which costs a browser more than drawing them (~0.1 s of CPU per poll,
# measured in headless Chromium, on the cores the worker trains on). They jump instead.
LIVE_STYLE = """<style>
[data-testid="stProgress"] *, [data-testid="stMetric"] * {
  transition: none !important; animation: none !important;
}
.st-key-monitor_panel [data-testid="stMetricValue"] { font-size: 1.6rem; }
</style>"""


def pages() -> list[Any]:
    """The studio's pages for ``st.navigation`` (Home first: the default)."""
    return [
        st.Page(path, title=title, icon=icon, default=path == HOME) for path, title, icon in PAGES
    ]


def through_router() -> None:
    """First call of every page script: make sure the page runs inside ``streamlit_app.py``.

    A folder named ``pages/`` beside the main script makes Streamlit start each server process
    (and each ``AppTest`` run) in its old folder mode: until ``st.navigation`` has been called
    once, a page asked for by its URL runs on its own, without the router's page config,
    sidebar and page list, and the sidebar lists every file of ``pages/`` plus the main script,
    alphabetically. Such a page hands over to the router, which shows the one page list and
    runs the asked-for page again inside it; this run then ends.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if not PagesManager.uses_pages_directory:  # ``st.navigation`` has run: routed
        return
    runpy.run_path(str(ROUTER), run_name="__main__")
    st.stop()


def chosen_data() -> str | None:
    """The data source chosen on the Data page: the session's, else the runs folder's draft
    (a browser refresh or a server restart keeps it); ``None`` if none was chosen yet."""
    source = st.session_state.get(DATA_SOURCE)
    if source:
        return str(source)
    from core.runs.drafts import load_chosen_data

    source = load_chosen_data(runs_root())
    if source:
        st.session_state[DATA_SOURCE] = source
    return source


def choose_data(source: str) -> None:
    """Make ``source`` the chosen data: in this session and in the runs folder's draft."""
    _keep_chosen_data(source)
    st.session_state.pop("data", None)  # so the Train form re-reads it from the draft


def choose_form_data() -> None:
    """``on_change`` of the Train form's data: data picked there is the chosen data, so the
    sidebar and the Data page say what Launch will train on (the form keeps its value)."""
    source = str(st.session_state.get("data") or "")
    if source.strip():
        _keep_chosen_data(source)


def _keep_chosen_data(source: str) -> None:
    from core.runs.drafts import save_chosen_data

    source = source.strip()
    st.session_state[DATA_SOURCE] = source
    save_chosen_data(runs_root(), source)  # the draft's Train form takes it as its data too


_FROZEN_AT = [0]  # len(sys.modules) when ``freeze_long_lived`` last froze


def freeze_long_lived() -> None:
    """Move the objects alive now into the garbage collector's permanent generation once the
    set of imported modules grew (TensorFlow and Keras once Predict or Run loaded a model).

    After every script and fragment run Streamlit calls ``keras.backend.clear_session()`` and
    ``gc.collect(2)``: with TensorFlow imported each full collection walks millions of objects,
    ~0.2 s of CPU per 2-s poll of a page following a run, on the cores the worker trains on.
    Frozen objects are skipped (``gc.freeze``: the same trick pre-fork servers use). Called at
    the start of a script run, right after Streamlit's collection: only live objects freeze.
    """
    if len(sys.modules) != _FROZEN_AT[0]:
        gc.freeze()
        _FROZEN_AT[0] = len(sys.modules)


def setup_app() -> None:
    """Page config and the sidebar below the navigation: the chosen data and the runs folder."""
    freeze_long_lived()
    st.set_page_config(page_title="Transfer Studio", page_icon="🧠", layout="wide")
    st.html(LIVE_STYLE)
    with st.sidebar:
        source = chosen_data()
        if source:
            from core.data.names import display_name

            st.caption(f"Data: {md_escape(display_name(source))}", help=md_escape(source))
        else:
            st.caption("Data: not chosen yet (Data page)")
        st.caption(f"Runs folder: {md_escape(runs_root())}")
