"""Plotly figures for the dashboard (pure functions: data in, ``go.Figure`` out).

Nothing here touches Streamlit or the run store; the pages pass in what they read from the store
(``RunStore.result`` objects and ``RunStore.batches`` rows) and render the figures they get back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import plotly.graph_objects as go

from app.views.labels import mode_label
from app.views.text import plotly_text
from core.config import Phase
from core.runs.store import BatchRecord, RunResult, RunSummary

TRAIN_COLOR = "#2563eb"  # blue
VAL_COLOR = "#ea580c"  # orange
BATCH_COLOR = "rgba(37, 99, 235, 0.45)"
MARKER_COLOR = "#6b7280"
PALETTE = (
    "#2563eb",
    "#ea580c",
    "#16a34a",
    "#9333ea",
    "#dc2626",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
    "#65a30d",
)
MAX_BATCH_POINTS = 1500  # per-batch curves are thinned to about this many points
LIVE_BATCH_POINTS = 600  # batches a followed run's chart reads (about one per pixel of a panel)
# A followed run's chart polls this often (in a fragment apart from the progress, which polls
# every ``monitor.POLL_SECONDS``): each redraw costs the browser ~0.1-0.2 s of CPU on the cores
# training uses. It is rebuilt only once the run moved on: a new epoch, status, or 1/CURVES_STEPS
# of its planned steps (TensorBoard reloads every 30 s).
CURVES_REFRESH_S = 15.0
CURVES_STEPS = 200
# Epoch curves carry a marker per epoch up to this many epochs; beyond, the markers overlap
# into a thick line and each redraw of hundreds of them costs the browser (a live chart).
MARKED_EPOCHS = 40
_FONT = {"family": "Inter, Segoe UI, Helvetica, Arial, sans-serif", "size": 13}
# Accuracy axes end a little above 1.0: a marker (or a label) at 100 % is drawn whole, not cut
# in half by the plot's edge (the traces also draw outside the axes: ``cliponaxis=False``).
ACCURACY_RANGE = [0.0, 1.06]
SCATTER_ACCURACY_RANGE = [0.0, 1.16]  # accuracy vs time: room for the mode label above a point
# A probability bar at least this long carries its label inside (white), a shorter one beside
# it: "100.0%" outside the longest bar would run past the figure's edge in a narrow column.
INSIDE_LABEL_AT = 0.6
_Row = TypeVar("_Row", bound=Mapping[str, Any])


def base_layout(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 10, "r": 10, "t": 56, "b": 10},
        font=_FONT,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "xanchor": "left", "x": 0},
        hovermode="x unified",
    )
    return fig


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _clean(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list[Any], list[float]]:
    """Drop points whose y is missing or not finite (NaN loss, no validation yet...)."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=False) if _is_number(y)]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _thin(rows: Sequence[_Row], limit: int = MAX_BATCH_POINTS) -> list[_Row]:
    """Keep every n-th row (and always the last) so long runs stay cheap to draw."""
    if len(rows) <= limit:
        return list(rows)
    stride = math.ceil(len(rows) / limit)
    kept = list(rows[::stride])
    if kept[-1] is not rows[-1]:
        kept.append(rows[-1])
    return kept


def _headroom(values: Sequence[Any], default: float = 1.0) -> float:
    """Upper axis limit: 15% above the largest finite value (for loss axes)."""
    finite = [float(v) for v in values if _is_number(v)]
    return max(finite) * 1.15 if finite and max(finite) > 0 else default


def batch_position(row: BatchRecord) -> float:
    """Where a batch sits on the epoch axis: epoch 2, step 5 of 10 is 1.5."""
    steps = row.get("steps_per_epoch") or 1
    return (row["epoch"] - 1) + row["step"] / steps


def run_label(result: RunSummary) -> str:
    """Short legend label of a run: its name, else mode, backbone and id suffix."""
    if result.get("name"):
        return str(result["name"])
    mode = mode_label(result.get("mode"))
    return f"{mode} · {result.get('backbone')} · {str(result.get('run_id', ''))[-6:]}"


