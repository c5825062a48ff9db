"""The Data page's "Your dataset": make a managed dataset in the app and fill it.

Create one from nothing (then name its classes) or import a folder, zip, Kaggle handle or
built-in set once; per class drop many images, a whole folder, or take camera pictures (each
shown first, then kept or retaken), with the running count per class; skipped files and
duplicates are listed with their reason; Undo reverts the last edit; "Use this dataset" makes
``dataset:NAME`` the data in use.

Edits open the dataset afresh on every click (``core.data.datasets``: one SQLite transaction
each), so two browser sessions editing the same dataset both keep their edits, in order.
Every name a user typed is shown as text (``md_escape``), never as Markdown or HTML.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from app import loaders, navigation, widgets
from app.views import review as views
from app.views.text import md_escape
from core.config import DEFAULT_DATA, RunConfig
from core.data import datasets
from core.data.images import IMAGE_EXTENSIONS
from core.data.names import escape_unprintable
from core.errors import StudioError

NEW = "\u0000new"  # the "New dataset…" choice (no dataset name can hold a NUL)
PICK = "builder_pick"  # widget key: the dataset shown
PENDING = "builder_pending"  # session key: a dataset to show on the next run (set before PICK)
KIND_PENDING = "builder_kind"  # session key: the Data page's tab to switch to on the next run
NOTES = "builder_notes"  # session key: (level, markdown) messages of the last action
ADD_NOTES = "builder_add_notes"  # session key: the same for the last images added
PROBLEMS = "builder_problems"  # session key: files not added by the last add (rows)
ADDED = "builder_added"  # session key: upload file ids already added (uploaders keep files)
CAMERA_N = "builder_camera_n"  # session key: the camera's key number (a new one per picture)
DELETING = "builder_deleting"  # session key: (dataset, class) awaiting a confirmation
TARGET = "builder_target"  # widget key: the class images are added to
KIND = "Your dataset"  # the Data page's tab label for managed datasets
UPLOAD_TYPES = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- messages


def _note(level: str, text: str, where: str = NOTES) -> None:
    st.session_state.setdefault(where, []).append((level, text))


def _error(exc: Exception) -> None:
    _note("error", md_escape(str(exc)))


def _show_notes(where: str = NOTES) -> None:
    for level, text in st.session_state.pop(where, []):
        {"success": st.success, "warning": st.warning, "error": st.error}.get(level, st.info)(text)


def _data_changed() -> None:
    """A dataset's images changed: the Data and Train pages must not show a cached scan."""
    loaders.load_data.clear()
    loaders.data_health.clear()


def _edit(name: str, action: Callable[[datasets.Dataset], str | None]) -> bool:
    """Apply one edit to dataset ``name`` (opened for it alone); its message or error noted."""
    try:
        with datasets.open_dataset(name) as ds:
            message = action(ds)
    except StudioError as exc:
        _error(exc)
        return False
    if message:
        _note("success", message)
    _data_changed()
    return True


def _on_edit(name: str, action: Callable[[datasets.Dataset], str | None]) -> None:
    """``_edit`` as a button's ``on_click``."""
    _edit(name, action)


# --------------------------------------------------------------------------- pending switches


def take_pending() -> None:
    """Call before the Data page's widgets: apply a switch asked for by the last run (the tab
    and the dataset shown), which cannot be set once those widgets are drawn."""
    if kind := st.session_state.pop(KIND_PENDING, None):
        st.session_state["kind"] = kind
    if name := st.session_state.pop(PENDING, None):
        st.session_state[PICK] = name


def _show_dataset(name: str) -> None:
    st.session_state[PENDING] = name
    st.session_state[KIND_PENDING] = KIND


# --------------------------------------------------------------------------- create and import


