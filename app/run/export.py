"""The Run page's export: one format or every format, each verified in its runtime, with the
files, the model card and one zip to download.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import streamlit as st

from app import widgets
from app.views import run_page as run_views
from app.views.text import md_escape
from core.errors import StudioError
from core.runs import export as runs_export

if TYPE_CHECKING:
    from core.runs.store import RunResult, RunStore


def render(store: RunStore, result: RunResult) -> None:
    """The "Export" section of a run that has a model."""
    run_id = result["run_id"]
    st.subheader("Export", divider="gray")
    st.caption(
        "Each export is loaded by the runtime you would deploy it with (Keras, TensorFlow, LiteRT, "
        "ONNX Runtime) in a separate process without Transfer Studio and checked against this "
        "model on validation images. A model card is written with every export."
    )
    cols = st.columns([4, 2, 2], vertical_alignment="bottom")
    fmt = cols[0].radio("Format", runs_export.FORMATS, horizontal=True, key="export_format")
    quantize = cols[1].checkbox(
        "Quantize", key="export_quantize", disabled=fmt != "tflite",
        help="tflite only: dynamic-range quantization, int8 weights, about 4x smaller",
    )  # fmt: skip
    # One result per format (and quantization): switching the format never shows another's result.
    export_key = f"export_{run_id}_{fmt}_{quantize and fmt == 'tflite'}"
    all_key = f"export_{run_id}_all"
    if cols[2].button(
        "Export and verify", key="export", icon=":material/ios_share:", type="primary"
    ):
        try:
            with st.spinner(f"Exporting {fmt} and checking it in its runtime…"):
                st.session_state[export_key] = runs_export.export_run(
                    store, run_id, fmt, quantize=quantize and fmt == "tflite"
                )
        except StudioError as exc:
            widgets.show_error(exc)
    if st.button(
        "Export every format and compare them", key="export_all", icon=":material/table_chart:",
        help="All formats into one folder, each verified in its runtime: size, latency, agreement "
        "and accuracy side by side, with the model card and one zip to download",
    ):  # fmt: skip
        # Where the export is (format n/7, converting or verifying) and each format's row as it
        # finishes: the whole export takes minutes.
        status = st.status("Exporting every format…", expanded=True)
        bar = status.progress(0.0)
        finished: list[dict[str, Any]] = []
        table = status.empty()

        def show(step: runs_export.ExportStep) -> None:
            done = step.index if step.step == "done" else max(step.index - 1, 0)
            bar.progress(done / step.total, text=step.text)
            if step.row is not None:
                finished.append(step.row)
                table.dataframe(run_views.export_table(finished), hide_index=True)

        try:
            st.session_state[all_key] = runs_export.export_all(store, run_id, progress=show)
            table.empty()  # the full table follows below
            status.update(
                label="Every format exported and verified", state="complete", expanded=False
            )
        except StudioError as exc:
            status.update(label="The export stopped", state="error")
            widgets.show_error(exc)
    if export := st.session_state.get(export_key):
        st.success(run_views.export_message(export))
        st.caption(f"Saved in {md_escape(export['folder'])}")
        _downloads(result, export, "one")
        _card(export)
    if everything := st.session_state.get(all_key):
        st.markdown("**Every format, verified in its runtime** (latency: one image on this CPU)")
        st.dataframe(
            run_views.export_table(everything["formats"]), hide_index=True, key="export_table"
        )
        for item in everything["skipped_formats"]:
            st.warning(f"Not exported: {item['format']}, it {item['reason']}.")
        st.caption(f"Saved in {md_escape(everything['path'])}")
        _downloads(result, everything, "all")
        _card(everything)


def _downloads(result: RunResult, export: dict[str, Any], key: str) -> None:
    """The export's files, its model card and everything as one zip, as download buttons."""
    row = st.container(horizontal=True)
    row.download_button(
        "Download all (zip)", partial(run_views.export_zip, export["files"],
                                      run_views.export_zip_name(result).removesuffix(".zip")),
        run_views.export_zip_name(result), "application/zip", key=f"download_all_{key}",
        icon=":material/folder_zip:", on_click="ignore", type="primary",
    )  # fmt: skip
    for item in run_views.export_downloads(export):
        row.download_button(
            item["label"], partial(run_views.file_bytes, item["path"]), item["file_name"],
            item["mime"], key=f"download_{key}_{item['file_name']}", icon=":material/download:",
            on_click="ignore",
        )  # fmt: skip


def _card(export: dict[str, Any]) -> None:
    try:
        with open(export["card"], encoding="utf-8") as handle:
            card = handle.read()
    except OSError:  # the folder was deleted since: the downloads above say as much
        return
    with st.expander("Model card (model_card.md)"):
        st.markdown(run_views.card_for_page(card))