def fine_tune_starts(result: RunResult) -> list[float]:
    """Epoch-axis positions where a fine-tuning phase starts (start of its first epoch)."""
    return [
        float(p["start_epoch"] - 1)
        for p in result.get("phases") or []
        if p.get("phase") == Phase.FINE_TUNE and p.get("start_epoch")
    ]


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(_empty_note(text))
    return fig


def _two_panels(titles: tuple[str, str], height: int) -> dict[str, Any]:
    """Layout of two side-by-side plots (accuracy | loss), built as a plain dict.

    Equivalent to ``make_subplots(rows=1, cols=2)`` but an order of magnitude cheaper, which
    matters for the Train page's chart, rebuilt every second while a run trains.
    """
    gap = 0.08
    width = (1 - gap) / 2
    domains = ([0.0, width], [width + gap, 1.0])
    layout: dict[str, Any] = {
        "template": "plotly_white",
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 56, "b": 10},
        "font": _FONT,
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.08, "xanchor": "left", "x": 0},
        "hovermode": "x unified",
        "shapes": [],
        "annotations": [
            {
                "text": title,
                "x": sum(domain) / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 15},
            }
            for title, domain in zip(titles, domains, strict=True)
        ],
    }
    for i, domain in enumerate(domains, start=1):
        suffix = "" if i == 1 else str(i)
        layout[f"xaxis{suffix}"] = {"domain": domain, "anchor": f"y{suffix}", "title": "epoch"}
        layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}"}
    return layout


def _axes(col: int) -> dict[str, str]:
    return {"xaxis": "x", "yaxis": "y"} if col == 1 else {"xaxis": f"x{col}", "yaxis": f"y{col}"}


def _empty_note(text: str) -> dict[str, Any]:
    return {
        "text": text,
        "xref": "paper",
        "yref": "paper",
        "x": 0.5,
        "y": 0.5,
        "showarrow": False,
        "font": {"size": 15, "color": MARKER_COLOR},
    }


def training_curves(
    result: RunResult, batches: Sequence[BatchRecord], height: int = 380
) -> go.Figure:
    """Accuracy and loss of one run, train vs validation, per batch and per epoch.

    The x axis is in epochs: a batch at step s of epoch e sits at ``e - 1 + s/steps``, an epoch's
    metrics at ``e``. A dashed vertical line marks where fine-tuning starts.
    """
    layout = _two_panels(("Accuracy", "Loss"), height)
    history: Mapping[str, Any] = result.get("history") or {}
    epochs = history.get("epoch") or []
    thinned = _thin(batches)
    bx = [batch_position(b) for b in thinned]
    traces: list[dict[str, Any]] = []
    for col, key in ((1, "accuracy"), (2, "loss")):
        first = col == 1
        common = {"type": "scatter", "hovertemplate": "%{y:.3f}", "showlegend": first, **_axes(col)}
        x, y = _clean(bx, [b.get(key) for b in thinned])
        if x:
            traces.append(
                {
                    **common,
                    "x": x,
                    "y": y,
                    "mode": "lines",
                    "name": "train (per batch)",
                    "legendgroup": "batch",
                    "line": {"color": BATCH_COLOR, "width": 1.5},
                }
            )
        for name, values, color, symbol in (
            ("train (epoch)", history.get(key), TRAIN_COLOR, "circle"),
            ("validation", history.get(f"val_{key}"), VAL_COLOR, "diamond"),
        ):
            x, y = _clean(epochs, values or [])
            if x:
                traces.append(
                    {
                        **common,
                        "x": x,
                        "y": y,
                        "mode": "lines+markers" if len(x) <= MARKED_EPOCHS else "lines",
                        "name": name,
                        "legendgroup": name,
                        "line": {"color": color, "width": 2.5},
                        "marker": {"size": 8, "symbol": symbol},
                        "cliponaxis": False,
                    }
                )
    planned = result.get("planned_epochs") or (max(epochs) if epochs else 1)
    losses = [b.get("loss") for b in thinned] + list(history.get("loss") or [])
    losses += list(history.get("val_loss") or [])
    for axis in ("xaxis", "xaxis2"):
        layout[axis]["range"] = [0, max(planned, 1) + 0.05]
    layout["yaxis"]["range"] = list(ACCURACY_RANGE)
    layout["yaxis2"]["range"] = [0, _headroom(losses)]
    for start in fine_tune_starts(result):
        for col in (1, 2):
            axes = _axes(col)
            layout["shapes"].append(
                {
                    "type": "line",
                    "x0": start,
                    "x1": start,
                    "y0": 0,
                    "y1": 1,
                    "xref": axes["xaxis"],
                    "yref": f"{axes['yaxis']} domain",
                    "line": {"color": MARKER_COLOR, "dash": "dash", "width": 1.5},
                }
            )
            layout["annotations"].append(
                {
                    "x": start,
                    "y": 1,
                    "xref": axes["xaxis"],
                    "yref": f"{axes['yaxis']} domain",
                    "text": "fine-tuning →",
                    "showarrow": False,
                    "xanchor": "left",
                    "yanchor": "top",
                    "font": {"size": 11, "color": MARKER_COLOR},
                }
            )
    if not batches and not epochs:
        layout["annotations"].append(_empty_note("Waiting for the first batch…"))
    return go.Figure(data=traces, layout=layout)