def _create(typed_key: str) -> None:
    """``on_click`` of Create: a new empty dataset, shown next (the typed name is kept on an
    error so nothing is lost)."""
    try:
        with datasets.create(str(st.session_state.get(typed_key) or "")) as ds:
            name = ds.name
    except StudioError as exc:
        _error(exc)
        return
    st.session_state[PICK] = name
    st.session_state[typed_key] = ""
    _note("success", f"Created dataset **{md_escape(name, inline=True)}**. Add its classes below.")


def import_source(source: str, key: str) -> None:
    """A name box (defaulting to the source's own name, e.g. ``photos.zip`` → ``photos``) and an
    Import button that copies ``source`` into a new managed dataset, once, then shows it."""
    from core.data.names import display_name

    suggested = views.free_name(datasets.suggest_name(source), datasets.dataset_names())
    cols = st.columns([3, 2], vertical_alignment="bottom")
    typed = cols[0].text_input(
        f"Import {md_escape(display_name(source), inline=True)} as a dataset you can edit, named",
        placeholder=suggested,
        key=f"{key}_name",
        help="A copy is made once (the original is never changed); then add, relabel or "
        "exclude images and train on it.",
    )
    if not cols[1].button("Import as a dataset", key=f"{key}_go", icon=":material/input:"):
        return
    name = (typed or "").strip() or suggested
    try:
        with (
            st.spinner(f"Copying {md_escape(display_name(source), inline=True)}…"),
            datasets.create(name, source) as ds,
        ):
            info = ds.show()
    except StudioError as exc:
        widgets.show_error(exc)
        return
    _note(
        "success",
        f"Imported **{md_escape(info['name'], inline=True)}**: {info['images']} images in "
        f"{len(info['classes'])} classes.",
    )
    _show_dataset(info["name"])
    st.rerun()


def _import_section(chosen: str | None) -> None:
    from core.data.builtin import list_builtins
    from core.data.names import display_name

    st.markdown("**Or import data you have as a dataset you can edit**")
    candidates = [chosen] if chosen and not chosen.startswith("dataset:") else []
    builtins = sorted((b["source"] for b in list_builtins()), key=lambda s: s != DEFAULT_DATA)
    candidates += [s for s in builtins if s not in candidates]  # the default set first
    # The data in use is offered first; nothing else is chosen for the user (a preselected
    # built-in read as if it were theirs).
    source = st.selectbox(
        "Data to import",
        candidates,
        index=0 if chosen and candidates and candidates[0] == chosen else None,
        placeholder="Choose the data to import…",
        format_func=lambda s: f"{display_name(s)} (in use)" if s == chosen else display_name(s),
        key="builder_import_source",
        help="The data in use (a folder, zip or Kaggle dataset chosen on the other tabs) or a "
        "built-in set. To import another folder, zip or Kaggle dataset, pick it on its tab and "
        "use its Import button.",
    )
    if source:
        import_source(source, "builder_import")


# --------------------------------------------------------------------------- the dataset


def render(chosen: str | None) -> None:
    """The whole "Your dataset" tab (``chosen``: the data in use)."""
    names = datasets.dataset_names()
    if st.session_state.get(PICK) not in [NEW, *names]:
        in_use = datasets.parse_dataset_source(chosen or "")
        st.session_state[PICK] = in_use if in_use in names else (names[0] if names else NEW)
    name = st.selectbox(
        "Dataset",
        [NEW, *names],
        format_func=lambda n: "➕ New dataset…" if n == NEW else escape_unprintable(n),
        key=PICK,
    )
    _show_notes()
    if name == NEW:
        cols = st.columns([3, 1], vertical_alignment="bottom")
        cols[0].text_input(
            "Name",
            placeholder="e.g. my plants",
            key="builder_new_name",
            max_chars=datasets.MAX_NAME,
        )
        cols[1].button(
            "Create",
            key="builder_create",
            type="primary",
            icon=":material/add:",
            on_click=_create,
            args=("builder_new_name",),
        )
        _import_section(chosen)
        return
    try:
        with datasets.open_dataset(name) as ds:
            info = ds.show()
            repaired = ds.notices  # an interrupted edit finished, a lost index restored...
    except StudioError as exc:
        widgets.show_error(exc)
        return
    for text in repaired:
        st.warning(md_escape(text))
    _overview(info, chosen)
    _missing(info)
    _classes(info)
    _add_images(info)


