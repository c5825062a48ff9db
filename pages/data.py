"""Data: choose a source, then see its classes, samples, skipped files and health warnings.

"Your dataset" (``app.data.dataset_builder``) makes a managed dataset in the app: create one, name
its classes, drop images per class or take camera pictures, or import any other source once.

Two sources can be on screen: the one *in use* (what the Train page trains on, kept across a
refresh by ``navigation.chosen_data``) and the one being *selected* on the tabs, which only becomes
the one in use when "Use this data" is clicked. Each is labelled as such, by the name a person
recognises (``display_name``), with the full path or handle in a caption.
"""

from __future__ import annotations

import streamlit as st

from app import loaders, navigation
from app.data import dataset_builder as builder
from app.data import overview, sources
from app.views import review as review_views
from app.views.text import md_escape
from core.config import RunConfig
from core.data import datasets
from core.data.names import display_name
from core.data.sources import remember_source

navigation.through_router()  # first: the page runs inside the router
st.title("Data")
builder.take_pending()  # a dataset just imported or created: its tab, before the widgets
chosen = navigation.chosen_data()
chosen_kind = sources.source_kind(chosen)
if chosen:
    mine = " (your dataset)" if chosen_kind == "dataset" else ""
    st.markdown(
        f"**In use:** {md_escape(display_name(chosen), inline=True)}{mine} "
        "(what the Train page trains on)",
        help=md_escape(chosen),
    )
kind = st.segmented_control(
    "Source",
    sources.KINDS,
    default=sources.KIND_OF.get(chosen_kind or "", "Built-in"),
    key="kind",
)
source = sources.pick(kind, chosen)  # what the tabs select, usable as it is
selected = source if source and source != chosen else None
if selected:
    sources.labelled("Selected (not in use yet)", selected)
    st.caption("Click **Use this data** to check every image and train on it.")
    with st.expander("Make it a dataset you can edit (add, relabel, exclude images)"):
        builder.import_source(selected, "import_selected")
cols = st.columns([1, 1, 2], vertical_alignment="bottom")
# Until a person changes them, a run's own split and seed (the warm-up checks the data at those).
val_split = cols[0].number_input(
    "Validation split", 0.05, 0.9, RunConfig.val_split, 0.05, key="val_split"
)
seed = int(cols[1].number_input("Seed", 0, 2**31 - 1, RunConfig.seed, key="seed"))
use = kind != builder.KIND and cols[2].button(  # "Your dataset" has its own Use button
    "Use this data", type="primary", disabled=not selected, key="use_data"
)
if use and selected and loaders.fetch_data(selected, val_split, seed):
    navigation.choose_data(selected)
    remember_source(selected)
    st.rerun()  # redraw the sidebar and the Train page's default with the new source

if not chosen:
    st.info(review_views.not_in_use_hint(kind == builder.KIND, len(datasets.dataset_names())))
    st.stop()
overview.render(chosen, val_split, seed)