class CurvesKey(NamedTuple):
    """What ``training_curves`` of a followed run shows, coarsely (``curves_key``)."""

    run_id: str
    status: str
    epochs_done: int
    step_bucket: int  # -1 before the first batch


def curves_key(result: RunResult, last: BatchRecord | None) -> CurvesKey:
    """The cache key of a run's chart: it changes with the status, each finished epoch and every
    ``planned steps / CURVES_STEPS`` steps (every step of a short run). ``last`` is the run's last
    batch row (``None`` before the first)."""
    bucket = -1
    if last is not None:
        planned = int(result.get("planned_epochs") or 0) * int(last.get("steps_per_epoch") or 0)
        bucket = int(last["global_step"]) // max(planned // CURVES_STEPS, 1)
    return CurvesKey(
        str(result.get("run_id") or ""),
        str(result.get("status") or ""),
        int(result.get("epochs_done") or 0),
        bucket,
    )


def class_counts_figure(class_counts: dict[str, dict[str, int]], height: int = 320) -> go.Figure:
    """Grouped bars of images per class, train vs validation (``DatasetIndex.class_counts()``)."""
    fig = go.Figure()
    for split, color, label in (("train", TRAIN_COLOR, "train"), ("val", VAL_COLOR, "validation")):
        counts = class_counts.get(split) or {}
        fig.add_trace(
            go.Bar(
                x=[plotly_text(name) for name in counts],
                y=list(counts.values()),
                name=label,
                marker_color=color,
                text=list(counts.values()),
                textposition="outside",
                cliponaxis=False,
            )
        )
    fig.update_layout(barmode="group", yaxis_title="images", bargap=0.25)
    base_layout(fig, height)
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(type="category")
    return fig


