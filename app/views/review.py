"""Pure shaping of managed-dataset and review data for the pages (no Streamlit here).

``app.data.dataset_builder`` (the Data page's "Your dataset") and ``app.run.review_panel`` (the Run
page's Review) draw what these functions return; tests call them directly. Every user-made name
(classes, datasets, files) goes through ``md_escape`` where Markdown renders it and through
``plotly_text`` inside figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.views.text import md_escape, plotly_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from core.training.review import MapPoint, Review, Suspect

MAX_LISTED_IDS = 8  # image ids spelled out in a new/gone warning before "…"
# Classes the review shows at first: 200 classes x 4 cards drew 800 thumbnails, each with a
# relabel box of 200 classes (18 s in a browser); the most suspicious ten come first.
CLASSES_SHOWN = 10
COMPARE_PARAM = "runs"  # the Compare page's query parameter: run ids to preselect, comma-joined


@dataclass(frozen=True)
class Notice:
    """One message for the page: ``level`` is "info", "success", "warning" or "error";
    ``text`` is Markdown with every user-made name escaped."""

    level: str
    text: str


# --------------------------------------------------------------------------- names


def free_name(base: str, taken: Iterable[str]) -> str:
    """``base``, or ``base 2``, ``base 3``… whichever no dataset has yet (case-insensitively):
    the default name offered when importing a source, so the first click works."""
    used = {name.casefold() for name in taken}
    if base.casefold() not in used:
        return base
    n = 2
    while f"{base} {n}".casefold() in used:
        n += 1
    return f"{base} {n}"


def not_in_use_hint(your_dataset: bool, datasets: int) -> str:
    """The Data page's hint while no data is in use: on "Your dataset" with no dataset yet, make
    one first (there is nothing to use); elsewhere pick a source and use it."""
    if not your_dataset:
        return "Pick a source and click **Use this data**. The Train page will use it."
    if not datasets:
        return (
            "Create a dataset above (name it, then add classes and images), or import data you "
            "have; then click **Use this dataset**. The Train page will use it."
        )
    return "Pick a dataset and click **Use this dataset**. The Train page will use it."


def dataset_source(name: str) -> str:
    """The data source string of managed dataset ``name``."""
    return f"dataset:{name}"


# --------------------------------------------------------------------------- adding images


def add_notices(label: str, result: Mapping[str, Any]) -> list[Notice]:
    """What an ``AddResult`` (its ``to_json()``) means, in one to three messages."""
    shown = md_escape(label, inline=True)
    added, dups, skipped = (len(result.get(k) or []) for k in ("added", "duplicates", "skipped"))
    notices = []
    if added:
        s = "s" if added != 1 else ""
        notices.append(Notice("success", f"Added {added} image{s} to **{shown}**."))
    if dups:
        s, verb = ("s", "were") if dups != 1 else ("", "was")
        notices.append(
            Notice(
                "info",
                f"{dups} exact duplicate{s} {verb} not added again (the same picture is already "
                "in the dataset): see the list below.",
            )
        )
    if skipped:
        s = "s" if skipped != 1 else ""
        notices.append(
            Notice("warning", f"Skipped {skipped} file{s} that cannot be used: reasons below.")
        )
    if not notices:
        notices.append(Notice("info", "No file was given."))
    return notices


def add_problem_rows(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows for a table of the files not added: file, what happened, why (plain text cells)."""
    rows = [
        {"file": str(d.get("path", "")), "what": "duplicate", "why": str(d.get("reason", ""))}
        for d in result.get("duplicates") or []
    ]
    rows += [
        {"file": str(s.get("path", "")), "what": "skipped", "why": str(s.get("reason", ""))}
        for s in result.get("skipped") or []
    ]
    return rows


