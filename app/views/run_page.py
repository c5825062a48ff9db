"""What the Run page shows about one finished run, kept out of the page so it can be unit-tested.

The run chooser's default, the summary and phase table, the confusion-matrix figure (a heatmap
with an invisible scatter layer on top, because Plotly heatmaps report no points to a selection),
the per-class table, the misclassified gallery and the export's downloads. No Streamlit here.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from app.views.dashboard import best_run_key, format_count, format_duration
from app.views.labels import phase_row
from app.views.text import md_escape, plotly_text
from core.config import RunConfig
from core.errors import StudioError
from core.runs.evaluate import class_probability, misclassified
from core.runs.safe_text import csv_cell
from core.runs.store import COMPLETED, FAILED, INTERRUPTED, STOPPED, RunResult, RunSummary

GALLERY_LIMIT = 24
# Above this many classes the confusion matrix is not drawn: a Plotly heatmap (plus the clickable
# layer over its cells) of 1,000 classes is a million cells, tens of MB of JSON and over a minute
# to build. The page lists the most confused pairs instead and offers the matrix as CSV.
HEATMAP_MAX_CLASSES = 30
TOP_PAIRS = 100  # rows of the most-confused-pairs table
# Up to this many classes the pairs come with an overview heatmap: colours only (no cell text, no
# clickable layer), 200 classes are 40,000 cells and a few hundred kB; 1,000 would be a million.
OVERVIEW_MAX_CLASSES = 300
MATRIX_COLORS = "Blues"
HIGHLIGHT = "#ea580c"  # the selected cell's outline (the charts' validation orange)
_FONT = {"family": "Inter, Segoe UI, Helvetica, Arial, sans-serif", "size": 13}


# --------------------------------------------------------------------------- choosing the run


def pick_run(runs: Sequence[RunSummary], requested: Iterable[str | None] = ()) -> str | None:
    """The run the page opens on: the first requested id that is offered (query parameter, then
    the session's run), else the newest completed run, else the newest offered one."""
    ids = [r["run_id"] for r in runs]
    for run_id in requested:
        if run_id in ids:
            return run_id
    completed = [r["run_id"] for r in runs if r["status"] == COMPLETED]
    offered = completed or ids
    return offered[0] if offered else None


def preselected_model(
    runs: Sequence[RunSummary], data: str | None = None, watched: str | None = None
) -> str | None:
    """The model Predict starts with: the best run (``dashboard.best_run_key``, the rule that
    also names Compare's best) among the completed runs on the data of the run the user just
    watched (``watched``), else on ``data`` (the data in use), else on any data; else the best
    offered run (a stopped one). Never simply the newest (after "Compare all modes" with a
    scratch baseline that is the worst one).
    """

    def best(candidates: Sequence[RunSummary]) -> RunSummary | None:
        return max(candidates, key=best_run_key) if candidates else None

    def on(source: str | None) -> list[RunSummary]:
        wanted = (source or "").strip()
        return [r for r in completed if wanted and (r.get("data") or "").strip() == wanted]

    completed = [r for r in runs if r["status"] == COMPLETED]
    mine = next((r for r in completed if r["run_id"] == watched), None)
    chosen = (
        best(on(mine.get("data")) if mine else [])
        or best(on(data))
        or best(completed)
        or best(runs)
    )
    return chosen["run_id"] if chosen else None


# --------------------------------------------------------------------------- failed runs

RESUMABLE = (STOPPED, INTERRUPTED, FAILED)  # what ``JobQueue.resume`` accepts


def run_actions(
    result: RunResult, weights_available: bool, offline_backbone: tuple[str, str]
) -> dict[str, Any]:
    """What a finished-but-not-completed run offers: ``{"resume": bool, "fixes": [...]}``.

    Resume is offered for stopped and interrupted runs, and for failures a resume can get past.
    A failure it cannot (ImageNet weights that need the network, with none cached:
    ``weights_available`` is False) gets fixes instead: each ``{"label", "help", "config"}``, a
    new run's ``RunConfig`` to queue (the same settings with the one change). ``offline_backbone``
    is ``(name, display name)`` of the backbone whose weights work offline.
    """
    status = result.get("status")
    if status not in RESUMABLE:
        return {"resume": False, "fixes": []}
    raw = result.get("config") or {}
    needs_weights = raw.get("weights") == "imagenet" and raw.get("mode") != "scratch"
    if status != FAILED or not needs_weights or weights_available:
        return {"resume": True, "fixes": []}
    try:
        config = RunConfig.from_dict(dict(raw))
    except StudioError:
        return {"resume": False, "fixes": []}  # nothing sensible to queue: the page says why
    # A fix is a new run: its own name, outside the old run's compare-all-modes group.
    base = config.with_changes(
        name="", extra={k: v for k, v in config.extra.items() if k != "compare_group"}
    )
    fixes = []
    name, title = offline_backbone
    if config.backbone != name:
        fixes.append(
            {
                "label": f"Train again with {title}",
                "help": f"A new run with the same settings on {title}, whose ImageNet weights "
                "work without a network.",
                "config": _offline_copy(base, name),
            }
        )
    fixes.append(
        {
            "label": "Train again without pretrained weights",
            "help": f"A new run of {config.backbone} from random weights (no download needed; "
            "expect a lower accuracy than with ImageNet weights).",
            "config": base.with_changes(weights="none"),
        }
    )
    return {"resume": False, "fixes": fixes}


def _offline_copy(config: RunConfig, backbone: str) -> RunConfig:
    """``config`` on another backbone: its input size kept when that backbone takes it."""
    moved = config.with_changes(backbone=backbone)
    try:
        return moved.validate()
    except StudioError:  # BackboneError, ConfigError
        return moved.with_changes(image_size=None)  # the new backbone's default size


# --------------------------------------------------------------------------- summary


def size_text(size: float | None) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as file managers show); ``"–"`` if unknown."""
    if not isinstance(size, (int, float)) or size < 0:
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # not reached


def run_headline(result: RunResult) -> str:
    """Markdown: backbone, mode and data as badges (their text escaped: shown as typed)."""
    mode = str(result.get("mode") or "").replace("_", " ")
    backbone, mode, data = (
        md_escape(value, inline=True)
        for value in (result.get("backbone"), mode, result.get("data"))
    )
    return (
        f"Backbone :blue-badge[{backbone}] · Mode :violet-badge[{mode}] · Data :gray-badge[{data}]"
    )


def run_summary(result: RunResult) -> list[tuple[str, str]]:
    """``(label, value)`` pairs for the run's headline numbers."""
    acc = result.get("best_val_accuracy")
    size = result.get("model_bytes")
    return [
        ("Best val acc", f"{acc:.3f}" if isinstance(acc, (int, float)) else "–"),
        ("Epochs", f"{result.get('epochs_done') or 0}/{result.get('planned_epochs') or 0}"),
        ("Duration", format_duration(result.get("duration_s"))),
        ("Model size", f"{size / 1e6:.1f} MB" if size else "–"),
    ]


