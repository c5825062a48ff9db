"""How the commands print: JSON lines, numbers, a run's epochs, sizes on disk."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from core.config import RunConfig

__all__ = ["bytes_text", "epoch_line", "fmt", "print_json", "print_results"]


def print_json(obj: Any) -> None:
    """``obj`` as one JSON line on stdout."""
    print(json.dumps(obj, default=str))


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number for a table (``-`` when unknown)."""
    return "-" if value is None else format(value, spec)


def epoch_line(config: RunConfig) -> Callable[[dict[str, Any]], None]:
    """A progress callback printing one line per finished epoch on stderr."""
    total = config.planned_epochs

    def show(rec: dict[str, Any]) -> None:
        print(
            f"epoch {rec['epoch']}/{total} [{rec['phase']}] loss {fmt(rec.get('loss'))} "
            f"acc {fmt(rec.get('accuracy'))} val_loss {fmt(rec.get('val_loss'))} "
            f"val_acc {fmt(rec.get('val_accuracy'))} ({rec['duration_s']:.1f} s, "
            f"{rec['images_per_s']:.0f} img/s)",
            file=sys.stderr,
            flush=True,
        )

    return show


def bytes_text(size: float) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as file managers show)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # not reached


def print_results(
    results: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]
) -> None:
    """Per-image predictions: JSON, or one line per image."""
    if as_json:
        print_json(results)
        return
    for r in results:
        print(f"{r['image']}: " + ", ".join(line(p) for p in r["predictions"]))
