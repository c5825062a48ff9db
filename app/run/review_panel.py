"""The Run page's Review: the images a finished run finds most suspicious, fixed in place.

Per class the top suspects (thumbnail, given label, predicted label, confidence), for the ten
classes with the most suspicious images first (**Classes** shows more), with
**Relabel to…**, **Exclude** and **Keep**; **Undo**; "Retrain with these fixes" queues the same
RunConfig on the edited dataset and links to Compare with both runs; an embedding map (colour =
label, ✕ = misclassified) whose selected points list their images with the same actions.

Edits go to a managed dataset (``core.training.review.edit_target``): the run's own
``dataset:NAME``, or for any other source a managed copy made on the first edit (the page says so;
the original is never changed). Scores and maps come from ``core.training.review``; the shaping
for display is in ``app.views.review``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from app import loaders, navigation, widgets
from app.views import review as views
from app.views.text import md_escape
from core.errors import StudioError

if TYPE_CHECKING:
    from core.runs.store import RunResult, RunStore
    from core.training.jobs import JobQueue
    from core.training.review import Review

NOTES = "review_notes"  # session key: (level, markdown) messages of the last action
RETRAINED = "review_retrained"  # session key: {run id: the run "Retrain with these fixes" queued}
PER_ROW = 4  # cards per row: 4 thumbnails fit the main column at 1280 px


def _note(level: str, text: str, image: str | None = None) -> None:
    """One message for the next draw; ``image``: the path of the picture it is about."""
    st.session_state.setdefault(NOTES, []).append((level, text, image))


def _show_notes() -> None:
    for level, text, image in st.session_state.pop(NOTES, []):
        show = {"success": st.success, "warning": st.warning, "error": st.error}.get(level, st.info)
        if not image:
            show(text)
            continue
        # The picture beside its message: a file name alone does not say which photo it was.
        thumb, message = st.columns([1, 9], vertical_alignment="center")
        try:
            thumb.image(loaders.thumbnail(image, 64), width=64)
        except StudioError:  # moved since: the message still names it
            pass
        with message:
            show(text)


def _act(store: RunStore, run_id: str, action: str, card: views.Card, widget: str) -> None:
    """``on_click`` of Relabel / Exclude / Keep: one edit of the run's edit target (a managed
    copy of an unmanaged source is made here, on the first edit, and the page says so)."""
    from core.data.datasets import open_dataset
    from core.training.review import edit_target

    image, file_name, path = card.image, Path(card.path).name or card.image, card.path
    try:
        name, made = edit_target(store, run_id)
        with open_dataset(name) as ds:
            if action == "relabel":
                to = str(st.session_state.get(widget) or "")
                if not to:
                    _note("warning", "Choose the class to move the image to first.")
                    return
                ds.relabel([image], to)
            elif action == "exclude":
                ds.exclude([image])
                to = ""
            else:
                ds.mark_reviewed([image])
                to = ""
            # The name the user gave the file (stored files are named by content) and where it
            # is now (a relabel moves it): what the message shows.
            info = next((i for i in ds.images() if i.id == image), None)
            if info is not None:
                file_name, path = info.original_name or file_name, info.path
    except StudioError as exc:
        _note("error", md_escape(str(exc)))
        return
    if made:
        result = store.result(run_id)
        from core.data.names import display_name

        _note(
            "info",
            f"Made dataset **{md_escape(name, inline=True)}**, an editable copy of "
            f"**{md_escape(display_name(result['data']), inline=True)}**: edits go there; the "
            "original is not changed.",
        )
    _note("success", views.edit_note(action, file_name, to), path)
    loaders.load_data.clear()  # the Data and Train pages must not show the old scan
    loaders.data_health.clear()


def _undo(name: str) -> None:
    from core.data.datasets import open_dataset

    try:
        with open_dataset(name) as ds:
            done = ds.undo()
    except StudioError as exc:
        _note("error", md_escape(str(exc)))
        return
    text = f"Undone: {md_escape(done['summary'], inline=True)}." if done else "Nothing to undo."
    _note("success", text)
    loaders.load_data.clear()
    loaders.data_health.clear()


def cards(
    store: RunStore, run_id: str, items: Sequence[views.Card], classes: Sequence[str], where: str
) -> None:
    """Thumbnails with relabel-to, exclude and keep, ``PER_ROW`` to a row. ``where`` keeps the
    widget keys of the suspects and the map's selection apart (an image can be in both)."""
    for start in range(0, len(items), PER_ROW):
        for col, card in zip(st.columns(PER_ROW), items[start : start + PER_ROW], strict=False):
            with col.container(border=True):
                try:
                    st.image(loaders.thumbnail(card.path, 160), width="stretch")
                except StudioError:  # the file moved since it was scored
                    st.caption("(image file not found)")
                st.markdown(card.caption)
                options, index = views.relabel_options(classes, card)
                to_key = f"review_{where}_to_{card.image}"
                # No preselected class where the model agrees with the label: a choice first.
                chosen = st.selectbox(
                    "Relabel to",
                    options,
                    index=index,
                    key=to_key,
                    label_visibility="collapsed",
                    disabled=not options,
                    placeholder="Relabel to…",
                )
                st.button(
                    "Relabel",
                    key=f"review_{where}_relabel_{card.image}",
                    disabled=not options or chosen is None,
                    on_click=_act,
                    args=(store, run_id, "relabel", card, to_key),
                    help="Move it to the class chosen above",
                    width="stretch",
                )
                left, right = st.columns(2, gap="small")
                left.button(
                    "Exclude",
                    key=f"review_{where}_exclude_{card.image}",
                    on_click=_act,
                    args=(store, run_id, "exclude", card, ""),
                    help="Set it aside (not deleted; Undo restores it)",
                    width="stretch",
                )
                right.button(
                    "Keep",
                    key=f"review_{where}_keep_{card.image}",
                    on_click=_act,
                    args=(store, run_id, "keep", card, ""),
                    help="The label is right: mark it reviewed",
                    width="stretch",
                )


