"""What the dashboard pages compute, kept out of the pages so it can be unit-tested.

The progress/ETA summary of a run, the comparison table, run choosers and labels. Pure: no
Streamlit, no Keras; what needs the engine (queueing a comparison, saving an upload, the layer
preview) lives in ``core``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from app.views.labels import mode_label, phase_doing, status_emoji
from core.config import AUGMENTATIONS, DEFAULT_DATA, RunConfig, Status
from core.data.names import display_name
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
from core.training.input_path import IMAGES

# The trainer's stage record while it unfreezes and compiles for fine-tuning
# (``core.training.trainer.UNFREEZE_STAGE``; named here: the views never import Keras).
UNFREEZE_STAGE = "unfreeze"
# Stages that count images (``done``/``total`` are images): checking them, the frozen base's pass.
IMAGE_STAGES = ("scan", "features")
ETA_WINDOW = 50  # recent batches used for the speed estimate


class Progress(TypedDict):
    """Where a run is (``progress_summary``)."""

    status: Status | None
    phase: str | None
    phase_label: str
    preparing: bool  # no batch is training now (setting up, resuming, a one-off pass)
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
    stopping: bool  # a stop was asked and the run has not ended yet
    stage_step: int | None  # preparing: which of the preparation's steps ("2" of "2/3")
    stage_steps: int | None
    stage_done: int | None  # preparing: images done in a pass over them (checking, features)
    stage_total: int | None
    stage_elapsed_s: float | None  # preparing: seconds in the current step so far


class Metric(NamedTuple):
    """One of the monitor's four metrics."""

    label: str
    value: str


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


def format_bytes(n: int | float | None) -> str:
    """A size on disk: ``512 B``, ``3.4 MB``, ``1.21 GB`` (decimal units, as file managers)."""
    if n is None or n < 0:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def _attempt(result: RunResult, batches: Sequence[BatchRecord]) -> list[BatchRecord]:
    """The batches of the run's current attempt: a resumed run keeps the rows of the epochs it
    had finished, which say nothing about where (or how fast) this attempt is."""
    started = result.get("started_at")
    if not started:
        return list(batches)
    return [b for b in batches if b["t"] >= float(started)]


def _window(batches: Sequence[BatchRecord], phase: str | None) -> list[BatchRecord]:
    """The recent rows speed and ETA are smoothed over: up to ``ETA_WINDOW`` rows of the
    current phase (a phase change, like a resume, changes the speed), else of any phase."""
    same = [b for b in batches if b.get("phase") == phase][-ETA_WINDOW:]
    return same if len(same) >= 2 else list(batches[-ETA_WINDOW:])


def _seconds_per_step(rows: Sequence[BatchRecord]) -> float | None:
    """Wall time per step over ``rows``, validation pauses included (from batch timestamps)."""
    if len(rows) < 2:
        return None
    steps = rows[-1]["global_step"] - rows[0]["global_step"]
    elapsed = rows[-1]["t"] - rows[0]["t"]
    if steps <= 0 or elapsed <= 0:
        return None
    return elapsed / steps


def _throughput(rows: Sequence[BatchRecord], result: RunResult) -> float | None:
    """Training images per second of wall time over ``rows`` (a window, never one batch: the
    first batch of an attempt includes compiling and would read as 1 image/s)."""
    per_step = _seconds_per_step(rows)
    batch_size = (result.get("config") or {}).get("batch_size")
    if per_step is None or not batch_size:
        return None
    return float(batch_size) / per_step


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
    if kind == UNFREEZE_STAGE:
        text = "Unfreezing and compiling the model for fine-tuning (then its first batch)"
        return text, "unfreezing and compiling the model", None
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


