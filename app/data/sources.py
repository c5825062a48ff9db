"""The Data page's source tabs: a built-in set, a local folder (or one used before), a zip upload
or a Kaggle handle; "Your dataset" is ``app.data.dataset_builder``.
"""

from __future__ import annotations

import os

import streamlit as st

from app import widgets
from app.data import dataset_builder as builder
from app.views.text import md_escape
from core.config import DEFAULT_DATA
from core.data.builtin import list_builtins
from core.data.names import display_name
from core.data.sources import check_folder, kaggle_source, parse_source, recent_sources
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


def source_kind(source: str | None) -> str | None:
    """The kind of a source (``builtin``, ``folder``, ``dataset``…); ``None`` if not one."""
    try:
        return parse_source(source)[0] if source else None
    except StudioError:
        return None


def labelled(title: str, source: str) -> None:
    """A heading with the source's recognisable name, and its full text in a caption."""
    st.subheader(f"{title}: {md_escape(display_name(source), inline=True)}")
    mine = source_kind(source) == "dataset"  # a managed dataset says so: it can be edited
    st.caption(("Your dataset · " if mine else "") + md_escape(source, inline=True))


def pick(kind: str | None, chosen: str | None) -> str | None:
    """The tab of ``kind``: its widgets, and the source they select, usable as it is (``None``
    while nothing usable is selected)."""
    chosen_kind = source_kind(chosen)
    source: str | None = None
    if kind == builder.KIND:
        builder.render(chosen)
    elif kind == "Built-in":
        builtins = sorted(
            list_builtins(), key=lambda b: b["source"] != DEFAULT_DATA
        )  # default first
        sources = [b["source"] for b in builtins]
        builtin = st.selectbox(
            "Built-in dataset (offline)",
            builtins,
            index=sources.index(chosen) if chosen in sources else 0,
            format_func=lambda b: f"{b['name']} — {b['images']} images: {', '.join(b['classes'])}",
        )
        st.caption(md_escape(builtin["description"]))
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
                st.success(md_escape(check.message))
                source = os.path.abspath(os.path.expanduser(typed.strip()))
            else:
                st.error(md_escape(check.message))
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
                    st.caption(f"Understood as {md_escape(source, inline=True)}.")
            except StudioError as exc:
                widgets.show_error(exc)
    return source
