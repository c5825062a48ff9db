"""The Train page's tools beside the form: the LR finder, the search for the best model, class
weights restored from the draft and the imbalance hint. Each runs its work in a background task of
``core`` (a process of its own: nothing here builds a Keras model, so Streamlit clearing the Keras
session after each rerun cannot break one) and shows it from the task's state file; the page
stays a short script."""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from app import loaders, monitor, navigation, widgets
from app.views import dashboard
from app.views import search as search_views
from app.views.text import md_escape
from core.config import (
    RunConfig,
)
from core.data.sources import parse_source
from core.errors import StudioError
from core.paths import runs_root
from core.tasks import INTERRUPTED, RUNNING, stop_task, task_log_path, task_state
from core.training.lr_find import LR_FIND_TASK, phases_for, start_lr_find
from core.training.search import SEARCH_TASK, start_search

SEARCH_NOTE = "search_use_note"  # session key: what "Use this" changed, shown once
LR_NOTE = "lr_use_note"  # session key: what "Use <lr>" changed, shown once


def restore_class_weight() -> None:
    """The class weights choice from the runs folder's draft, like the other form fields
    (``form.restore_train_form``), when this session has none yet."""
    if "class_weight" not in st.session_state:
        from core.runs.drafts import load_draft

        draft = load_draft(runs_root()) or RunConfig()
        st.session_state["class_weight"] = draft.class_weight


def imbalance_warning(source: str | None, val_split: float, seed: int) -> str | None:
    """The data health check's class-imbalance warning for the data the Data page loaded
    (its report is cached there). Built-ins are balanced by construction: not checked."""
    if not source or source != navigation.chosen_data():
        return None
    try:
        if parse_source(source)[0] == "builtin":
            return None
        return search_views.imbalance_finding(loaders.data_health(source, val_split, seed))
    except StudioError:
        return None  # the Data page shows why the data cannot be loaded


def use_candidate(candidates: list[dict[str, Any]]) -> None:
    """ "Use this": the Train form's widgets take the picked candidate's settings (a callback:
    it runs before the widgets are drawn, so they show it)."""
    state = st.session_state
    picked = candidates[int(state.get("search_pick") or 0)]
    mode = str(state.get("search_use_mode") or search_views.USE_MODES[0])
    values = search_views.form_values(picked, mode, dashboard.LRS)
    state.update(values)
    lr = f", learning rate {values['lr']:g}" if "lr" in values else ""
    state[SEARCH_NOTE] = (
        f"Train form set to {values['backbone']} at {values['size']} px, mode {mode}{lr}."
    )


def apply_lr(phase: str, suggested: float) -> None:
    """ "Use <lr>": the phase's slider takes its stop nearest the suggested rate."""
    key, label = search_views.LR_FIELDS[phase]
    stop = search_views.nearest_stop(suggested, dashboard.LRS)
    st.session_state[key] = stop
    st.session_state[LR_NOTE] = search_views.lr_note(suggested, stop, label)


def lr_finder(config: RunConfig) -> None:
    """The "Find a learning rate" expander: the range test in the background, its curves, and
    a button per phase that applies the suggestion to the form."""
    root = runs_root()
    shown = task_state(root, LR_FIND_TASK)
    running = bool(shown and shown["status"] == RUNNING)
    with st.expander("Find a learning rate", expanded=running or LR_NOTE in st.session_state):
        phases = phases_for(config)
        st.caption(
            "Trains a throwaway copy of this model for 100 batches while the learning rate grows "
            "from tiny to huge, and suggests the rate where the loss falls fastest (fastai's "
            "“valley” rule). "
            + ("Both phases: the head, then the unfrozen layers. " if len(phases) > 1 else "")
            + "Nothing is recorded."
        )
        if st.button("Find a learning rate", key="lr_find_start", disabled=running,
                     icon=":material/query_stats:"):  # fmt: skip
            try:
                if start_lr_find(root, config):
                    st.rerun()
                st.info("A learning-rate test is already running for this runs folder.")
            except StudioError as exc:
                widgets.show_error(exc)
        if shown is None:
            return

        @st.fragment(run_every=monitor.poll_interval(running))
        def live() -> None:
            now = task_state(root, LR_FIND_TASK) or {}
            if now.get("status") != shown.get("status"):
                st.rerun()  # finished: redraw with the Use buttons
            if now.get("status") == RUNNING:
                st.caption(md_escape(search_views.lr_progress(now)))
                if st.button("Stop", key="lr_find_stop", icon=":material/stop:"):
                    stop_task(root, LR_FIND_TASK)

        live()
        if shown.get("status") == "failed":
            st.error(md_escape(shown.get("error") or "The learning-rate test failed."))
        if shown.get("status") == INTERRUPTED:
            st.warning(
                md_escape(
                    "The learning-rate test ended without finishing: its process stopped (it "
                    "was killed, or ran out of memory). Start it again; its output is in "
                    f"{task_log_path(root, LR_FIND_TASK)}."
                )
            )
        if shown.get("status") == RUNNING:
            return
        used = shown.get("config") or {}
        st.caption(
            md_escape(
                f"Found for {used.get('backbone')}, mode {used.get('mode')}, on "
                f"{dashboard.data_label(str(used.get('data') or ''))}."
            )
        )
        for phase, result in (shown.get("results") or {}).items():
            st.plotly_chart(search_views.lr_figure(result), key=f"lr_curve_{phase}")
            suggested = result.get("suggested_lr")
            if result.get("warning"):
                st.warning(md_escape(result["warning"]))
            if suggested and phase in search_views.LR_FIELDS:
                stop = search_views.nearest_stop(suggested, dashboard.LRS)
                st.button(
                    f"Use {stop:g}", key=f"lr_use_{phase}", on_click=apply_lr,
                    args=(phase, suggested),
                    help=f"Suggested {suggested:.2g}; the slider's nearest stop is {stop:g}.",
                )  # fmt: skip
        if LR_NOTE in st.session_state:
            st.info(md_escape(st.session_state.pop(LR_NOTE)))