def _fresh_stage(result: RunResult, after: float | None) -> dict[str, Any]:
    """The run's ``stage`` record if it belongs to this attempt (written at or after ``after``,
    when the record carries its time ``t``), else ``{}``: a resumed run must not show the
    previous attempt's finished feature pass."""
    stage: dict[str, Any] = dict(result.get("stage") or {})
    written = stage.get("t")
    if after and isinstance(written, (int, float)) and written < after:
        return {}
    return stage


def _mid_run_pass(stage: dict[str, Any], last: BatchRecord | None) -> bool:
    """Whether a one-off pass (fine-tuning's frozen layers, run once) is under way after the
    last batch: training is paused while it runs, so the page says so instead of the step."""
    written = stage.get("t")
    if stage.get("stage") == UNFREEZE_STAGE:  # until the next phase's first batch lands
        return last is None or not isinstance(written, (int, float)) or written >= last["t"]
    if stage.get("stage") != "features" or not stage.get("total"):
        return False
    if int(stage.get("done") or 0) >= int(stage["total"]):
        return False
    return last is None or not isinstance(written, (int, float)) or written >= last["t"]


def progress_summary(
    result: RunResult,
    batches: Sequence[BatchRecord],
    now: float | None = None,
    stopping: bool = False,
) -> Progress:
    """Where a run is: phase, epoch, step, speed, fraction done, elapsed time and ETA.

    ``result`` is ``RunStore.result(run_id)``, ``batches`` its ``RunStore.batches(run_id)`` (or
    ``batch_sample(run_id, 1, ETA_WINDOW)``: the first and the recent rows are enough). One
    source of truth for the phase: a running run whose current attempt has no batch yet is
    *preparing* (or *resuming*) in the badge and the text alike, and shows no stale step or
    ETA of an earlier attempt. Speed and ETA are smoothed over the last ``ETA_WINDOW`` batches
    of the current phase and attempt; the ETA is ``None`` until two of them have been seen.
    ``stopping``: a stop was asked (the store's flag); an active run then says so at once.
    """
    now = time.time() if now is None else now
    status = result.get("status")
    planned = int(result.get("planned_epochs") or 0)
    epochs_done = int(result.get("epochs_done") or 0)
    started = result.get("started_at")
    attempt = _attempt(result, batches) if status == RUNNING else list(batches)
    last = attempt[-1] if attempt else None
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

    window = _window(attempt, phase)
    # Speed is measured within the last attempt: a resumed run's rows before the resume are
    # separated from it by however long it stayed stopped, which no rate may include.
    current = _attempt(result, batches)
    timed = current if len(current) >= 2 else attempt
    if status == COMPLETED:  # the whole attempt
        speed_rows = [timed[0], timed[-1]] if len(timed) >= 2 else window
    elif status == RUNNING:
        speed_rows = window
    else:
        speed_rows = _window(timed, phase)
    images_per_s = _throughput(speed_rows, result)

    eta_s: float | None = None
    if status == RUNNING and last is not None:
        per_step = _seconds_per_step(window)
        if per_step is not None and total_steps:
            eta_s = max(total_steps - done_steps, 0) * per_step
    elif status not in ACTIVE_STATUSES:
        eta_s = 0.0

    duration = result.get("duration_s")
    if duration is not None and status not in ACTIVE_STATUSES:
        elapsed = float(duration)
    elif started:
        elapsed = max(now - float(started), 0.0)
    else:
        elapsed = 0.0

    stage = _fresh_stage(result, float(started) if started else None)
    # rows of an earlier attempt and none of this one: a resume still preparing
    resuming = status == RUNNING and last is None and bool(batches)
    preparing = status == RUNNING and (last is None or _mid_run_pass(stage, last))
    label = phase_doing(phase)
    if status == QUEUED:
        text = "Queued: waiting for the worker"
    elif preparing:
        text, label, prep_fraction = preparing_step(stage)
        if resuming:  # the epochs already done stay done; the rest is this attempt's
            after = f" after epoch {epochs_done}/{planned}" if epochs_done else ""
            text = f"Resuming{after}: {text[0].lower()}{text[1:]}"
            label = f"resuming: {label}"
            epoch = step = 0
            fraction = min(epochs_done / planned, 1.0) if planned else 0.0
        elif last is None:
            fraction = prep_fraction if prep_fraction is not None else fraction
        if stage.get("stage") in IMAGE_STAGES:
            images_per_s = stage.get("images_per_s") or None
            eta_s = stage.get("eta_s")
        elif last is None:
            images_per_s = eta_s = None
    elif status == RUNNING:
        text = f"{label} · epoch {epoch}/{planned} · step {step}/{steps_per_epoch}"
    elif status == STOPPED and last is not None:
        text = stopped_text(epoch, step, steps_per_epoch)
    else:
        text = f"{status}: {epochs_done}/{planned} epochs"
    stopping = stopping and status in ACTIVE_STATUSES
    if stopping:  # from the click on: the run ends within its current batch
        label = "stopping…"
        text = "Stopping: the batch in flight finishes, then the run ends (Resume continues it)"
    counted = preparing and stage.get("stage") in IMAGE_STAGES and bool(stage.get("total"))
    begun = stage.get("started")
    return {
        "status": status,
        "phase": phase,
        "phase_label": label,
        "preparing": preparing,
        "epoch": epoch,
        "planned_epochs": planned,
        "epochs_done": epochs_done,
        "step": step,
        "steps_per_epoch": steps_per_epoch,
        "images_per_s": images_per_s,
        "fraction": fraction,
        "elapsed_s": elapsed,
        "eta_s": eta_s,
        "eta_text": format_duration(eta_s) if eta_s is not None else "estimating…",
        "text": text,
        "stopping": stopping,
        "stage_step": int(stage["step"]) if preparing and stage.get("step") else None,
        "stage_steps": int(stage["steps"]) if preparing and stage.get("steps") else None,
        "stage_done": int(stage.get("done") or 0) if counted else None,
        "stage_total": int(stage["total"]) if counted else None,
        "stage_elapsed_s": max(now - float(begun), 0.0)
        if preparing and isinstance(begun, (int, float))
        else None,
    }