def last_edit(edits: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The edit ``undo`` would revert: the newest not undone yet, else None."""
    return next((e for e in reversed(edits) if not e.get("undone")), None)


def runs_using(runs: Iterable[Mapping[str, Any]], source: str) -> list[Mapping[str, Any]]:
    """The recorded runs trained on ``source``."""
    return [r for r in runs if (r.get("data") or "").strip() == source]


def delete_warning(name: str, count: int, runs: int) -> str:
    """The confirmation text for deleting a class (Markdown, the name escaped)."""
    shown = md_escape(name, inline=True)
    images = f"its {count} image{'s' if count != 1 else ''}" if count else "it (no images)"
    kept = (
        f" {runs} run{'s' if runs != 1 else ''} trained on this dataset keep their model and "
        "labels and stay usable."
        if runs
        else " Runs trained on this dataset keep their model and labels."
    )
    return (
        f"Delete class **{shown}**? {images.capitalize()} are set aside, not deleted: "
        f"**Undo** brings the class back with them.{kept}"
    )


# --------------------------------------------------------------------------- review


def suspect_caption(suspect: Suspect) -> str:
    """``given cats · predicted dogs 87%`` (Markdown, names escaped)."""
    given = md_escape(suspect.label, inline=True)
    predicted = md_escape(suspect.predicted, inline=True)
    kept = " · kept" if suspect.reviewed else ""
    return f"given **{given}** · predicted **{predicted}** {suspect.confidence:.0%}{kept}"


def target_notice(source: str, dataset: str | None) -> Notice:
    """Where review edits go: the run's own managed dataset, its managed copy, or (before the
    first edit of an unmanaged source) the copy the first edit will make."""
    from core.data.names import display_name

    shown = md_escape(display_name(source), inline=True)
    if source.strip().lower().startswith("dataset:"):
        return Notice("info", f"Edits go to your dataset **{md_escape(dataset or '')}**.")
    if dataset:
        return Notice(
            "info",
            f"Edits go to dataset **{md_escape(dataset, inline=True)}**, a copy of **{shown}**; "
            "the original is not changed.",
        )
    return Notice(
        "info",
        f"Your first edit makes an editable copy of **{shown}** (a dataset of your own); the "
        "original is never changed.",
    )


def _ids(ids: Sequence[str]) -> str:
    listed = ", ".join(ids[:MAX_LISTED_IDS])
    more = len(ids) - MAX_LISTED_IDS
    return listed + (f" … and {more} more" if more > 0 else "")


def change_notices(review: Review) -> list[Notice]:
    """Warnings when the dataset changed since the run trained: images new or gone."""
    out = []
    where = md_escape(review.dataset or "the data", inline=True)
    if review.new_images:
        n = len(review.new_images)
        out.append(
            Notice(
                "warning",
                f"{n} image{'s' if n != 1 else ''} in {where} {'are' if n != 1 else 'is'} new "
                f"since this run trained (not scored; retrain to include them): "
                f"{_ids(review.new_images)}.",
            )
        )
    if review.gone_images:
        n = len(review.gone_images)
        out.append(
            Notice(
                "warning",
                f"{n} image{'s' if n != 1 else ''} this run trained on {'are' if n != 1 else 'is'} "
                f"no longer in use in {where} (excluded or removed): {_ids(review.gone_images)}.",
            )
        )
    return out


def retrain_key(run_id: str, edits: Sequence[Mapping[str, Any]]) -> str:
    """The queue's idempotency key of "Retrain with these fixes": one run per run and state of
    the edits (a double click queues one; more fixes, then another click, queue another)."""
    done = [e for e in edits if not e.get("undone")]
    return f"retrain-{run_id}-{len(edits)}-{done[-1]['seq'] if done else 0}"


# --------------------------------------------------------------------------- the embedding map

CORRECT_SYMBOL, WRONG_SYMBOL = "circle", "x"


def map_figure(points: Sequence[MapPoint], title: str = "") -> go.Figure:
    """The embedding map: one trace per label (its colour), misclassified images drawn as ✕ in
    a trace of their own per label; each point's ``customdata`` is its image id."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    # Colours set per label: the dashboard theme's colorway is shades of one hue, which made two
    # classes look alike. Beyond the palette's 24 colours they repeat (the legend tells).
    palette = qualitative.Dark24
    figure = go.Figure()
    labels = sorted({p.label for p in points})
    for i, label in enumerate(labels):
        for correct in (True, False):
            group = [p for p in points if p.label == label and p.correct == correct]
            if not group:
                continue
            figure.add_trace(
                go.Scatter(
                    x=[p.x for p in group],
                    y=[p.y for p in group],
                    mode="markers",
                    name=plotly_text(label if correct else f"{label} · misclassified"),
                    legendgroup=plotly_text(label),
                    customdata=[p.image for p in group],
                    # hover values are data, not template: names escaped, no %{...} from users
                    text=[plotly_text(f"{p.label} → {p.predicted} ({p.split})") for p in group],
                    hovertemplate="%{text}<extra></extra>",
                    marker={
                        "symbol": CORRECT_SYMBOL if correct else WRONG_SYMBOL,
                        "color": palette[i % len(palette)],
                        "size": 7 if correct else 11,
                        "line": {"width": 0 if correct else 1.5},
                    },
                )
            )
    figure.update_layout(
        title=plotly_text(title) if title else None,
        height=420,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        dragmode="select",  # a drag picks a box of points (lasso is in the toolbar)
        xaxis={"showticklabels": False, "title": None},
        yaxis={"showticklabels": False, "title": None},
        legend={"itemclick": "toggle"},
    )
    return figure


