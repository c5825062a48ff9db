"""What the dashboard pages compute, kept out of the pages so it can be unit-tested.

The progress/ETA summary of a run, the comparison table, run choosers and labels. Pure: no
Streamlit, no Keras; what needs the engine (queueing a comparison, saving an upload, the layer
preview) lives in ``core``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from app.views.labels import phase_doing, status_emoji
from core.config import DEFAULT_DATA, Status
from core.runs.store import (
    ACTIVE_STATUSES,
    COMPLETED,
    QUEUED,
    RUNNING,
    STOPPED,
    BatchRecord,
    RunResult,
    RunStore,
    RunSummary,
)
from core.training.compare import compare_group

ETA_WINDOW = 50  # recent batches used for the speed estimate


class Progress(TypedDict):
    """Where a run is (``progress_summary``)."""

    status: Status | None
    phase: str | None
    phase_label: str
    epoch: int
    planned_epochs: int
    epochs_done: int
    step: int
    steps_per_epoch: int
    images_per_s: float | None
    fraction: float
    elapsed_s: float
    eta_s: float | None
    eta_text: str
    text: str


# --------------------------------------------------------------------------- progress


def format_duration(seconds: float | None) -> str:
    """Compact duration: ``42s``, ``3m 05s``, ``1h 02m``; ``–`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def format_count(n: int | float | None) -> str:
    """Compact count: ``950``, ``328.7k``, ``1.21M``; ``–`` when unknown."""
    if n is None:
        return "–"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.3g}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.4g}k"
    return f"{n:g}"


def _seconds_per_step(batches: Sequence[BatchRecord], phase: str) -> float | None:
    """Recent wall time per step, validation pauses included (from batch timestamps)."""
    same = [b for b in batches if b.get("phase") == phase][-ETA_WINDOW:]
    rows = same if len(same) >= 2 else batches[-ETA_WINDOW:]
    if len(rows) < 2:
        return None
    steps = rows[-1]["global_step"] - rows[0]["global_step"]
    elapsed = rows[-1]["t"] - rows[0]["t"]
    if steps <= 0 or elapsed <= 0:
        return None
    return elapsed / steps


def _throughput(
    batches: Sequence[BatchRecord], result: RunResult, window: int | None
) -> float | None:
    """Training images per second of wall time over the last ``window`` batches (all if None).

    Wall time includes validation passes, so it is what the user actually gets; with a single
    batch the worker's own per-batch figure is used.
    """
    rows = batches if window is None else batches[-window:]
    batch_size = (result.get("config") or {}).get("batch_size")
    if len(rows) >= 2 and batch_size:
        elapsed = rows[-1]["t"] - rows[0]["t"]
        steps = rows[-1]["global_step"] - rows[0]["global_step"]
        if elapsed > 0 and steps > 0:
            return steps * batch_size / elapsed
    return rows[-1].get("images_per_s") if rows else None


def stopped_text(epoch: int, step: int, steps_per_epoch: int) -> str:
    """The one wording of where Stop ended a run (the last batch it finished)."""
    return f"stopped after epoch {epoch}, step {step}/{steps_per_epoch}"


def preparing_step(stage: dict[str, Any]) -> tuple[str, str, float | None]:
    """What a run does before its first batch, from its ``stage`` record: ``(text, short label,
    fraction done or None)``."""
    kind, done, total = stage.get("stage"), int(stage.get("done") or 0), stage.get("total")
    fraction = min(done / total, 1.0) if total else None
    if kind == "scan":
        return f"Preparing · checking images {done}/{total or '?'}", "checking images", fraction
    if kind == "build":
        if stage.get("converting"):
            text = "Preparing · converting the backbone's weights (first use only)"
            return text, "converting weights", None
        return "Preparing · building the model", "building the model", None
    if kind == "runtime":
        text = "Preparing · converting the backbone for the fast runtime (first use only)"
        return text, "converting the backbone", None
    if kind == "features" and total:
        views = int(stage.get("views") or 1)
        if stage.get("activations"):  # fine-tuning: the frozen layers, up to the cut
            text = (
                f"Running the frozen layers once: {done}/{total} images "
                "(then training goes on from their stored activations)"
            )
        elif views > 1:
            text = (
                f"Computing features with the frozen base: {done}/{total} images (each training "
                f"image and {views - 1} augmented views of it, once; then the head trains on them)"
            )
        else:
            text = (
                f"Computing features with the frozen base: {done}/{total} images "
                "(then the head trains on them)"
            )
        return text, "computing features", fraction
    return "Preparing: loading data and building the model", "preparing", None


def progress_summary(
    result: RunResult, batches: Sequence[BatchRecord], now: float | None = None
) -> Progress:
    """Where a run is: phase, epoch, step, speed, fraction done, elapsed time and ETA.

    ``result`` is ``RunStore.result(run_id)``, ``batches`` its ``RunStore.batches(run_id)``.
    The ETA extrapolates the recent time per step (which includes the validation passes) over
    the steps left in all planned epochs; it is ``None`` until two batches have been seen.
    """
    now = time.time() if now is None else now
    status = result.get("status")
    planned = int(result.get("planned_epochs") or 0)
    last = batches[-1] if batches else None
    steps_per_epoch = int(last["steps_per_epoch"] or 0) if last else 0
    epoch = int(last["epoch"]) if last else 0
    step = int(last["step"]) if last else 0
    phase = last["phase"] if last else None
    if phase is None and result.get("phases"):
        phase = result["phases"][-1].get("phase")

    total_steps = planned * steps_per_epoch
    done_steps = (epoch - 1) * steps_per_epoch + step if last else 0
    if status == COMPLETED:
        fraction = 1.0
    elif total_steps:
        fraction = min(done_steps / total_steps, 1.0)
    else:
        fraction = 0.0

    images_per_s = _throughput(batches, result, window=None if status == COMPLETED else ETA_WINDOW)

    eta_s: float | None = None
    if status == RUNNING and last is not None and phase is not None:
        per_step = _seconds_per_step(batches, phase)
        if per_step is not None and total_steps:
            eta_s = max(total_steps - done_steps, 0) * per_step
    elif status not in ACTIVE_STATUSES:
        eta_s = 0.0

    started = result.get("started_at")
    duration = result.get("duration_s")
    if duration is not None and status not in ACTIVE_STATUSES:
        elapsed = float(duration)
    elif started:
        elapsed = max(now - float(started), 0.0)
    else:
        elapsed = 0.0

    stage: dict[str, Any] = result.get("stage") or {}
    preparing = status == RUNNING and last is None
    prep_label = None
    if status == QUEUED:
        text = "Queued: waiting for the worker"
    elif preparing:
        text, prep_label, prep_fraction = preparing_step(stage)
        fraction = prep_fraction if prep_fraction is not None else fraction
        if stage.get("stage") == "features":
            images_per_s = stage.get("images_per_s") or None
            eta_s = stage.get("eta_s")
    elif status == RUNNING:
        text = f"{phase_doing(phase)} · epoch {epoch}/{planned} · step {step}/{steps_per_epoch}"
    elif status == STOPPED and last is not None:
        text = stopped_text(epoch, step, steps_per_epoch)
    else:
        text = f"{status}: {result.get('epochs_done', 0)}/{planned} epochs"
    return {
        "status": status,
        "phase": phase,
        "phase_label": prep_label or phase_doing(phase),
        "epoch": epoch,
        "planned_epochs": planned,
        "epochs_done": int(result.get("epochs_done") or 0),
        "step": step,
        "steps_per_epoch": steps_per_epoch,
        "images_per_s": images_per_s,
        "fraction": fraction,
        "elapsed_s": elapsed,
        "eta_s": eta_s,
        "eta_text": format_duration(eta_s) if eta_s is not None else "estimating…",
        "text": text,
    }


# --------------------------------------------------------------------------- choosing runs


def pick_default_run(runs: Sequence[RunSummary]) -> str | None:
    """The run a page shows when the session chose none: running, else queued, else newest."""
    for status in (RUNNING, QUEUED):
        active = [r for r in runs if r["status"] == status]
        if active:
            # list_runs is newest first; the queued run that starts next is the oldest one
            return (active[0] if status == RUNNING else active[-1])["run_id"]
    return runs[0]["run_id"] if runs else None


def finished_runs(runs: Sequence[RunSummary]) -> list[RunSummary]:
    """Runs that recorded at least one epoch and are no longer active (comparable runs)."""
    return [r for r in runs if r["status"] not in ACTIVE_STATUSES and r.get("epochs_done")]


def predictable_runs(store: RunStore) -> list[RunSummary]:
    """Completed or stopped runs with a saved model file, newest first."""
    out = []
    for run in store.list_runs((COMPLETED, STOPPED)):
        model_path = store.get_run(run["run_id"])["model_path"]
        if model_path and Path(model_path).is_file():
            out.append(run)
    return out


def run_choice_label(run: RunSummary) -> str:
    """One line for a select box: icon, mode, backbone, data, accuracy and id."""
    acc = run.get("best_val_accuracy")
    acc_text = f" · val acc {acc:.3f}" if isinstance(acc, (int, float)) else ""
    name = f"{run['name']} · " if run.get("name") else ""
    return (
        f"{status_emoji(run['status'])} {name}{run.get('mode')} · {run.get('backbone')} · "
        f"{run.get('data')}{acc_text} · {run['run_id']}"
    )


def default_compare_selection(results: Sequence[RunResult], limit: int = 4) -> list[str]:
    """Runs pre-selected on the Compare page: the newest compare group, else the newest few."""
    for result in results:  # newest first
        group = compare_group(result)
        if group:
            return [r["run_id"] for r in results if compare_group(r) == group][:limit]
    return [r["run_id"] for r in results[:limit]]


def runs_table(runs: Sequence[RunSummary], limit: int = 20) -> list[dict[str, Any]]:
    """Display rows for the Home page's recent runs."""
    rows = []
    for r in runs[:limit]:
        acc = r.get("best_val_accuracy")
        rows.append(
            {
                "status": f"{status_emoji(r['status'])} {r['status']}",
                "run": r["run_id"],
                "mode": r.get("mode"),
                "backbone": r.get("backbone"),
                "data": r.get("data"),
                "epochs": f"{r.get('epochs_done', 0)}/{r.get('planned_epochs', 0)}",
                "best val acc": round(acc, 4) if isinstance(acc, (int, float)) else None,
                "time": format_duration(r.get("duration_s")),
                "error": r.get("error") or "",
            }
        )
    return rows


# --------------------------------------------------------------------------- comparing


def trainable_params(result: RunResult) -> int | None:
    """The most parameters any phase of the run trained at once."""
    counts = [p["trainable_params"] for p in result.get("phases") or [] if "trainable_params" in p]
    return max(counts) if counts else None


def best_run(results: Sequence[RunResult]) -> str | None:
    """The run with the highest best validation accuracy; ties go to the fastest one."""
    scored = [r for r in results if r.get("best_val_accuracy") is not None]
    if not scored:
        return None
    inf = float("inf")
    best = max(scored, key=lambda r: (r["best_val_accuracy"], -(r.get("duration_s") or inf)))
    return best["run_id"]


def compare_table(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per run for the Compare page; the best one (see ``best_run``) gets ``★``."""
    best = best_run(results)
    rows = []
    for r in results:
        acc = r.get("best_val_accuracy")
        size = r.get("model_bytes")
        duration = r.get("duration_s")
        rows.append(
            {
                "best": "★" if r["run_id"] == best else "",
                "run": r["run_id"],
                "backbone": r.get("backbone"),
                "mode": r.get("mode"),
                "best val accuracy": round(acc, 4) if acc is not None else None,
                "epochs": r.get("epochs_done"),
                "wall time (s)": round(duration, 1) if duration is not None else None,
                "trainable params": trainable_params(r),
                "model size (MB)": round(size / 1e6, 2) if size else None,
            }
        )
    return rows


# --------------------------------------------------------------------------- data & training UI


def backbone_label(name: str) -> str:
    """One line per backbone: name, default input size, parameters, ImageNet availability."""
    from core.models.backbones import get_backbone

    spec = get_backbone(name)
    return (
        f"{spec.display_name} · {spec.default_size} px · {spec.params_millions:.1f}M params · "
        f"ImageNet {spec.weights_status()}"
    )


def data_choices(remembered: str | None, runs: Sequence[RunSummary]) -> list[str]:
    """Data sources offered on the Train page: the Data page's choice, the default data, the
    other built-ins, recent ones."""
    from core.data.builtin import list_builtins

    choices = [remembered] if remembered else []
    choices += [DEFAULT_DATA, *(b["source"] for b in list_builtins())]
    choices += [data for r in runs if (data := r.get("data"))]
    return list(dict.fromkeys(choices))  # first occurrence of each, in order