def compare_curves(results: Sequence[RunResult], height: int = 400) -> go.Figure:
    """Validation (solid) and training (dotted) accuracy and loss of several runs, overlaid."""
    layout = _two_panels(("Accuracy (solid: validation, dotted: train)", "Loss"), height)
    layout["hovermode"] = "closest"
    traces: list[dict[str, Any]] = []
    for i, result in enumerate(results):
        color = PALETTE[i % len(PALETTE)]
        label = plotly_text(run_label(result))
        group = result.get("run_id", label)
        history: Mapping[str, Any] = result.get("history") or {}
        epochs = history.get("epoch") or []
        for col, key in ((1, "accuracy"), (2, "loss")):
            x, y = _clean(epochs, history.get(f"val_{key}") or [])
            traces.append(
                {
                    "type": "scatter",
                    "x": x,
                    "y": y,
                    "mode": "lines+markers",
                    "name": label,
                    "legendgroup": group,
                    "showlegend": col == 1,
                    "line": {"color": color, "width": 2.5},
                    "marker": {"size": 7},
                    "cliponaxis": False,
                    "meta": label,  # the name reaches the hover as a value, never as template
                    "hovertemplate": f"%{{meta}} val {key}: %{{y:.3f}}<extra></extra>",
                    **_axes(col),
                }
            )
            x, y = _clean(epochs, history.get(key) or [])
            traces.append(
                {
                    "type": "scatter",
                    "x": x,
                    "y": y,
                    "mode": "lines",
                    "name": f"{label} (train)",
                    "legendgroup": group,
                    "showlegend": False,
                    "line": {"color": color, "width": 1.5, "dash": "dot"},
                    "meta": label,
                    "hovertemplate": f"%{{meta}} train {key}: %{{y:.3f}}<extra></extra>",
                    **_axes(col),
                }
            )
    histories: list[Mapping[str, Any]] = [r.get("history") or {} for r in results]
    losses = [v for h in histories for k in ("loss", "val_loss") for v in h.get(k) or []]
    layout["xaxis"]["rangemode"] = layout["xaxis2"]["rangemode"] = "tozero"
    layout["yaxis"]["range"] = list(ACCURACY_RANGE)
    layout["yaxis2"]["range"] = [0, _headroom(losses)]
    if not results:
        layout["annotations"].append(_empty_note("Pick runs to compare"))
    return go.Figure(data=traces, layout=layout)


def accuracy_vs_time(results: Sequence[RunResult], height: int = 380) -> go.Figure:
    """Best validation accuracy against wall time, one point per run.

    Runs keep the colours they have in ``compare_curves`` (same order, same palette), so the two
    charts read together; runs without a wall time or an accuracy are left out.
    """
    fig = go.Figure()
    for i, r in enumerate(results):
        if not (_is_number(r.get("duration_s")) and _is_number(r.get("best_val_accuracy"))):
            continue
        label = plotly_text(run_label(r))
        mode = mode_label(r.get("mode"))
        fig.add_trace(
            go.Scatter(
                x=[r["duration_s"]],
                y=[r["best_val_accuracy"]],
                mode="markers+text",
                name=label,
                text=[mode],
                textposition="top center",
                cliponaxis=False,  # a label above a point at 100 % stays whole
                customdata=[[label, r.get("run_id")]],
                marker={"size": 14, "color": PALETTE[i % len(PALETTE)], "line": {"width": 1}},
                hovertemplate="%{customdata[0]}<br>%{customdata[1]}<br>"
                "%{x:.1f} s → best val acc %{y:.3f}<extra></extra>",
            )
        )
    times = [x for trace in fig.data for x in trace.x]
    fig.update_xaxes(title_text="wall time (s)", range=[0, _headroom(times, 1.0)])
    fig.update_yaxes(title_text="best validation accuracy", range=list(SCATTER_ACCURACY_RANGE))
    base_layout(fig, height)
    fig.update_layout(hovermode="closest", showlegend=True)
    if not fig.data:
        _empty(fig, "No finished runs with a validation accuracy yet")
    return fig


def prediction_bars(
    predictions: list[dict[str, Any]], title: str | None = None, height: int | None = None
) -> go.Figure:
    """Horizontal probability bars, best label on top (``predict_images``' ``predictions``)."""
    labels = [plotly_text(p["label"]) for p in predictions][::-1]
    probs = [float(p["probability"]) for p in predictions][::-1]
    colors = [TRAIN_COLOR if i == len(probs) - 1 else "#93c5fd" for i in range(len(probs))]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=labels,
            orientation="h",
            marker_color=colors,
            text=[f"{p:.1%}" for p in probs],
            textposition=["inside" if p >= INSIDE_LABEL_AT else "outside" for p in probs],
            insidetextanchor="end",
            insidetextfont={"color": "white"},
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(range=[0, 1.18], tickformat=".0%", showgrid=True)
    fig.update_yaxes(type="category", automargin=True)
    base_layout(fig, height or 90 + 34 * max(len(labels), 1))
    fig.update_layout(
        hovermode="closest",
        showlegend=False,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        title={
            "text": plotly_text(title or ""),  # a run's name: shown as typed, never as HTML
            "font": {"size": 14},
            "x": 0,
            "xanchor": "left",
        },
    )
    return fig