def _classes(review: Review, result: RunResult) -> list[str]:
    """The classes images can be relabelled to: the edit target's now, else the run's."""
    if review.dataset:
        from core.data.datasets import open_dataset

        try:
            with open_dataset(review.dataset) as ds:
                return ds.classes()
        except StudioError:
            pass
    return list(result["class_names"])


def _edits(name: str | None) -> list[dict[str, Any]]:
    if not name:
        return []
    from core.data.datasets import open_dataset

    try:
        with open_dataset(name) as ds:
            return ds.edits()
    except StudioError:
        return []


def _retrain(queue: JobQueue, run_id: str, review: Review) -> None:
    """Queue the same RunConfig on the edited dataset, once per state of the edits."""
    from core.training.review import retrain_config

    try:
        config = retrain_config(queue.store, run_id)
        new_id = queue.submit(config, key=views.retrain_key(run_id, _edits(review.dataset)))
    except StudioError as exc:
        widgets.show_error(exc)
        return
    st.session_state.setdefault(RETRAINED, {})[run_id] = new_id
    st.session_state[navigation.RUN_ID] = new_id  # the Train page's monitor follows it


def _retrained(run_id: str) -> None:
    new_id = st.session_state.get(RETRAINED, {}).get(run_id)
    if not new_id:
        return
    st.success(f"Queued run `{new_id}` with these fixes.")
    row = st.container(horizontal=True)
    row.page_link(navigation.TRAIN, label="Watch it train", icon=":material/monitoring:")
    row.page_link(
        navigation.COMPARE,
        label="Compare before and after",
        icon=":material/compare_arrows:",
        query_params={views.COMPARE_PARAM: views.compare_param([run_id, new_id])},
    )