def monitor_metrics(p: Progress) -> list[Metric]:
    """The monitor's four metrics of an active run. While it prepares, the preparation's step
    (n/N), the images of a pass (n/N), their rate and the ETA, or the time the step has taken
    where there is nothing to count (building, converting, compiling): never four dashes."""
    speed = f"{p['images_per_s']:.0f}" if p["images_per_s"] else "–"
    eta = Metric("ETA", p["eta_text"] if p["eta_s"] is not None else "–")
    if not p["preparing"]:
        return [
            Metric("Epoch", f"{p['epoch']}/{p['planned_epochs']}" if p["epoch"] else "–"),
            Metric("Step", f"{p['step']}/{p['steps_per_epoch']}" if p["step"] else "–"),
            Metric("Images/s", speed),
            eta,
        ]
    if p["epoch"]:  # a pass between phases: the epoch reached stays shown
        first = Metric("Epoch", f"{p['epoch']}/{p['planned_epochs']}")
    elif p["stage_step"] and p["stage_steps"]:
        first = Metric("Preparing", f"step {p['stage_step']}/{p['stage_steps']}")
    else:
        first = Metric("Epoch", "–")
    if p["stage_total"]:
        second = Metric("Images", f"{p['stage_done']}/{p['stage_total']}")
    else:
        second = Metric("Step", "–")
    if p["eta_s"] is None and p["stage_elapsed_s"] is not None:
        eta = Metric("Elapsed", format_duration(p["stage_elapsed_s"]))
    return [first, second, Metric("Images/s", speed), eta]


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


def short_id(run_id: str) -> str:
    """The part of a run id that tells runs apart (``20261121-210501-3fa2c1`` → ``3fa2c1``)."""
    return run_id.rsplit("-", 1)[-1] if run_id.count("-") >= 2 else run_id