def _overview(info: dict[str, Any], chosen: str | None) -> None:
    name, source = info["name"], views.dataset_source(info["name"])
    m = st.columns([1, 1, 1, 3], vertical_alignment="bottom")
    m[0].metric("Classes", len(info["classes"]))
    m[1].metric("Images", info["images"])
    m[2].metric("Excluded", info["excluded"], help="Set aside, never deleted: Undo restores them")
    row = m[3].container(horizontal=True)
    in_use = chosen == source
    if row.button(
        "In use" if in_use else "Use this dataset",
        key="builder_use",
        type="primary",
        # Nothing to train on before the dataset has images (and so classes).
        disabled=in_use or not info["images"],
        icon=":material/check:",
        help=None if info["images"] else "Add classes and their images first",
    ):
        # The Data page's split and seed (its widgets' defaults: a run's own).
        split = float(st.session_state.get("val_split", RunConfig.val_split))
        if loaders.fetch_data(source, split, int(st.session_state.get("seed", RunConfig.seed))):
            navigation.choose_data(source)
            st.rerun()
    last = views.last_edit(info["edits"])
    row.button(
        "Undo" if last is None else f"Undo: {md_escape(last['summary'], inline=True)}",
        key="builder_undo",
        icon=":material/undo:",
        disabled=last is None,
        on_click=_on_edit,
        args=(name, _undo),
        help="Reverts the last edit of this dataset (by anyone); nothing is ever deleted",
    )