def render(queue: JobQueue, result: RunResult) -> None:
    """The Review section of a finished run (scored on demand: the toggle)."""
    from core.training import review as core_review

    store, run_id = queue.store, result["run_id"]
    st.subheader("Review", divider="gray")
    on = st.toggle(
        "Find likely mistakes",
        key=f"review_on_{run_id}",
        help="Scores every image with this model (once per run) and lists, per class, the "
        "ones it disagrees with most: mislabelled or unusual pictures",
    )
    if not on:
        return
    try:
        with st.spinner("Scoring every image with this model (once per run)…"):
            review = core_review.review_run(store, run_id)
    except StudioError as exc:
        widgets.show_error(exc)
        return
    _show_notes()
    notice = views.target_notice(review.source, review.dataset)
    st.info(notice.text)
    for warning in views.change_notices(review):
        st.warning(warning.text)
    classes = _classes(review, result)
    # Classes with suspects, the most suspicious first (review order).
    ranked = list(core_review.suspects_by_class(review, 1))
    bar = st.columns([1, 1, 1, 2], vertical_alignment="bottom")
    per_class = int(bar[0].number_input("Per class", 1, 24, 4, key=f"review_n_{run_id}"))
    shown = int(
        bar[1].number_input(
            "Classes", 1, max(1, len(ranked)), min(views.CLASSES_SHOWN, max(1, len(ranked))),
            key=f"review_classes_{run_id}",
            help="How many classes to show, the one with the most suspicious image first",
        )
    )  # fmt: skip
    last = views.last_edit(_edits(review.dataset))
    bar[2].button(
        "Undo",
        key=f"review_undo_{run_id}",
        icon=":material/undo:",
        disabled=last is None,
        on_click=_undo,
        args=(review.dataset or "",),
        width="stretch",
        help=f"Reverts: {md_escape(last['summary'], inline=True)}" if last else "Nothing to undo",
    )
    if bar[3].button(
        "Retrain with these fixes",
        key=f"review_retrain_{run_id}",
        type="primary",
        icon=":material/replay:",
        disabled=review.dataset is None,
        width="stretch",
        help="Queues the same settings on the edited dataset; Compare shows before vs after",
    ):
        _retrain(queue, run_id, review)
    _retrained(run_id)
    by_class = core_review.suspects_by_class(review, per_class)
    if not review.suspects:
        st.info("No image left to review: every image the run scored is excluded or fixed.")
    if note := views.classes_shown_text(shown, len(ranked)):
        st.caption(note)
    for cls in ranked[:shown]:
        suspects = by_class.get(cls, [])
        if suspects:
            st.markdown(f"**{md_escape(cls, inline=True)}** · the {len(suspects)} most suspicious")
            cards(store, run_id, [views.card_from_suspect(s) for s in suspects], classes, "s")
    st.caption(views.REVIEW_FOOTNOTE, help=md_escape(review.method))
    _map(store, run_id, review, classes)


def _map(store: RunStore, run_id: str, review: Review, classes: Sequence[str]) -> None:
    from core.training.review import embedding_map

    if not st.toggle("Show the embedding map", key=f"review_map_on_{run_id}"):
        return
    method = (
        st.segmented_control(
            "Projection",
            ["pca", "tsne"],
            default="pca",
            key=f"review_map_method_{run_id}",
            format_func={"pca": "PCA", "tsne": "t-SNE"}.__getitem__,
        )
        or "pca"
    )
    try:
        with st.spinner("Projecting the images' features to 2-D…"):
            emap = embedding_map(store, run_id, method)
    except StudioError as exc:
        widgets.show_error(exc)
        return
    if sample := views.map_sample_text(emap.drawn, emap.scored, emap.classes):
        st.caption(sample)
    st.caption(views.map_counts(emap.points))
    state = st.plotly_chart(
        views.map_figure(emap.points),
        key=f"review_map_{run_id}_{method}",
        on_select="rerun",
        selection_mode=("points", "box", "lasso"),
    )
    ids = views.selected_images(state)
    if ids:
        shown = ids[:24]
        more = f" (the first {len(shown)} shown)" if len(ids) > len(shown) else ""
        st.markdown(f"**{len(ids)} selected image{'s' if len(ids) != 1 else ''}**{more}")
        cards(store, run_id, views.cards_for(shown, review.suspects, emap.points), classes, "m")