def best_model_search(config: RunConfig) -> None:
    """The "Find the best model" section: a backbone × image size search of the form's data in
    the background, its ranked table and Pareto chart live, and "Use this"."""
    root = runs_root()
    shown = task_state(root, SEARCH_TASK)
    running = bool(shown and shown["status"] == RUNNING)
    with st.expander(
        "Find the best model: backbones × image sizes on your data",
        expanded=bool(shown) or SEARCH_NOTE in st.session_state,
        icon=":material/travel_explore:",
    ):
        st.caption(
            "Each backbone whose weights are here, at its own image size and one smaller: its "
            "features are computed once (then cached), a few heads train on them in seconds, "
            "and the whole model's single-image latency and size are measured. Same validation "
            "split and seed as this form."
        )
        c = st.columns([1, 2, 2], vertical_alignment="bottom")
        budget = c[0].number_input("Budget (minutes)", 0.5, 600.0, 5.0, 0.5, key="search_budget")
        scope = c[1].radio(
            "Backbones", ["available", "all"], horizontal=True, key="search_scope",
            format_func={"available": "weights here", "all": "all (list the others)"}.get,
            help="all: also lists the backbones whose weights need the network, not searched.",
        )  # fmt: skip
        start = c[2].button(
            "Find the best model", key="search_start", type="primary", disabled=running,
            icon=":material/travel_explore:", width="stretch",
        )  # fmt: skip
        if start:
            try:
                started = start_search(
                    root, config.data, budget_s=float(budget) * 60,
                    backbones="available" if scope == "available" else None,
                    weights=str(st.session_state.get("weights") or "imagenet"),
                    class_weight=config.class_weight, seed=config.seed,
                    val_split=config.val_split,
                )  # fmt: skip
                if started:
                    st.rerun()
                st.info("A search is already running for this runs folder.")
            except StudioError as exc:
                widgets.show_error(exc)
        if shown is None:
            return

        @st.fragment(run_every=monitor.poll_interval(running))
        def live() -> None:
            now = task_state(root, SEARCH_TASK) or {}
            if now.get("status") != shown.get("status"):
                st.rerun()  # finished: redraw the page with "Use this"
            data = dashboard.data_label(str(now.get("data") or ""))
            st.caption(
                md_escape(f"Data {data} · " + search_views.search_progress(now, time.time()))
            )
            if now.get("status") == RUNNING and st.button(
                "Stop the search", key="search_stop", icon=":material/stop:"
            ):
                stop_task(root, SEARCH_TASK)
                st.toast("Stopping the search…")
            candidates = now.get("candidates") or []
            if not candidates:
                st.caption("No candidate finished yet.")
                return
            # stacked: nine columns in half the page scrolled sideways at 1280 px
            st.dataframe(
                search_views.candidate_rows(candidates), hide_index=True, key="search_table",
                column_config={
                    "val accuracy": st.column_config.NumberColumn(format="%.3f"),
                    "latency (ms)": st.column_config.NumberColumn(format="%.1f"),
                    "size (MB)": st.column_config.NumberColumn(format="%.1f"),
                    "Pareto": st.column_config.CheckboxColumn(width="small"),
                },
            )  # fmt: skip
            st.plotly_chart(search_views.pareto_figure(candidates), key="search_pareto")
            st.caption(search_views.PARETO_NOTE)
            note = search_views.network_note(candidates)
            if note:
                st.caption(md_escape(note))

        live()
        if shown["status"] == RUNNING:
            return
        level, sentence = search_views.search_outcome(shown)
        getattr(st, level)(md_escape(sentence))
        if shown["status"] == INTERRUPTED:  # its process died: what it said is in its log
            st.caption(md_escape(f"Its output: {task_log_path(root, SEARCH_TASK)}"))
        usable = [dict(c) for c in search_views.usable_candidates(shown.get("candidates") or [])]
        if usable:
            u = st.columns([3, 2, 1], vertical_alignment="bottom")
            u[0].selectbox(
                "Candidate", range(len(usable)), key="search_pick",
                format_func=lambda i: search_views.candidate_label(usable[i]),
            )  # fmt: skip
            u[1].radio("Train it with", search_views.USE_MODES, key="search_use_mode",
                       horizontal=True)  # fmt: skip
            u[2].button("Use this", key="search_use", on_click=use_candidate, args=(usable,),
                        icon=":material/check:", width="stretch")  # fmt: skip
        if SEARCH_NOTE in st.session_state:
            st.success(md_escape(st.session_state.pop(SEARCH_NOTE)))