def _missing(info: dict[str, Any]) -> None:
    """Images whose file was removed outside the studio: named, and forgotten on request."""
    missing = info["missing"]
    if not missing:
        return
    names = ", ".join(md_escape(m["original_name"], inline=True) for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    row = st.container(horizontal=True, vertical_alignment="center")
    row.warning(
        f"{len(missing)} image{'s are' if len(missing) != 1 else ' is'} missing from the "
        f"dataset's folder (removed outside the studio): {names}{more}. They are not counted "
        "or trained on."
    )
    row.button(
        "Forget missing images",
        key="builder_forget_missing",
        icon=":material/delete_sweep:",
        on_click=_on_edit,
        args=(info["name"], _forget_missing),
        help="Drops them from the dataset as one edit; Undo brings them back",
    )


def _forget_missing(ds: datasets.Dataset) -> str:
    n = len(ds.forget_missing())
    return f"Forgot {n} missing image{'s' if n != 1 else ''} (Undo brings them back)."


def _undo(ds: datasets.Dataset) -> str:
    done = ds.undo()
    return f"Undone: {md_escape(done['summary'], inline=True)}." if done else "Nothing to undo."


def _classes(info: dict[str, Any]) -> None:
    name = info["name"]
    st.markdown("**Classes**")
    if not info["classes"]:
        st.caption("No class yet: name the first one below (e.g. cats), then add its images.")
    deleting = st.session_state.get(DELETING)
    for row in info["classes"]:
        cls, count = row["name"], row["images"]
        cols = st.columns([3, 1, 1, 1], vertical_alignment="center")
        cols[0].markdown(f"**{md_escape(cls, inline=True)}**")
        cols[1].markdown(f"{count} image{'s' if count != 1 else ''}")
        with cols[2].popover("Rename", icon=":material/edit:"):
            st.text_input(
                "New name",
                value=cls,
                key=f"builder_rename_{name}_{cls}",
                max_chars=datasets.MAX_NAME,
            )
            st.button(
                "Save", key=f"builder_rename_go_{name}_{cls}", on_click=_rename, args=(name, cls)
            )
        cols[3].button(
            "Delete",
            key=f"builder_delete_{name}_{cls}",
            icon=":material/delete:",
            on_click=st.session_state.__setitem__,
            args=(DELETING, (name, cls)),
        )
        if deleting == (name, cls):
            _confirm_delete(name, cls, count)
    cols = st.columns([3, 1], vertical_alignment="bottom")
    cols[0].text_input(
        "New class", placeholder="e.g. cats", key="builder_class_name", max_chars=datasets.MAX_NAME
    )
    cols[1].button(
        "Add class",
        key="builder_add_class",
        icon=":material/add:",
        on_click=_add_class,
        args=(name,),
    )


def _add_class(name: str) -> None:
    typed = str(st.session_state.get("builder_class_name") or "")

    def add(ds: datasets.Dataset) -> str:
        added = ds.add_class(typed)
        return f"Added class **{md_escape(added, inline=True)}**."

    if _edit(name, add):
        st.session_state["builder_class_name"] = ""  # kept as typed on an error


def _rename(name: str, cls: str) -> None:
    typed = str(st.session_state.get(f"builder_rename_{name}_{cls}") or "")

    def rename(ds: datasets.Dataset) -> str:
        new = ds.rename_class(cls, typed)
        old, shown = md_escape(cls, inline=True), md_escape(new, inline=True)
        return f"Renamed class **{old}** to **{shown}**."

    if _edit(name, rename) and st.session_state.get(TARGET) == cls:
        st.session_state.pop(TARGET, None)


def _runs_on(source: str) -> int:
    from core.paths import runs_root
    from core.runs.store import RunStore

    try:
        return len(views.runs_using(RunStore(runs_root(), recover=False).list_runs(), source))
    except StudioError:
        return 0


def _confirm_delete(name: str, cls: str, count: int) -> None:
    runs = _runs_on(views.dataset_source(name))
    st.warning(views.delete_warning(cls, count, runs))
    row = st.container(horizontal=True)

    def delete(ds: datasets.Dataset) -> str:
        n = ds.delete_class(cls)
        st.session_state.pop(DELETING, None)
        return f"Deleted class **{md_escape(cls, inline=True)}** ({n} images set aside)."

    row.button(
        "Yes, delete it",
        key="builder_delete_yes",
        type="primary",
        icon=":material/delete_forever:",
        on_click=_on_edit,
        args=(name, delete),
    )
    row.button(
        "Cancel", key="builder_delete_no", on_click=st.session_state.pop, args=(DELETING, None)
    )


# --------------------------------------------------------------------------- adding images


def add_uploads(name: str, cls: str, uploads: Sequence[Any]) -> dict[str, Any] | None:
    """Add the uploads not added yet (``UploadedFile``-likes: ``file_id``, ``name``,
    ``getvalue()``) to class ``cls``; the ``AddResult`` as JSON, or None if none was new.

    An uploader keeps its files across reruns: each file is added once per session.
    """
    done: set[str] = st.session_state.setdefault(ADDED, set())
    new = [u for u in uploads if u is not None and u.file_id not in done]
    if not new:
        return None
    try:
        with datasets.open_dataset(name) as ds:
            result = ds.add_images(cls, [(u.name, u.getvalue()) for u in new]).to_json()
    except StudioError as exc:
        _note("error", md_escape(str(exc)), ADD_NOTES)
        return None
    done.update(u.file_id for u in new)
    for notice in views.add_notices(cls, result):
        _note(notice.level, notice.text, ADD_NOTES)  # shown by the uploaders, not at the top
    st.session_state[PROBLEMS] = views.add_problem_rows(result)
    _data_changed()
    return result


def _add_images(info: dict[str, Any]) -> None:
    name = info["name"]
    st.markdown("**Add images**")
    counts = {row["name"]: row["images"] for row in info["classes"]}
    if not counts:
        st.caption("Add a class first: images always go into a class.")
        return
    if st.session_state.get(TARGET) not in counts:
        st.session_state[TARGET] = next(iter(counts))
    # Plain names as options: a label with the count would change with every add, and a
    # select box whose options change is reset to its first option.
    cls = st.selectbox("To class", list(counts), key=TARGET)
    left, right = st.columns(2)
    files = left.file_uploader(
        "Drop images (many at once)",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key=f"builder_files_{name}_{cls}",
    )
    folder = right.file_uploader(
        "Or a whole folder",
        type=UPLOAD_TYPES,
        accept_multiple_files="directory",
        key=f"builder_folder_{name}_{cls}",
        help="Its images (and those of its sub-folders) go into this class",
    )
    if add_uploads(name, cls, [*(files or []), *(folder or [])]) is not None:
        st.rerun()  # the counts above include what was just added
    _show_notes(ADD_NOTES)  # above the camera: its preview is tall
    if rows := st.session_state.get(PROBLEMS):
        with st.expander(f"Files not added ({len(rows)})", expanded=True):
            st.dataframe(rows, hide_index=True, width="stretch")
    if st.toggle("Take pictures with the camera", key="builder_camera_on"):
        n = st.session_state.setdefault(CAMERA_N, 0)
        shot = st.camera_input(
            f"Take a picture for {md_escape(cls, inline=True)}",
            key=f"builder_camera_{n}",
            width=420,  # a preview, not the whole column
            help="The picture shows here first: Keep adds it to the class, Retake discards it.",
        )
        st.caption(
            "No picture? If the browser blocked the camera, allow it for this site (the camera "
            "icon in the address bar) and reload the page, or drop image files above instead."
        )
        if shot is not None:
            # Nothing is added before the user has seen the frame and chosen to keep it.
            row = st.container(horizontal=True)
            keep = row.button(
                f"Keep: add to {cls}",
                key=f"builder_camera_keep_{n}",
                type="primary",
                icon=":material/check:",
            )
            retake = row.button(
                "Retake", key=f"builder_camera_retake_{n}", icon=":material/replay:"
            )
            if keep and add_uploads(name, cls, [shot]) is not None:
                st.session_state[CAMERA_N] = n + 1  # a fresh camera: the next click, a new one
                st.rerun()
            if retake:
                st.session_state[CAMERA_N] = n + 1  # the frame is dropped, never added
                st.rerun()
        _show_notes(ADD_NOTES)  # an error adding the picture


# --------------------------------------------------------------------------- from Predict


def add_to_dataset(
    data: bytes, file_name: str, run_data: str | None, predicted: str | None, key: str
) -> None:
    """Predict's "Add to dataset…" for one image (play and correct, as in Lobe): the dataset
    defaults to the run's own (or its source's editable copy), the class to the prediction.
    Nothing is drawn while no managed dataset exists."""
    names = datasets.dataset_names()
    if not names:
        return
    own = datasets.parse_dataset_source(run_data or "")
    if own is None and run_data:  # a run on a folder, zip…: its editable copy, if review made one
        own = datasets.find_copy(run_data)
    with st.popover("Add to dataset…", icon=":material/add_photo_alternate:"):
        name = st.selectbox(
            "Dataset", names, index=names.index(own) if own in names else 0, key=f"{key}_ds"
        )
        try:
            with datasets.open_dataset(name) as ds:
                classes = ds.classes()
        except StudioError as exc:
            widgets.show_error(exc)
            return
        if not classes:
            st.caption("This dataset has no class yet: add one on the Data page.")
            return
        index = classes.index(predicted) if predicted in classes else 0
        cls = st.selectbox("Class", classes, index=index, key=f"{key}_cls_{name}")
        if not st.button("Add", key=f"{key}_add", type="primary", icon=":material/add:"):
            return
        try:
            with datasets.open_dataset(name) as ds:
                result = ds.add_images(cls, [(file_name, data)]).to_json()
        except StudioError as exc:
            widgets.show_error(exc)
            return
        _data_changed()
        for notice in views.add_notices(cls, result):
            {"success": st.success, "warning": st.warning}.get(notice.level, st.info)(notice.text)
        for row in views.add_problem_rows(result):
            st.caption(md_escape(f"{row['file']}: {row['why']}"))
