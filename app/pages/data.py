"""Data: choose a source, then see its classes, samples, skipped files and health warnings.

"Your dataset" (``app.dataset_builder``) makes a managed dataset in the app: create one, name
its classes, drop images per class or take camera pictures, or import any other source once.

Two sources can be on screen: the one *in use* (what the Train page trains on, kept across a
refresh by ``widgets.chosen_data``) and the one being *selected* on the tabs, which only becomes
the one in use when "Use this data" is clicked. Each is labelled as such, by the name a person
recognises (``display_name``), with the full path or handle in a caption.
"""

from __future__ import annotations

import os

import streamlit as st

from app import dataset_builder as builder
from app import widgets
from app.views import charts
from app.views import review as review_views
from core.config import DEFAULT_DATA
from core.data import datasets
from core.data import health as data_health
from core.data.builtin import list_builtins
from core.data.names import display_name
from core.data.sources import (
    check_folder,
    kaggle_source,
    parse_source,
    recent_sources,
    remember_source,
)
from core.errors import StudioError
from core.paths import runs_root

KINDS = [builder.KIND, "Built-in", "Local folder", "Zip upload", "Kaggle"]
KIND_OF = {"builtin": "Built-in", "folder": "Local folder", "zip": "Zip upload", "kaggle": "Kaggle"}
KIND_OF["dataset"] = builder.KIND
TYPED = "typed folder"  # the recent-folders choice that means "the path typed above"


@st.cache_data(ttl=30, show_spinner=False)
def _run_sources(root: str) -> list[str]:
    """The data sources of recorded runs, newest first (recent folders the user trained on)."""
    from core.runs.store import RunStore

    try:
        runs = RunStore(root, recover=False).list_runs()
    except StudioError:  # a damaged store is reported on Home; here it only lists nothing
        return []
    return [r["data"] for r in runs if r["data"]]


def _source_kind(source: str | None) -> str | None:
    try:
        return parse_source(source)[0] if source else None
    except StudioError:
        return None


def _labelled(title: str, source: str) -> None:
    """A heading with the source's recognisable name, and its full text in a caption."""
    st.subheader(f"{title}: {widgets.md_escape(display_name(source), inline=True)}")
    mine = _source_kind(source) == "dataset"  # a managed dataset says so: it can be edited
    st.caption(("Your dataset · " if mine else "") + widgets.md_escape(source, inline=True))


st.title("Data")
builder.take_pending()  # a dataset just imported or created: its tab, before the widgets
chosen = widgets.chosen_data()
chosen_kind = _source_kind(chosen)
if chosen:
    mine = " (your dataset)" if chosen_kind == "dataset" else ""
    st.markdown(
        f"**In use:** {widgets.md_escape(display_name(chosen), inline=True)}{mine} "
        "(what the Train page trains on)",
        help=widgets.md_escape(chosen),
    )
kind = st.segmented_control(
    "Source",
    KINDS,
    default=KIND_OF.get(chosen_kind or "", "Built-in"),
    key="kind",
)
source: str | None = None  # what the tabs select, usable as it is
if kind == builder.KIND:
    builder.render(chosen)
elif kind == "Built-in":
    builtins = sorted(list_builtins(), key=lambda b: b["source"] != DEFAULT_DATA)  # default first
    sources = [b["source"] for b in builtins]
    builtin = st.selectbox(
        "Built-in dataset (offline)",
        builtins,
        index=sources.index(chosen) if chosen in sources else 0,
        format_func=lambda b: f"{b['name']} — {b['images']} images: {', '.join(b['classes'])}",
    )
    st.caption(widgets.md_escape(builtin["description"]))
    source = builtin["source"]
elif kind == "Local folder":
    recent = recent_sources("folder", _run_sources(str(runs_root())))
    typed = st.text_input(
        "Folder",
        value=chosen if chosen_kind == "folder" else "",
        placeholder="~/pets: class subfolders, or train/ + val/",
        key="folder",
        help="A folder holding one sub-folder of images per class (the folder names are the "
        "labels), or train/ plus val/ folders holding those.",
    )
    if recent:
        picked = st.selectbox(
            "Or a folder used before",
            [TYPED, *recent],
            format_func=lambda s: "—" if s == TYPED else f"{display_name(s)}  ({s})",
            key="recent_folder",
        )
        if picked != TYPED:
            typed = picked
    if typed and typed.strip():
        check = check_folder(typed)
        if check.ok:
            st.success(widgets.md_escape(check.message))
            source = os.path.abspath(os.path.expanduser(typed.strip()))
        else:
            st.error(widgets.md_escape(check.message))