def selected_images(selection: Any) -> list[str]:
    """Image ids of the points picked on the map (``st.plotly_chart(on_select=...)``'s state),
    in the order picked, each once."""
    if not selection:
        return []
    chosen = selection.get("selection") if isinstance(selection, Mapping) else None
    if chosen is None:
        chosen = getattr(selection, "selection", None) or {}
    points = chosen.get("points") if isinstance(chosen, Mapping) else getattr(chosen, "points", [])
    ids: dict[str, None] = {}
    for point in points or []:
        data = point.get("customdata") if isinstance(point, Mapping) else None
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str) and data:
            ids[data] = None
    return list(ids)


def classes_shown_text(shown: int, total: int) -> str:
    """``"The 10 classes with the most suspicious images, of 200: raise Classes to see more."``;
    empty when every class is shown."""
    if shown >= total:
        return ""
    return (
        f"The {shown:,} classes with the most suspicious images, of {total:,}: raise "
        "**Classes** to see more."
    )


def map_sample_text(drawn: int, scored: int, classes: int) -> str:
    """What the map shows when it is a sample: ``"Showing 5,000 of 50,000 images (a stratified
    sample: every one of the 200 classes represented)."``; empty when it draws every image."""
    if scored <= drawn:
        return ""
    return (
        f"Showing {drawn:,} of {scored:,} images (a stratified sample: every one of the "
        f"{classes:,} classes represented)."
    )


def map_counts(points: Sequence[MapPoint]) -> str:
    """One caption line: how many images, how many misclassified."""
    wrong = sum(1 for p in points if not p.correct)
    return (
        f"{len(points)} images · {wrong} misclassified (✕). Drag a box around points (or pick the "
        "lasso in the chart's toolbar) to see those images."
    )


# --------------------------------------------------------------------------- compare link


def compare_param(run_ids: Sequence[str]) -> str:
    """The Compare page's ``runs`` query value for ``run_ids``."""
    return ",".join(run_ids)


def compare_preselection(value: str | Sequence[str] | None, known: Sequence[str]) -> list[str]:
    """Run ids from the ``runs`` query value (or a list) that the Compare page can show."""
    if not value:
        return []
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    wanted = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    return [run_id for run_id in wanted if run_id in known]


def pending_runs(value: str | Sequence[str] | None, known: Sequence[str]) -> list[str]:
    """Run ids asked for in the ``runs`` query value that are not (yet) comparable."""
    if not value:
        return []
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    return [p.strip() for p in dict.fromkeys(parts) if p.strip() and p.strip() not in known]


# --------------------------------------------------------------------------- review cards


@dataclass(frozen=True)
class Card:
    """One image with the review actions: from a suspect (with its confidence) or a map point."""

    image: str
    path: str
    label: str
    predicted: str
    caption: str


def card_from_suspect(suspect: Suspect) -> Card:
    """A suspect as a card (caption: given, predicted, confidence)."""
    return Card(
        suspect.image, suspect.path, suspect.label, suspect.predicted, suspect_caption(suspect)
    )


def cards_for(
    ids: Sequence[str], suspects: Sequence[Suspect], points: Sequence[MapPoint]
) -> list[Card]:
    """Cards of the images picked on the map: the review's suspect where there is one (it
    carries the confidence and the current label), else the map point."""
    by_suspect = {s.image: s for s in suspects}
    by_point = {p.image: p for p in points}
    cards = []
    for image in ids:
        if image in by_suspect:
            cards.append(card_from_suspect(by_suspect[image]))
        elif image in by_point:
            p = by_point[image]
            given, predicted = md_escape(p.label, inline=True), md_escape(p.predicted, inline=True)
            caption = f"given **{given}** · predicted **{predicted}**"
            cards.append(Card(p.image, p.path, p.label, p.predicted, caption))
    return cards


def relabel_options(classes: Sequence[str], card: Card) -> tuple[list[str], int | None]:
    """Classes to relabel ``card`` to (all but its own label) and the one preselected: the
    prediction when the model disagrees with the label, else none (``None``): where the model
    agrees, a preselected class would move a correct image in one click."""
    options = [c for c in classes if c != card.label]
    return options, options.index(card.predicted) if card.predicted in options else None


def edit_note(action: str, file_name: str, to: str = "") -> str:
    """What one review edit did, naming the image by its file name (Markdown, names escaped)."""
    shown = f"**{md_escape(file_name, inline=True)}**"
    if action == "relabel":
        return f"Relabelled {shown} to **{md_escape(to, inline=True)}**."
    if action == "exclude":
        return f"Excluded {shown} (set aside, never deleted: **Undo** restores it)."
    return f"Kept {shown} as labelled (listed last from now on)."


REVIEW_FOOTNOTE = (
    "How these are found: every image is scored by a classifier that did not train on it "
    "(training images by classifiers fitted on the other training images, validation images by "
    "this run's model); the images least likely to carry their label are listed first."
)