def run_name(run: RunSummary) -> str:
    """The run's readable name (``photos #7`` or the user's), never the long data path."""
    name = str(run.get("name") or "").strip()
    return name or f"{display_name(run.get('data'))} · {short_id(run['run_id'])}"


def run_choice_label(run: RunSummary) -> str:
    """One line for a select box: icon, name, mode, backbone, accuracy and the short id.

    The data is named as people know it (``display_name``), and only when the run's name does
    not already say it; the full path belongs in a tooltip (``run_details``).
    """
    acc = run.get("best_val_accuracy")
    name = run_name(run)
    data = display_name(run.get("data"))
    parts = [f"{status_emoji(run['status'])} {name}".strip(), mode_label(run.get("mode"))]
    parts.append(str(run.get("backbone") or "?"))
    if data not in name:
        parts.append(data)
    if isinstance(acc, (int, float)):
        parts.append(f"val acc {acc:.3f}")
    parts.append(short_id(run["run_id"]))
    return " · ".join(parts)


def run_short_label(run: RunSummary) -> str:
    """The run in a narrow select box (the Train page's monitor, whose metrics say the rest):
    icon, name, mode and the short id."""
    parts = [f"{status_emoji(run['status'])} {run_name(run)}".strip()]
    return " · ".join([*parts, mode_label(run.get("mode")), short_id(run["run_id"])])


def run_details(run: RunSummary) -> str:
    """The full id and data source of a run, for a tooltip or a details caption."""
    return f"Run {run['run_id']} · data {run.get('data') or '?'}"


def default_compare_selection(results: Sequence[RunResult], limit: int = 4) -> list[str]:
    """Runs pre-selected on the Compare page: the newest compare group, else the newest few."""
    for result in results:  # newest first
        group = compare_group(result)
        if group:
            return [r["run_id"] for r in results if compare_group(r) == group][:limit]
    return [r["run_id"] for r in results[:limit]]


def runs_table(runs: Sequence[RunSummary], limit: int = 20) -> list[dict[str, Any]]:
    """Display rows for the Home page's recent runs: readable names first, accuracy early,
    the data as people know it; the full run id and data path come last (``run``, ``source``)."""
    rows = []
    for r in runs[:limit]:
        acc = r.get("best_val_accuracy")
        rows.append(
            {
                "status": f"{status_emoji(r['status'])} {r['status']}",
                "name": run_name(r),
                "best val acc": round(acc, 4) if isinstance(acc, (int, float)) else None,
                "mode": mode_label(r.get("mode")),
                "backbone": r.get("backbone"),
                "data": display_name(r.get("data")),
                "epochs": f"{r.get('epochs_done', 0)}/{r.get('planned_epochs', 0)}",
                "time": format_duration(r.get("duration_s")),
                "id": short_id(r["run_id"]),
                "error": r.get("error") or "",
                "run": r["run_id"],
                "source": r.get("data") or "",
            }
        )
    return rows


# --------------------------------------------------------------------------- comparing


def trainable_params(result: RunResult) -> int | None:
    """The most parameters any phase of the run trained at once."""
    counts = [p["trainable_params"] for p in result.get("phases") or [] if "trainable_params" in p]
    return max(counts) if counts else None


def best_run_key(run: RunSummary) -> tuple[float, float, float]:
    """The one order of "best run", for Compare's ★ and banner and Predict's preselection:
    the highest best validation accuracy; a tie goes to the shortest wall time, then to the
    newest run. A run without an accuracy ranks below every run with one."""
    acc, duration = run.get("best_val_accuracy"), run.get("duration_s")
    return (
        float(acc) if isinstance(acc, (int, float)) else -1.0,
        -float(duration) if isinstance(duration, (int, float)) and duration > 0 else -math.inf,
        float(run.get("created_at") or 0.0),
    )


