"""What the Train page shows of a backbone search and of the learning-rate finder (pure: no
Streamlit). Inputs are the JSON the engine writes (``core.training.search.start_search``'s state
file, ``core.training.lr_find.LrFindResult.to_json``), so a page redrawn from the file shows the
same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import plotly.graph_objects as go

from app.views.charts import PALETTE, base_layout
from app.views.text import plotly_text

OK = "ok"  # core.training.search.OK (that module imports NumPy: not needed to draw a table)
NEEDS_NETWORK = "needs network"
USE_MODES = ("feature_extraction", "fine_tuning")  # what "Use this" can turn a candidate into
PARETO_COLOR = "#16a34a"
OTHER_COLOR = "#6b7280"


def _is_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool, not ``None``: a JSON field may be either)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    return f"{value:{spec}}{unit}" if _is_number(value) else "–"


def candidate_rows(candidates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ranked table: one row per candidate, best first (as the search ranked them). Those
    needing the network are left out: ``network_note`` names them in one sentence (offline,
    they are 24 of the 26 default candidates)."""
    rows = []
    shown = [c for c in candidates if c.get("status") != NEEDS_NETWORK]
    for rank, c in enumerate(shown, 1):
        measured = c.get("status") == OK
        rows.append(
            {
                "#": rank if measured else None,
                "backbone": c.get("backbone"),
                "image size": f"{c.get('image_size')} px",
                "val accuracy": c.get("val_accuracy") if measured else None,
                "latency (ms)": c.get("latency_ms") if measured else None,
                "size (MB)": c.get("size_mb") if measured else None,
                "best head": c.get("head") or "",
                "Pareto": bool(c.get("pareto")),
                "status": c.get("status") or "",
            }
        )
    return rows


def usable_candidates(candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The candidates "Use this" can turn into a run: those measured, best first."""
    return [c for c in candidates if c.get("status") == OK]


def candidate_label(c: Mapping[str, Any]) -> str:
    """``efficientnet_lite0 · 160 px · acc 0.958 · 11.2 ms · 15.0 MB``."""
    return (
        f"{c.get('backbone')} · {c.get('image_size')} px · acc "
        f"{_fmt(c.get('val_accuracy'), '.3f')} · {_fmt(c.get('latency_ms'), '.1f', ' ms')} · "
        f"{_fmt(c.get('size_mb'), '.1f', ' MB')}"
    )


def network_note(candidates: Sequence[Mapping[str, Any]]) -> str | None:
    """One sentence naming the backbones not searched because their weights need the network."""
    names = sorted({str(c.get("backbone")) for c in candidates if c.get("status") == NEEDS_NETWORK})
    if not names:
        return None
    return (
        f"Not searched, their ImageNet weights need the network: {', '.join(names)}. "
        "Train one of them once while online and the next search includes it."
    )


def search_progress(state: Mapping[str, Any], now: float) -> str:
    """One line on where a search is: candidates settled, the feature pass under way, the
    budget's time used."""
    candidates = state.get("candidates") or []
    measured = len(usable_candidates(candidates))
    parts = [f"{len(candidates)} candidates settled, {measured} measured"]
    stage = state.get("stage")
    if isinstance(stage, Mapping) and stage.get("total"):
        parts.append(
            f"computing {stage.get('backbone')} features at {stage.get('image_size')} px: "
            f"{stage.get('done')}/{stage.get('total')} images"
        )
    started = state.get("started_at")
    end = state.get("finished_at") or now
    if _is_number(started):
        elapsed = max(0.0, float(end) - float(started))
        budget = state.get("budget_s")
        used = _minutes(elapsed)
        parts.append(f"{used} of a {_minutes(budget)} budget" if _is_number(budget) else used)
    return "; ".join(parts)


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d} min"