elif kind == "Zip upload":
    from core.data.uploads import save_upload

    upload = st.file_uploader("Drop a .zip of class folders", type=["zip"], key="zip")
    if upload is not None:
        try:
            source = str(save_upload(upload.getvalue(), original_name=upload.name))
        except StudioError as exc:
            widgets.show_error(exc)
elif kind == "Kaggle":
    typed = st.text_input(
        "Kaggle dataset",
        value=chosen if chosen_kind == "kaggle" else "",
        placeholder="OWNER/SLUG or OWNER/SLUG/versions/N",
        key="kaggle",
        help="As on the dataset's Kaggle page (kaggle.com/datasets/OWNER/SLUG); kaggle: in "
        "front and the page's URL work too. A pinned /versions/N works offline once cached.",
    )
    if typed and typed.strip():
        try:
            source = kaggle_source(typed)
            if source != typed.strip():
                st.caption(f"Understood as {widgets.md_escape(source, inline=True)}.")
        except StudioError as exc:
            widgets.show_error(exc)

selected = source if source and source != chosen else None
if selected:
    _labelled("Selected (not in use yet)", selected)
    st.caption("Click **Use this data** to check every image and train on it.")
    with st.expander("Make it a dataset you can edit (add, relabel, exclude images)"):
        builder.import_source(selected, "import_selected")
cols = st.columns([1, 1, 2], vertical_alignment="bottom")
val_split = cols[0].number_input("Validation split", 0.05, 0.9, 0.2, 0.05, key="val_split")
seed = int(cols[1].number_input("Seed", 0, 2**31 - 1, 42, key="seed"))
use = kind != builder.KIND and cols[2].button(  # "Your dataset" has its own Use button
    "Use this data", type="primary", disabled=not selected, key="use_data"
)
if use and selected and widgets.fetch_data(selected, val_split, seed):
    widgets.choose_data(selected)
    remember_source(selected)
    st.rerun()  # redraw the sidebar and the Train page's default with the new source

if not chosen:
    st.info(review_views.not_in_use_hint(kind == builder.KIND, len(datasets.dataset_names())))
    st.stop()
st.divider()
try:
    index = widgets.load_data(chosen, val_split, seed)
    with st.spinner("Checking data health…"):
        report = widgets.data_health(chosen, val_split, seed)
except StudioError as exc:
    _labelled("In use", chosen)
    widgets.show_error(exc)
    st.stop()

_labelled("In use", chosen)
m = st.columns(5)
m[0].metric("Classes", len(index.class_names))
m[1].metric("Training images", len(index.train_paths))
m[2].metric("Validation images", len(index.val_paths))
m[3].metric("Skipped files", len(index.skipped_files))
m[4].metric("Split", "given" if index.split.startswith("given") else "random")
for item in report:
    (st.warning if item["level"] == "warning" else st.info)(widgets.md_escape(item["message"]))
if not any(item["level"] == "warning" for item in report):
    st.success("Health check: no imbalance, empty classes, duplicates or tiny images found.")
st.page_link(widgets.TRAIN, label="Train on this data", icon=":material/arrow_forward:")

left, right = st.columns([2, 3])
with left:
    st.markdown("**Images per class**")
    st.plotly_chart(charts.class_counts_figure(index.class_counts()), key="class_counts")
with right:
    st.markdown("**Samples**")
    samples = data_health.sample_images(index, per_class=6, seed=seed)
    try:
        for name in list(samples)[:12]:
            st.caption(widgets.md_escape(name))
            st.image([widgets.thumbnail(p) for p in samples[name]], width=80)
    except StudioError as exc:  # a file changed on disk since the scan
        widgets.show_error(exc)
    if len(samples) > 12:
        st.caption(f"… and {len(samples) - 12} more classes.")
if index.skipped_files:
    with st.expander(f"Skipped files ({len(index.skipped_files)})"):
        st.dataframe(data_health.skipped_table(index), hide_index=True, width="stretch")
st.caption(f"Folder: {widgets.md_escape(os.path.abspath(index.root))}")