def best_run(results: Sequence[RunSummary]) -> str | None:
    """The best run by ``best_run_key`` among those with an accuracy; ``None`` if none has."""
    scored = [r for r in results if r.get("best_val_accuracy") is not None]
    return max(scored, key=best_run_key)["run_id"] if scored else None


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
    """One short line per backbone (it must fit a 1280-px-wide page's select box): name,
    default input size, parameters, and whether its pretrained weights are here: offline,
    imported, needs network (``backbone_help`` says it in full). A name that already says
    "(offline)" is not told twice."""
    from core.models.backbones import get_backbone

    spec = get_backbone(name)
    label = f"{spec.display_name} · {spec.default_size} px · {spec.params_millions:.1f}M"
    availability = spec.availability()
    return label if f"({availability})" in spec.display_name else f"{label} · {availability}"


def backbone_help(name: str) -> str:
    """The backbone in full: size, parameters and where its ImageNet weights come from."""
    from core.models.backbones import get_backbone

    spec = get_backbone(name)
    return (
        f"{spec.display_name}: {spec.default_size} px input by default, "
        f"{spec.params_millions:.1f}M parameters, ImageNet weights {spec.weights_status()}."
    )


def data_choices(remembered: str | None, runs: Sequence[RunSummary]) -> list[str]:
    """Data sources offered on the Train page: the Data page's choice, the default data, the
    other built-ins, recent ones."""
    from core.data.builtin import list_builtins

    choices = [remembered] if remembered else []
    choices += [DEFAULT_DATA, *(b["source"] for b in list_builtins())]
    choices += [data for r in runs if (data := r.get("data"))]
    return list(dict.fromkeys(choices))  # first occurrence of each, in order


def data_label(source: str) -> str:
    """A data source in a select box: the name people know it by (``photos.zip``, ``pets``);
    a built-in keeps its short ``builtin:NAME`` form (what the CLI and the docs call it)."""
    return source if source.lower().startswith("builtin:") else display_name(source)


# --------------------------------------------------------------------------- the Train form

# The Train form's widget keys and the RunConfig field each one shows (the browser test drives
# these keys: keep them stable).
FORM_FIELDS = {
    "backbone": "backbone", "mode": "mode", "weights": "weights", "data": "data",
    "size": "image_size", "batch": "batch_size", "val_split": "val_split", "seed": "seed",
    "augment": "augment", "cache": "feature_cache", "augs": "augmentations", "epochs": "epochs",
    "lr": "lr", "ft": "fine_tune_epochs", "ft_lr": "fine_tune_lr", "unfreeze": "unfreeze",
    "distribute": "distribute", "mixed_precision": "mixed_precision",
}  # fmt: skip
LRS = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # the learning-rate sliders' stops


def _nearest(value: float, stops: Sequence[float]) -> float:
    import math

    return min(stops, key=lambda stop: abs(math.log10(stop) - math.log10(max(value, 1e-12))))


def train_form_values(config: RunConfig) -> dict[str, Any]:
    """The Train form's widget values (by key, see ``FORM_FIELDS``) that show ``config``.

    Each value is one the widget accepts (a learning rate off the slider's stops snaps to the
    nearest, a weights file path shows as ImageNet), so a draft can never break the page.
    """
    unfreeze = config.unfreeze if config.unfreeze is None or config.unfreeze <= 10_000 else None
    return {
        "backbone": config.backbone,
        "mode": str(config.mode),
        "weights": "none" if config.weights == "none" else "imagenet",
        "data": config.data,
        "size": config.image_size if config.image_size and config.image_size >= 16 else None,
        "batch": config.batch_size,
        "val_split": min(max(float(config.val_split), 0.05), 0.9),
        "seed": config.seed,
        "augment": config.augment,
        "cache": config.feature_cache == "auto",
        "augs": [a for a in AUGMENTATIONS if a in config.augmentations],
        "epochs": config.epochs,
        "lr": _nearest(config.lr, LRS),
        "ft": config.fine_tune_epochs,
        "ft_lr": _nearest(config.fine_tune_lr, LRS),
        "unfreeze": unfreeze,
        "distribute": config.distribute,
        "mixed_precision": config.mixed_precision,
    }