def input_size(config: Mapping[str, Any]) -> int | None:
    """The input size a run's config trains at: its ``image_size``, or when unset the
    backbone's default (what the run used); ``None`` for an unknown backbone."""
    from core.models.backbones import get_backbone

    if config.get("image_size"):
        return int(config["image_size"])
    try:
        return get_backbone(str(config.get("backbone"))).default_size
    except StudioError:
        return None


def run_details(result: RunResult) -> str:
    """Markdown, one line: weights, input size, image counts and the run folder (escaped)."""
    config = result.get("config") or {}
    size = input_size(config) or "?"
    return (
        f"weights {md_escape(config.get('weights'), inline=True)} · "
        f"input {md_escape(size, inline=True)} px · "
        f"{result.get('train_images') or 0} training / {result.get('val_images') or 0} "
        f"validation images · {len(result.get('class_names') or [])} classes · "
        f"folder {md_escape(result.get('run_dir'), inline=True)}"
    )


def phase_rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per training phase: epochs, learning rate, trainable and frozen parameters."""
    return [
        {
            "phase": phase_row(p.get("phase")),
            "epochs": p.get("epochs"),
            "learning rate": p.get("lr"),
            "trainable params": p.get("trainable_params"),
            "frozen params": p.get("non_trainable_params"),
            "trainable": format_count(p.get("trainable_params")),
            # The counts of ``core.training.model.set_phase`` (the preview's own rule); runs
            # recorded before it only have the older keys.
            "frozen": format_count(p.get("frozen_params", p.get("non_trainable_params"))),
            "unfrozen base layers": (
                f"{p.get('trainable_layers', p.get('unfrozen_layers', 0))}"
                f"/{p.get('base_layers', '?')}"
            ),
        }
        for p in result.get("phases") or []
    ]


# --------------------------------------------------------------------------- evaluation


def per_class_rows(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class, then the macro average."""
    rows = [
        {
            "class": row["class"],
            "precision": round(row["precision"], 4),
            "recall": round(row["recall"], 4),
            "f1": round(row["f1"], 4),
            "support": row["support"],
        }
        for row in evaluation["per_class"]
    ]
    macro = evaluation.get("macro_avg")
    if macro:
        rows.append(
            {
                "class": "macro avg",  # as scikit-learn's report says it (fits the narrow table)
                **{k: round(macro[k], 4) for k in ("precision", "recall", "f1")},
                "support": sum(r["support"] for r in rows),
            }
        )
    return rows


