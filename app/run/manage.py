"""The Run page's management of a run: rename it, delete it (after a confirmation), and for a run
that ended without a model, what went wrong with the fix or Resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from app import monitor, navigation, widgets
from app.views import run_page as run_views
from app.views.text import md_escape
from core.errors import StudioError
from core.runs.store import FAILED, MAX_RUN_NAME

if TYPE_CHECKING:
    from core.runs.store import RunResult, RunStore
    from core.training.jobs import JobQueue

DELETING = "run_page_delete"  # session key: the run whose deletion awaits a confirmation
NOTE = "run_page_note"  # session key: a message to show after the rerun a change needs


def show_note() -> None:
    """The message a rename or a deletion left for the rerun it needed (shown once)."""
    if note := st.session_state.pop(NOTE, None):
        st.success(note)


def rename_or_delete(store: RunStore, result: RunResult) -> None:
    """The "Rename or delete this run" expander."""
    run_id = result["run_id"]
    with st.expander("Rename or delete this run", icon=":material/edit:"):
        name_key = f"name_{run_id}"
        st.session_state.setdefault(name_key, result["name"])
        cols = st.columns([4, 1], vertical_alignment="bottom")
        name = cols[0].text_input("Name", key=name_key, max_chars=MAX_RUN_NAME)
        if cols[1].button("Save name", key="rename", icon=":material/save:", width="stretch"):
            try:
                saved = store.rename(run_id, name)
            except StudioError as exc:
                widgets.show_error(exc)
            else:
                st.session_state[NOTE] = f"Renamed the run to “{md_escape(saved, inline=True)}”."
                st.session_state.pop(name_key, None)  # the stored (trimmed) name shows next
                st.rerun()  # the run selector's label shows the new name
        size = run_views.size_text(store.run_bytes(run_id))
        if st.session_state.get(DELETING) != run_id:
            if st.button(f"Delete this run ({size})", key="delete", icon=":material/delete:"):
                st.session_state[DELETING] = run_id
                st.rerun()
        else:
            st.warning(
                f"Delete run “{md_escape(result['name'], inline=True)}” and its files "
                f"({size}: model, checkpoints, exports, evaluation)? This cannot be undone."
            )
            row = st.container(horizontal=True)
            if row.button("Yes, delete it", key="delete_confirm", icon=":material/delete_forever:",
                          type="primary"):  # fmt: skip
                try:
                    store.delete_run(run_id)
                except StudioError as exc:
                    widgets.show_error(exc)
                else:
                    st.session_state.pop(DELETING, None)
                    st.session_state.pop("run_page_run", None)
                    if st.session_state.get(navigation.RUN_ID) == run_id:
                        st.session_state.pop(navigation.RUN_ID, None)
                    del st.query_params["run"]
                    st.session_state[NOTE] = (
                        f"Deleted run “{md_escape(result['name'], inline=True)}” and its files."
                    )
                    st.rerun()
            if row.button("Cancel", key="delete_cancel"):
                st.session_state.pop(DELETING, None)
                st.rerun()


def ended_without_model(queue: JobQueue, result: RunResult) -> None:
    """A failed or interrupted run: no model to evaluate or export. What went wrong, and what to
    do about it (a corrected run to queue, or Resume)."""
    run_id = result["run_id"]
    # No model to evaluate or export: what went wrong, and what to do about it.
    said = st.error if result["status"] == FAILED else st.warning
    said(md_escape(result["error"] or f"The run {result['status']} (no message recorded)."))
    if monitor.run_fixes(queue, result, "run_page"):
        st.caption(
            f"**Resume** continues from the end of epoch {result['epochs_done']} "
            "(the last one saved)." if result["epochs_done"] else "**Resume** starts it again."
        )  # fmt: skip
        if st.button("Resume", key="run_page_resume", icon=":material/replay:"):
            try:
                queue.resume(run_id)
            except StudioError as exc:
                widgets.show_error(exc)
            else:
                st.session_state[navigation.RUN_ID] = run_id
                st.success("Resumed: the run is queued again.")
                st.page_link(navigation.TRAIN, label="Watch it train", icon=":material/monitoring:")