# Which section of the Train form a lint finding concerns (``core.lint`` codes): it is shown
# there, above the Launch button; an unknown code goes to the last section, just above it.
LINT_SECTIONS = {
    "transfer_without_pretrained_weights": "model",
    "full_fine_tuning_small_data": "model",
    "scratch_few_images": "model",
    "image_size_below_default": "data",
    "fine_tune_lr_high": "schedule",
    "head_lr_not_above_fine_tune_lr": "schedule",
    "no_fine_tune_phase": "schedule",
    "mixed_precision_on_cpu": "model",
    "mirrored_one_device": "model",
}


def lint_section(code: str) -> str:
    """The Train form section (``model``, ``data``, ``schedule``) a lint finding belongs in."""
    return LINT_SECTIONS.get(code, "schedule")


def cache_control(kind: str, reason: str, blocker: str | None) -> tuple[bool, str | None]:
    """Whether the Feature cache toggle applies to the run, and if not, why (its help text).

    ``kind``/``reason``/``blocker`` are ``core.training.input_path.input_path`` of the config with
    the cache on: when even then the run reads images (the mode trains the base, or fine-tuning
    with augmentation), the toggle changes nothing and must not show ON.
    """
    if kind == IMAGES and blocker != "feature cache":
        return False, f"Not used by this run: {reason}."
    return True, None


# --------------------------------------------------------------------------- following runs


def followed_run(
    runs: Sequence[RunSummary], current: str | None, was_active: bool, pinned: bool
) -> str | None:
    """The run the Train page's monitor shows.

    ``current`` is the run shown last, ``was_active`` whether it was queued or running then.
    A run the user pinned stays. Otherwise, when the followed run has just finished and
    another one is training or queued (the next run of "Compare all modes"), the monitor moves
    on to it; a finished run the user picked on purpose stays. With nothing chosen yet: the
    running run, else the next queued, else the newest (``pick_default_run``).
    """
    by_id = {r["run_id"]: r for r in runs}
    if current not in by_id:
        return pick_default_run(runs)
    if pinned or not was_active or by_id[current]["status"] in ACTIVE_STATUSES:
        return current
    active = [r for r in runs if r["status"] in ACTIVE_STATUSES]
    return pick_default_run(active) if active else current


def sparkline(batches: Sequence[BatchRecord]) -> Any:
    """A compact live chart of a running job (the Home page's queue): training loss and
    accuracy per batch, two small lines, no axes titles. ``batches`` is a thinned sample
    (``RunStore.batch_sample``)."""
    import plotly.graph_objects as go

    steps = [b["global_step"] for b in batches]
    figure = go.Figure()
    figure.add_scatter(
        x=steps, y=[b.get("loss") for b in batches], name="loss", mode="lines",
        line={"width": 1.5, "color": "#d62728"}, yaxis="y", hovertemplate="loss %{y:.3f}",
    )  # fmt: skip
    figure.add_scatter(
        x=steps, y=[b.get("accuracy") for b in batches], name="accuracy", mode="lines",
        line={"width": 1.5, "color": "#1f77b4"}, yaxis="y2", hovertemplate="acc %{y:.3f}",
    )  # fmt: skip
    figure.update_layout(
        height=110,
        margin={"l": 4, "r": 4, "t": 22, "b": 4},  # the legend sits above the lines
        showlegend=True,
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom", "font": {"size": 11}},
        xaxis={"visible": False},
        yaxis={"visible": False},
        # a little headroom: accuracy 1.0 must not sit on the chart's edge
        yaxis2={"visible": False, "overlaying": "y", "range": [0, 1.08]},
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
    )
    return figure
