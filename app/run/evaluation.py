"""The Run page's evaluation: accuracy, per-class metrics, the confusion matrix (or for many
classes the most confused pairs) and the validation images behind any cell.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import streamlit as st

from app import loaders, widgets
from app.views import run_page as run_views
from app.views.text import md_escape
from core.errors import StudioError

if TYPE_CHECKING:
    from core.runs.evaluate import Evaluation
    from core.runs.store import RunStore

# Four numbers beside a class name in the narrow right-hand column (about 300 px at 1280 x 800):
# two decimals and starting widths that fit it, so the last column is not cut off (the columns
# widen with a wider window).
_PER_CLASS = {
    "class": st.column_config.TextColumn("class", width=84),
    "precision": st.column_config.NumberColumn("precision", format="%.2f", width=66),
    "recall": st.column_config.NumberColumn("recall", format="%.2f", width=50),
    "f1": st.column_config.NumberColumn("F1", format="%.2f", width=40),
    "support": st.column_config.NumberColumn(
        "images", width=50, help="Validation images of this class (its support)"
    ),
}


def render(store: RunStore, run_id: str) -> None:
    """The "Evaluate" section of a run that has a model."""
    st.subheader("Evaluate", divider="gray")
    evaluation: Evaluation | None
    try:
        # Evaluated by the worker as the run completed: read from the run folder. An older run (or
        # one whose evaluation failed then) is evaluated here, once.
        with st.spinner("Evaluating on the validation split (once per model)…"):
            evaluation = loaders.evaluation(store, run_id)
    except StudioError as exc:
        widgets.show_error(exc)
        evaluation = None
    if evaluation is None:
        return
    names = evaluation["class_names"]
    true_key, pred_key, matrix_key = f"true_{run_id}", f"pred_{run_id}", f"matrix_{run_id}"
    pairs_key = f"pairs_{run_id}"

    def pick_cell() -> None:  # a click on the matrix sets the two class pickers
        cell = run_views.cell_from_selection(names, st.session_state.get(matrix_key))
        if cell:
            st.session_state[true_key], st.session_state[pred_key] = cell

    def pick_pair(
        pairs: list[dict[str, Any]],
    ) -> None:  # so does a row of the most-confused-pairs table
        rows = ((st.session_state.get(pairs_key) or {}).get("selection") or {}).get("rows") or []
        if rows and rows[0] < len(pairs):
            pair = pairs[rows[0]]
            st.session_state[true_key], st.session_state[pred_key] = (
                pair["true"],
                pair["predicted"],
            )

    default = run_views.default_cell(evaluation)
    st.session_state.setdefault(true_key, default[0])
    st.session_state.setdefault(pred_key, default[1])
    left, right = st.columns([3, 2], gap="large")
    with right:
        images_text = f"{evaluation['val_images']} images"
        st.metric("Validation accuracy", f"{evaluation['accuracy']:.1%}", images_text,
                  delta_color="off", delta_arrow="off")  # fmt: skip
        class_rows = run_views.per_class_rows(evaluation)
        if len(names) > run_views.HEATMAP_MAX_CLASSES:  # hundreds of rows: find one by name
            query = st.text_input("Find a class", key=f"class_search_{run_id}",
                                  placeholder="part of a class name")  # fmt: skip
            class_rows = run_views.filter_class_rows(class_rows, query)
        st.dataframe(class_rows, hide_index=True, width="stretch", column_config=_PER_CLASS)
        true_class = st.selectbox("True class", names, key=true_key)
        pred_class = st.selectbox("Predicted class", names, key=pred_key)
    view = loaders.confusion_view(store, run_id, evaluation, (true_class, pred_class))
    with left:
        if view["kind"] == "heatmap":
            st.caption("Rows: true class · columns: predicted class. Click a cell for its images.")
            st.plotly_chart(
                view["figure"], key=matrix_key, on_select=pick_cell, selection_mode="points",
                config={"displayModeBar": False},
            )  # fmt: skip
        else:  # too many classes to label: colours only, the most confused pairs, a CSV
            if view.get("overview") is not None:
                st.caption(f"{len(names)} classes, coloured by share of the true class (hover "
                           "for names and counts).")  # fmt: skip
                st.plotly_chart(view["overview"], key=f"overview_{run_id}",
                                config={"displayModeBar": False})  # fmt: skip
            st.caption(
                f"{len(names)} classes: too many to label the confusion matrix. The most "
                "confused pairs, largest first (click a row to see its images):"
            )
            st.dataframe(
                view["pairs"], key=pairs_key, on_select=partial(pick_pair, view["pairs"]),
                selection_mode="single-row", hide_index=True, width="stretch", height=360,
                column_config={
                    "true": st.column_config.TextColumn("true class"),
                    "predicted": st.column_config.TextColumn("predicted as"),
                    "count": st.column_config.NumberColumn("images"),
                    "share": st.column_config.NumberColumn(
                        "share of true class", format="percent"
                    ),
                },
            )  # fmt: skip
            st.download_button(
                "Full confusion matrix (CSV)",
                partial(run_views.matrix_csv, names, evaluation["confusion_matrix"]),
                f"confusion-matrix-{run_id}.csv", "text/csv", key=f"matrix_csv_{run_id}",
                icon=":material/download:", on_click="ignore",
            )  # fmt: skip
    items, total = run_views.gallery(evaluation, true_class, pred_class)
    shown_true, shown_pred = (md_escape(name, inline=True) for name in (true_class, pred_class))
    kind = "correctly classified" if true_class == pred_class else f"predicted as {shown_pred}"
    more = f" (the {len(items)} most confident shown)" if total > len(items) else ""
    st.markdown(f"**{total} validation images of {shown_true} {kind}**{more}")
    if items:
        st.image([loaders.thumbnail(item["path"], 128) for item in items],
                 caption=[md_escape(item["caption"], inline=True) for item in items],
                 width=128)  # fmt: skip
    else:
        st.caption("No image in this cell.")
