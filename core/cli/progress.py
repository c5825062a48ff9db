"""Progress of long CLI stages on stderr: ``computing features 3,200/10,000 (32%), 250 img/s,
ETA 27 s``.

Nothing for a stage that ends within ``after_s()`` seconds (environment variable
``TRANSFER_STUDIO_PROGRESS_AFTER_S``, default 2; 0 shows every stage); then one line every few
seconds at most (a log stays readable, a terminal is not flooded) and always the last one.
Stdout stays the command's result, so ``--json`` output is never mixed with it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from core.runs.export import ExportStep

__all__ = [
    "AFTER_ENV",
    "EVERY_S",
    "STAGE_WORDS",
    "ProgressLine",
    "StageWatcher",
    "after_s",
    "duration_text",
    "export_progress",
    "progress_text",
    "stage_text",
]

EVERY_S = 2.0
AFTER_ENV = "TRANSFER_STUDIO_PROGRESS_AFTER_S"


def after_s() -> float:
    """Seconds a stage runs before its progress is shown (``AFTER_ENV``, default ``EVERY_S``)."""
    try:
        return max(0.0, float(os.environ.get(AFTER_ENV, EVERY_S)))
    except ValueError:
        return EVERY_S


STAGE_WORDS = {  # a run's stage record, in the words the dashboard's monitor uses
    "scan": "checking images",
    "build": "building the model",
    "runtime": "converting the backbone for the fast runtime (first use only)",
    "features": "computing features",
    "unfreeze": "unfreezing and compiling the model",
}


def duration_text(seconds: float) -> str:
    """``27`` → ``"27 s"``, ``125`` → ``"2 min 5 s"``, ``3725`` → ``"1 h 2 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def progress_text(label: str, done: int, total: int, elapsed_s: float, unit: str = "img") -> str:
    """``label done/total (p%)``, then the rate and the time left once there is a rate."""
    text = f"{label} {done:,}/{total:,}"
    if total > 0:
        text += f" ({done / total:.0%})"
    if done > 0 and elapsed_s > 0:
        rate = done / elapsed_s
        text += f", {rate:.0f} {unit}/s" if rate >= 10 else f", {rate:.1f} {unit}/s"
        if done < total:
            text += f", ETA {duration_text((total - done) / rate)}"
        else:
            text += f", took {duration_text(elapsed_s)}"
    return text


class ProgressLine:
    """``line(done, total)``: prints ``progress_text`` on stderr once the stage has run
    ``after`` seconds (default ``after_s()``), then at most every ``every_s`` seconds, and the
    last call if anything was printed before it. The clock starts at construction."""

    def __init__(
        self,
        label: str,
        unit: str = "img",
        every_s: float = EVERY_S,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        after: float | None = None,
    ) -> None:
        self.label, self.unit, self.every_s = label, unit, every_s
        self.after = after_s() if after is None else after
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self._last: float | None = None

    def __call__(self, done: int, total: int, detail: str | None = None, **_more: Any) -> None:
        """Print the line if due; ``detail`` (what the stage does now) follows it."""
        now = self.clock()
        final = done >= total
        if self._last is None and now - self.started < self.after:
            return  # a short stage stays silent
        if not final and self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        text = progress_text(self.label, done, total, now - self.started, self.unit)
        if detail:
            text += f": {detail}"
        print(text, file=self.stream or sys.stderr, flush=True)


def export_progress(
    stream: TextIO | None = None, after: float | None = None
) -> Callable[[ExportStep], None]:
    """An export's steps (``core.runs.export.ExportStep``) as ``ProgressLine`` lines: formats
    finished of the formats asked for, then the step under way."""
    line = ProgressLine("exporting: formats", unit="format", stream=stream, after=after)

    def on_step(step: ExportStep) -> None:
        done = step.index if step.step == "done" else max(step.index - 1, 0)
        line(done, step.total, detail=None if step.step == "done" else step.text)

    return on_step


def stage_text(record: Mapping[str, Any]) -> str | None:
    """A run's ``stage`` record (what the dashboard's monitor shows) as one progress line:
    ``preparing 3/3: computing features 3,200/10,000 (32%), 250 img/s, ETA 27 s``; None for a
    record that names no stage."""
    kind = record.get("stage")
    if not kind:
        return None
    word = STAGE_WORDS.get(str(kind), str(kind))
    if kind == "build" and record.get("converting"):
        word = "converting the backbone's weights (first use only)"
    if kind == "features" and record.get("activations"):
        word = "running the frozen layers"
    step, steps = record.get("step"), record.get("steps")
    text = f"preparing {step}/{steps}: {word}" if step and steps else word
    done, total = record.get("done"), record.get("total")
    if not isinstance(done, int) or not isinstance(total, int) or total <= 0:
        return text
    text += f" {done:,}/{total:,} ({done / total:.0%})"
    rate, eta = record.get("images_per_s"), record.get("eta_s")
    if isinstance(rate, (int, float)) and rate > 0:
        text += f", {rate:.0f} img/s"
    if isinstance(eta, (int, float)) and done < total:
        text += f", ETA {duration_text(eta)}"
    reused = record.get("reused")
    if isinstance(reused, int) and reused > 0:  # a resumed pass: stored by the last attempt
        text += f" ({reused:,} stored before, not run again)"
    return text


class StageWatcher:
    """While a run trains in this process, its one-off passes (scan, feature or cut pass) as
    ``stage_text`` lines on stderr, from the stage record the trainer writes for the dashboard.

    A context manager: a daemon thread reads the record every ``every_s`` seconds and prints it
    when it changed; leaving the block stops it. It never touches the wait itself.
    """

    def __init__(
        self, store: Any, run_id: str, every_s: float = EVERY_S, stream: TextIO | None = None
    ) -> None:
        self.store, self.run_id, self.every_s, self.stream = store, run_id, every_s, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="stage-watcher")
        self._shown: str | None = None

    def __enter__(self) -> StageWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 1.0)

    def poll(self) -> str | None:
        """Print the run's stage if it changed since the last poll; the line printed, if any."""
        try:
            raw = self.store.get_run(self.run_id).get("stage_json")
            record = json.loads(raw) if raw else None
        except Exception:  # a busy store or a half-written row: the next poll reads it
            return None
        text = stage_text(record) if isinstance(record, dict) else None
        if text is None or text == self._shown:
            return None
        self._shown = text
        print(text, file=self.stream or sys.stderr, flush=True)
        return text

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()