def search_outcome(state: Mapping[str, Any]) -> tuple[str, str]:
    """``(level, sentence)`` for a finished search: ``success``, ``warning`` or ``error``."""
    status = state.get("status")
    best = next(iter(usable_candidates(state.get("candidates") or [])), None)
    if status == "failed":
        return "error", f"The search failed: {state.get('error') or 'no reason given'}"
    if status == "interrupted":
        return "warning", (
            "The search was interrupted: its process stopped before it finished (killed, or "
            "out of memory). Start it again."
        )
    if best is None:
        return "warning", (
            "No candidate could be measured: see each one's status. Choose backbones whose "
            "weights are here, or a larger budget."
        )
    ending = {
        "stopped": "Stopped early; the best so far",
        "done": "Best",
    }.get(str(status), "Best so far")
    if state.get("budget_hit"):
        ending = "The budget ran out; the best so far"
    return "success", f"{ending}: {candidate_label(best)} ({best.get('head')})."


def pareto_figure(candidates: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Validation accuracy against latency, marker area growing with the model's size; the
    Pareto front (no other candidate both as accurate and as fast) in green, joined by a line."""
    fig = go.Figure()
    measured = [
        c
        for c in usable_candidates(candidates)
        if _is_number(c.get("latency_ms")) and _is_number(c.get("val_accuracy"))
    ]
    sizes = [float(c.get("size_mb") or 0.0) for c in measured]
    biggest = max(sizes, default=1.0) or 1.0
    for on_front, name, color in (
        (True, "Pareto front", PARETO_COLOR),
        (False, "other", OTHER_COLOR),
    ):
        group = [c for c in measured if bool(c.get("pareto")) == on_front]
        # labels above and below in turn: neighbours on the front do not overprint each other
        if on_front:
            group.sort(key=lambda c: float(c["latency_ms"]))
        if not group:
            continue
        fig.add_trace(
            go.Scatter(
                x=[c["latency_ms"] for c in group],
                y=[c["val_accuracy"] for c in group],
                mode="lines+markers+text" if on_front else "markers+text",
                name=name,
                line={"color": color, "dash": "dot", "width": 1},
                marker={
                    "color": color,
                    # area ∝ size: a 4x larger model reads as a 2x wider marker
                    "size": [
                        12 + 28 * math.sqrt(float(c.get("size_mb") or 0.0) / biggest) for c in group
                    ],  # fmt: skip
                    "opacity": 0.75,
                    "line": {"width": 1, "color": "white"},
                },
                text=[plotly_text(f"{c['backbone']} {c['image_size']}") for c in group],
                textposition=[("top center", "bottom center")[i % 2] for i in range(len(group))],
                textfont={"size": 11},
                customdata=[[c.get("size_mb"), plotly_text(c.get("head") or "")] for c in group],
                hovertemplate="%{text}<br>val acc %{y:.3f}<br>%{x:.1f} ms<br>"
                "%{customdata[0]:.1f} MB<br>%{customdata[1]}<extra></extra>",
                cliponaxis=False,
            )
        )
    base_layout(fig, 360)
    # No legend or long title over the plot (they overprinted each other in a half-width
    # column): the page's caption says what green and the marker size mean (``PARETO_NOTE``).
    fig.update_layout(showlegend=False, hovermode="closest", margin={"t": 24})
    fig.update_xaxes(title="single-image latency (ms)", rangemode="tozero")
    fig.update_yaxes(title="validation accuracy", range=[0.0, 1.12])
    return fig


PARETO_NOTE = (
    "Green, joined: the Pareto front (no other candidate is both as accurate and as fast). "
    "Marker size: the model's size. Latency: one image, on this machine."
)


def nearest_stop(value: float, stops: Sequence[float]) -> float:
    """The stop nearest ``value`` on a log scale (the LR sliders' stops are log-spaced)."""
    return min(stops, key=lambda s: abs(math.log10(s) - math.log10(max(value, 1e-12))))


def form_values(candidate: Mapping[str, Any], mode: str, lrs: Sequence[float]) -> dict[str, Any]:
    """The Train form's widget values (by key) that train ``candidate`` in ``mode``: its
    backbone, weights and image size, the best hidden-layer head's learning rate (on the
    slider's nearest stop) and epochs (``Candidate.config_changes``, the JSON's ``config``)."""
    if mode not in USE_MODES:
        raise ValueError(f"Mode {mode!r} is not one a candidate can be used in: {USE_MODES}.")
    config = candidate.get("config") or {}
    values: dict[str, Any] = {
        "backbone": config.get("backbone", candidate.get("backbone")),
        "weights": "none" if config.get("weights", candidate.get("weights")) == "none"
        else "imagenet",
        "size": int(config.get("image_size") or candidate.get("image_size") or 0) or None,
        "mode": mode,
    }  # fmt: skip
    if _is_number(config.get("lr")):
        values["lr"] = nearest_stop(float(config["lr"]), lrs)
    if isinstance(config.get("epochs"), int):
        values["epochs"] = config["epochs"]
    return values


def lr_note(suggested: float, stop: float, label: str) -> str:
    """Why the applied rate may differ from the suggestion: the slider only has stops."""
    if math.isclose(suggested, stop, rel_tol=1e-9):
        return f"{label} set to {stop:g}, the suggested rate."
    return f"{label} set to {stop:g}: the slider's nearest stop to the suggested {suggested:.2g}."


PHASE_LABELS = {"head": "Head phase", "fine_tune": "Fine-tuning phase", "scratch": "Scratch"}
LR_FIELDS = {"head": ("lr", "Learning rate"), "fine_tune": ("ft_lr", "Fine-tune LR")}


def lr_figure(result: Mapping[str, Any]) -> go.Figure:
    """The range test's smoothed loss against the learning rate (log x), the suggested rate
    marked with a dashed line."""
    lrs, losses = result.get("lrs") or [], result.get("losses") or []
    pairs = [(x, y) for x, y in zip(lrs, losses, strict=False) if _is_number(y) and x > 0]
    fig = go.Figure(
        go.Scatter(
            x=[p[0] for p in pairs], y=[p[1] for p in pairs], mode="lines",
            name="loss (smoothed)", line={"color": PALETTE[0], "width": 2},
            hovertemplate="lr %{x:.2g}<br>loss %{y:.3f}<extra></extra>",
        )
    )  # fmt: skip
    suggested = result.get("suggested_lr")
    if _is_number(suggested) and suggested > 0:
        fig.add_vline(
            x=float(suggested), line={"color": PALETTE[1], "dash": "dash"},
            annotation_text=f"suggested {suggested:.2g}", annotation_position="top",
        )  # fmt: skip
    base_layout(fig, 280)
    phase = PHASE_LABELS.get(str(result.get("phase")), str(result.get("phase")))
    fig.update_layout(title=f"{phase}: loss as the learning rate grows", hovermode="closest",
                      showlegend=False)  # fmt: skip
    fig.update_xaxes(type="log", title="learning rate", exponentformat="power")
    fig.update_yaxes(title="training loss")
    return fig


def lr_progress(state: Mapping[str, Any]) -> str:
    """Where a running LR finder is: ``Head phase: step 40/100``."""
    step = state.get("step")
    if isinstance(step, Mapping) and step.get("total"):
        phase = PHASE_LABELS.get(str(step.get("phase")), str(step.get("phase")))
        return f"{phase}: step {step.get('done')}/{step.get('total')}"
    return "Preparing: loading the data and the frozen base's features…"


IMBALANCE_PREFIX = "Class imbalance:"  # how core.data.health.health_report words the finding


def imbalance_finding(report: Sequence[Mapping[str, str]]) -> str | None:
    """The health report's class-imbalance warning, if it has one."""
    return next(
        (
            str(item.get("message"))
            for item in report
            if str(item.get("message", "")).startswith(IMBALANCE_PREFIX)
        ),
        None,
    )