def default_cell(evaluation: Mapping[str, Any]) -> tuple[str, str]:
    """The most frequent confusion (largest off-diagonal cell); the first class if none."""
    names = evaluation["class_names"]
    top = top_confused_pairs(names, evaluation["confusion_matrix"], limit=1)
    return (top[0]["true"], top[0]["predicted"]) if top else (names[0], names[0])


def top_confused_pairs(
    class_names: Sequence[str], matrix: Any, limit: int = TOP_PAIRS
) -> list[dict[str, Any]]:
    """The ``limit`` largest off-diagonal cells of a confusion matrix, largest first.

    Each row is ``{true, predicted, count, share}`` where ``share`` is the count over the true
    class's images. Cells with no image are left out (so a class with no validation image, an
    all-zero row, gives none); ties keep row-major order. Vectorised: a 1,000-class matrix takes
    milliseconds.
    """
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(class_names), len(class_names))
    totals = counts.sum(axis=1)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    cells = np.flatnonzero(flat > 0)
    if limit <= 0 or not cells.size:
        return []
    if cells.size > limit:  # only the candidates that can make the top ``limit``
        cut = np.partition(flat[cells], cells.size - limit)[cells.size - limit]
        cells = cells[flat[cells] >= cut]
    order = np.lexsort((cells, -flat[cells]))[:limit]  # count descending, then row-major
    rows = []
    for cell in cells[order]:
        i, j = divmod(int(cell), len(class_names))
        rows.append(
            {
                "true": str(class_names[i]),
                "predicted": str(class_names[j]),
                "count": int(flat[cell]),
                "share": float(flat[cell] / totals[i]),
            }
        )
    return rows


def matrix_csv(class_names: Sequence[str], matrix: Any) -> bytes:
    """The confusion matrix as UTF-8 CSV: a header of predicted classes, a row per true class.
    Class names that start like a formula are kept as text for spreadsheets (``csv_cell``)."""
    out = io.StringIO()
    writer = csv.writer(out)
    names = [csv_cell(str(name)) for name in class_names]
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, np.asarray(matrix, dtype=np.int64).tolist(), strict=True):
        writer.writerow([name, *row])
    return out.getvalue().encode("utf-8")


def matrix_view(
    evaluation: Mapping[str, Any], selected: tuple[str, str] | None = None
) -> dict[str, Any]:
    """How the page shows the confusion matrix, by class count.

    Up to ``HEATMAP_MAX_CLASSES`` classes: ``{"kind": "heatmap", "figure": ...}`` (clickable, see
    ``confusion_matrix_figure``). Above: ``{"kind": "pairs", "pairs": top_confused_pairs(...),
    "figure": None, "overview": ...}`` where ``overview`` is ``overview_figure`` up to
    ``OVERVIEW_MAX_CLASSES`` classes, else None.
    """
    names = evaluation["class_names"]
    if len(names) <= HEATMAP_MAX_CLASSES:
        return {"kind": "heatmap", "figure": confusion_matrix_figure(evaluation, selected)}
    pairs = top_confused_pairs(names, evaluation["confusion_matrix"])
    overview = (
        overview_figure(names, evaluation["confusion_matrix"])
        if len(names) <= OVERVIEW_MAX_CLASSES
        else None
    )
    return {"kind": "pairs", "pairs": pairs, "figure": None, "overview": overview}


def overview_figure(class_names: Sequence[str], matrix: Any) -> go.Figure:
    """The confusion matrix of many classes as colours only: no text in the cells, no tick
    labels (hundreds would overlap), names and counts on hover. Coloured by share of the true
    class, rounded to 0.1 % so the figure stays small."""
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(class_names), len(class_names))
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    share = np.round(counts / totals, 3)
    names = [plotly_text(str(n)) for n in class_names]  # hover text: shown as text, never HTML
    heat = go.Heatmap(
        z=share,
        x=names,
        y=names,
        customdata=counts,
        colorscale=MATRIX_COLORS,
        zmin=0,
        zmax=1,
        showscale=False,
        hovertemplate="true <b>%{y}</b><br>predicted <b>%{x}</b><br>%{customdata} images"
        "<extra></extra>",
    )
    fig = go.Figure(heat)
    fig.update_layout(
        template="plotly_white",
        height=520,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        font=_FONT,
        xaxis={"title": "predicted", "side": "top", "showticklabels": False, "showgrid": False},
        yaxis={"title": "true", "autorange": "reversed", "showticklabels": False,
               "showgrid": False},
    )  # fmt: skip
    return fig


