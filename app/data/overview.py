"""The Data page's view of the data in use: counts, the health report, images per class, samples
and the files skipped.
"""

from __future__ import annotations

import os

import streamlit as st

from app import loaders, navigation, widgets
from app.data import leakage
from app.data.sources import labelled, source_kind
from app.views import charts
from app.views.text import md_escape
from core.config import RunConfig
from core.data import health as data_health
from core.errors import StudioError

# Sources checked ahead of a visit: those already on disk (never a download or an extraction).
PREFETCHED_KINDS = ("folder", "dataset")


def prefetch(source: str) -> None:
    """What the page computes for ``source`` at its default split and seed (a run's own: the
    index, the health report, the leakage plan), into the caches the page reads: the server's
    warm-up calls it."""
    index = loaders.load_data(source, RunConfig.val_split, RunConfig.seed)
    loaders.data_health(source, RunConfig.val_split, RunConfig.seed)
    leakage.plan_for(source, index)


def prefetch_chosen() -> None:
    """``prefetch`` of the data in use (the runs folder's choice), when it is on disk: a fresh
    server checks it while the user reads the first page (50,000 files: about 1.5 s)."""
    from core.paths import runs_root
    from core.runs.drafts import load_chosen_data

    source = load_chosen_data(runs_root())
    if source and source_kind(source) in PREFETCHED_KINDS:
        prefetch(source)


def render(chosen: str, val_split: float, seed: int) -> None:
    """The source in use, loaded with the split and seed chosen above it."""
    st.divider()
    try:
        index = loaders.load_data(chosen, val_split, seed)
        with st.spinner("Checking data health…"):
            report = loaders.data_health(chosen, val_split, seed)
    except StudioError as exc:
        labelled("In use", chosen)
        widgets.show_error(exc)
        st.stop()

    labelled("In use", chosen)
    m = st.columns(5)
    m[0].metric("Classes", len(index.class_names))
    m[1].metric("Training images", len(index.train_paths))
    m[2].metric("Validation images", len(index.val_paths))
    m[3].metric("Skipped files", len(index.skipped_files))
    m[4].metric("Split", "given" if index.split.startswith("given") else "random")
    for item in report:
        (st.warning if item["level"] == "warning" else st.info)(md_escape(item["message"]))
    if not any(item["level"] == "warning" for item in report):
        st.success("Health check: no imbalance, empty classes, duplicates or tiny images found.")
    leakage.render(chosen, index, val_split, seed)  # near-copies, from cached features
    st.page_link(navigation.TRAIN, label="Train on this data", icon=":material/arrow_forward:")

    left, right = st.columns([2, 3])
    with left:
        st.markdown("**Images per class**")
        st.plotly_chart(charts.class_counts_figure(index.class_counts()), key="class_counts")
    with right:
        st.markdown("**Samples**")
        samples = data_health.sample_images(index, per_class=6, seed=seed)
        try:
            for name in list(samples)[:12]:
                st.caption(md_escape(name))
                st.image([loaders.thumbnail(p) for p in samples[name]], width=80)
        except StudioError as exc:  # a file changed on disk since the scan
            widgets.show_error(exc)
        if len(samples) > 12:
            st.caption(f"… and {len(samples) - 12} more classes.")
    if index.skipped_files:
        with st.expander(f"Skipped files ({len(index.skipped_files)})"):
            st.dataframe(data_health.skipped_table(index), hide_index=True, width="stretch")
    st.caption(f"Folder: {md_escape(os.path.abspath(index.root))}")
