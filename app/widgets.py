"""Small Streamlit widgets the pages share: errors, click keys, the finished-run chooser, uploads.

The page table and session keys are in ``app.navigation``, cached loaders in ``app.loaders``, the
run monitor in ``app.monitor``; each page's own panels in ``app/<page>/``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import streamlit as st

from app.navigation import TRAIN
from app.views.text import md_escape
from core.errors import StudioError

if TYPE_CHECKING:
    from core.runs.store import RunStore, RunSummary


def show_error(exc: Exception) -> None:
    """A user-actionable error as a red box (no traceback); its text is shown as typed.

    Messages quote paths, file, class and run names: never rendered as Markdown.
    """
    text = str(exc) if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
    st.error(md_escape(text))


def new_click_key(name: str) -> None:
    """Button ``on_click``: a fresh idempotency key for this click (kept across reruns)."""
    st.session_state[f"{name}_key"] = uuid.uuid4().hex


def click_key(name: str) -> str:
    """The key of the latest click on button ``name``."""
    return st.session_state.get(f"{name}_key") or uuid.uuid4().hex


def finished_runs(
    store: RunStore, empty_message: str, include_failed: bool = False
) -> tuple[list[RunSummary], dict[str, str]]:
    """Runs that have a model (newest first) and their labels by id; stops the page if none.

    ``include_failed`` adds the failed and interrupted runs (the Run page shows what happened
    and Resume). The labels are plain text, for ``st.selectbox``/``st.multiselect`` options
    (which show them as typed): escape them with ``md_escape`` anywhere Markdown is rendered.
    """
    from app.views.dashboard import predictable_runs, run_choice_label
    from core.runs.store import FAILED, INTERRUPTED

    runs = predictable_runs(store)
    if include_failed:
        ids = {r["run_id"] for r in runs}
        ended = (FAILED, INTERRUPTED)
        runs = [r for r in store.list_runs() if r["run_id"] in ids or r["status"] in ended]
    if not runs:
        st.info(empty_message)
        st.page_link(TRAIN, label="Go to Train", icon=":material/model_training:")
        st.stop()
    return runs, {r["run_id"]: run_choice_label(r) for r in runs}


def saved_upload(upload: Any) -> str | None:
    """Path of an uploaded zip saved under the data cache (None, with a message, if unusable)."""
    from core.data.uploads import save_upload

    if upload is None:
        return None
    try:
        return str(save_upload(upload.getvalue()))
    except StudioError as exc:
        show_error(exc)
        return None


def preview_image(data: bytes, max_side: int = 448) -> Any:
    """An uploaded image as RGB pixels, shrunk (aspect kept) for display; DataError if unusable."""
    import io

    from PIL import Image

    from core.data.images import load_rgb

    image = Image.fromarray(load_rgb(io.BytesIO(data)))
    image.thumbnail((max_side, max_side))
    return image