def filter_class_rows(rows: Sequence[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    """The rows of ``per_class_rows`` whose class contains ``query`` (case-insensitive, spaces
    around it ignored); every row for an empty query."""
    needle = query.strip().casefold()
    if not needle:
        return list(rows)
    return [row for row in rows if needle in str(row["class"]).casefold()]


def confusion_matrix_figure(
    evaluation: Mapping[str, Any],
    selected: tuple[str, str] | None = None,
    height: int | None = None,
) -> go.Figure:
    """Heatmap of the confusion matrix: rows true, columns predicted, counts written in the cells.

    A transparent scatter point sits on every cell (``customdata = [true, predicted, count]``) so
    a click selects that cell: Plotly reports no points for heatmap selections. ``selected``
    outlines a cell.
    """
    raw = [str(n) for n in evaluation["class_names"]]
    names = [plotly_text(n) for n in raw]  # axis labels: shown as text, never as HTML
    matrix = evaluation["confusion_matrix"]
    n = len(names)
    height = height or min(max(320, 60 * n + 160), 760)
    totals = [sum(row) or 1 for row in matrix]
    share = [[value / totals[i] for value in row] for i, row in enumerate(matrix)]
    heat = go.Heatmap(
        z=share,  # colour by share of the true class, so rare classes read as well as big ones
        x=names,
        y=names,
        text=matrix,
        texttemplate="%{text}",
        textfont={"size": 14 if n <= 12 else 10},
        colorscale=MATRIX_COLORS,
        zmin=0,
        zmax=1,
        showscale=False,
        hoverinfo="skip",
        xgap=2,
        ygap=2,
    )
    cells = [(i, j) for i in range(n) for j in range(n)]
    picker = go.Scatter(
        x=[names[j] for _, j in cells],
        y=[names[i] for i, _ in cells],
        # raw names: a click reports them back (``cell_from_selection``); the hover shows the
        # escaped ones, composed here so no name is ever part of the template
        customdata=[[raw[i], raw[j], matrix[i][j]] for i, j in cells],
        hovertext=[
            f"true <b>{names[i]}</b><br>predicted <b>{names[j]}</b><br>{matrix[i][j]} images"
            for i, j in cells
        ],
        mode="markers",
        marker={"size": 24, "opacity": 0, "color": HIGHLIGHT},
        selected={"marker": {"opacity": 0}},
        unselected={"marker": {"opacity": 0}},
        hovertemplate="%{hovertext}<extra></extra>",
        showlegend=False,
    )
    fig = go.Figure([heat, picker])
    if selected is not None and selected[0] in raw and selected[1] in raw:
        i, j = raw.index(selected[0]), raw.index(selected[1])
        fig.add_shape(
            type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
            line={"color": HIGHLIGHT, "width": 3}, xref="x", yref="y",
        )  # fmt: skip
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        font=_FONT,
        hovermode="closest",
        hoverdistance=-1,  # any click inside the plot picks the nearest cell centre: its cell
        clickmode="event+select",
        dragmode=False,
        xaxis={"title": "predicted", "side": "top", "type": "category", "showgrid": False},
        yaxis={
            "title": "true",
            "type": "category",
            "autorange": "reversed",
            "showgrid": False,
            "categoryorder": "array",
            "categoryarray": names,
        },
    )
    return fig


def cell_from_selection(
    class_names: Sequence[str], selection: dict[str, Any] | None
) -> tuple[str, str] | None:
    """The ``(true, predicted)`` cell a Plotly selection event picked, if it picked one."""
    points = ((selection or {}).get("selection") or {}).get("points") or []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and len(data) >= 2:
            true, pred = str(data[0]), str(data[1])
        elif point.get("x") is not None and point.get("y") is not None:
            true, pred = str(point["y"]), str(point["x"])
        else:
            continue
        if true in class_names and pred in class_names:
            return true, pred
    return None


def gallery(
    evaluation: Mapping[str, Any], true_class: str, predicted_class: str, limit: int = GALLERY_LIMIT
) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` images of a cell (most confident first), with captions; and the total.

    Each item is ``{path, caption, predicted_p, true_p}``.
    """
    images = misclassified(evaluation, true_class, predicted_class)
    items = []
    for image in images[:limit]:
        predicted_p = class_probability(evaluation, image, predicted_class)
        true_p = class_probability(evaluation, image, true_class)
        caption = f"{predicted_class} {predicted_p:.0%}"
        if true_class != predicted_class:
            caption += f" ({true_class} {true_p:.0%})"
        items.append(
            {
                "path": image["path"],
                "caption": caption,
                "predicted_p": predicted_p,
                "true_p": true_p,
            }
        )
    return items, len(images)


# --------------------------------------------------------------------------- export


def export_message(export: dict[str, Any]) -> str:
    """The success line of a verified export."""
    fmt = export["format"] + (" (dynamic-range quantized)" if export.get("quantized") else "")
    size = export.get("bytes")
    size_text = f"{size / 1e6:.1f} MB" if size else "?"
    runtime = f" in {export['runtime']}" if export.get("runtime") else ""
    latency = export.get("latency_ms_p50")
    speed = f", {latency:.1f} ms per image" if latency is not None else ""
    return (
        f"Exported **{fmt}** ({size_text}) and verified it on {export['verified_images']} "
        f"validation images{runtime}: top-1 agreement "
        f"{export['top1_agreement']:.0%}, largest probability difference "
        f"{export['max_abs_diff']:.2g}{speed}."
    )


def export_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The export benchmark as table rows: the figures a user picks a deployment format from."""
    table = []
    for row in rows:
        latency, accuracy = row.get("latency_ms_p50"), row.get("accuracy")
        table.append(
            {
                "format": row["format"] + (" (dynamic range)" if row.get("quantized") else ""),
                "file": row["file"],
                "size (MB)": round(row["bytes"] / 1e6, 2),
                "latency p50 (ms)": None if latency is None else round(latency, 2),
                "top-1 agreement": f"{row['top1_agreement']:.1%}",
                "accuracy": "–" if accuracy is None else f"{accuracy:.1%}",
                "runtime": row.get("runtime", ""),
                "tolerance": row.get("tolerance", ""),
            }
        )
    return table


def export_downloads(export: dict[str, Any]) -> list[dict[str, str]]:
    """What to offer for download: each file of the export (a folder goes as a zip).

    Each item is ``{label, path, file_name, mime}``; pass ``path`` to ``file_bytes``.
    """
    items = []
    for path in map(Path, export["files"]):
        if path.is_dir():
            items.append(
                {"label": f"{path.name}.zip", "path": str(path),
                 "file_name": f"{path.name}.zip", "mime": "application/zip"}
            )  # fmt: skip
        else:
            mime = {".txt": "text/plain", ".json": "application/json", ".md": "text/markdown",
                    ".png": "image/png"}.get(path.suffix, "application/octet-stream")  # fmt: skip
            items.append(
                {"label": path.name, "path": str(path), "file_name": path.name, "mime": mime}
            )
    return items


def export_zip(files: Iterable[str | Path], top: str) -> bytes:
    """Every exported file (folders with their contents) as one zip, under ``top/``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in map(Path, files):
            if path.is_dir():
                for inner in sorted(path.rglob("*")):
                    if inner.is_file():
                        zf.write(inner, Path(top) / path.name / inner.relative_to(path))
            elif path.is_file():
                zf.write(path, Path(top) / path.name)
    return out.getvalue()


def export_zip_name(result: RunResult | dict[str, Any]) -> str:
    """The "Download all" file name: the run's name made file-safe, then the run id."""
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(result.get("name") or ""))
    name = "-".join(part for part in name.split("-") if part)
    return f"{name or 'run'}-{result['run_id']}-export.zip"


def card_for_page(card: str) -> str:
    """The model card's Markdown for the page: the confusion image (a relative file link in the
    card) is left out, because the page draws its own confusion matrix above."""
    return "\n".join(
        line for line in card.splitlines() if not line.startswith("![Confusion matrix")
    )


def zip_folder(folder: str | Path) -> bytes:
    """A folder as zip bytes, its files under ``<folder name>/``."""
    folder = Path(folder)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    return out.getvalue()


def file_bytes(path: str | Path) -> bytes:
    """The bytes to download for an exported path: the file itself, or a folder zipped."""
    path = Path(path)
    return zip_folder(path) if path.is_dir() else path.read_bytes()
