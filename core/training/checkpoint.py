"""A run's checkpoint: the full model's weights and the phase's optimizer state, per epoch.

Three files in the run folder: ``checkpoint.weights.h5`` (the full model, whatever phase or input
path wrote it), ``checkpoint.optimizer.npz`` (Adam's moments and step count) and
``checkpoint.json`` (epoch and phase), written last: it is what makes the others count. Every
write goes to a ``tmp-*`` file first and replaces the old one atomically, so a kill leaves either
the previous checkpoint or the new one; ``remove_temp_files`` clears what the kill left behind.
A completed run's checkpoint is deleted once its model is saved: it is never resumed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.files import atomic_path, atomic_write_text
from core.runs.store import RunStore

__all__ = [
    "META_FILE",
    "OPTIMIZER_FILE",
    "TEMP_PATTERNS",
    "WEIGHTS_FILE",
    "checkpoint_paths",
    "load_checkpoint_weights",
    "remove_checkpoint",
    "remove_temp_files",
    "restore_optimizer",
    "resume_point",
    "save_checkpoint",
]

WEIGHTS_FILE = "checkpoint.weights.h5"
META_FILE = "checkpoint.json"
OPTIMIZER_FILE = "checkpoint.optimizer.npz"  # the phase's optimizer state (Adam moments)
TEMP_PATTERNS = ("tmp-*", "*.tmp", ".*.tmp")  # what an interrupted write leaves in a run folder


def _truncate_open_copies(path: Path) -> None:
    """Empty ``path`` through any descriptor this process still holds on it.

    HDF5 keeps a file open when closing it fails (as it does on a full disk), so unlinking
    alone would not return the space until the process ends.
    """
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return
    target = str(path)
    for fd in fds.iterdir():
        try:
            if os.readlink(fd).removesuffix(" (deleted)") == target:
                os.ftruncate(int(fd.name), 0)
        except (OSError, ValueError):
            continue


def remove_temp_files(folder: Path) -> None:
    """Delete what an interrupted or failed write left behind (never a finished file)."""
    for pattern in TEMP_PATTERNS:
        for path in folder.glob(pattern):
            try:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    _truncate_open_copies(path)
                    path.unlink()
            except OSError:
                pass


def _ensure_room(folder: Path, needed: int) -> None:
    """Fail before a write that cannot fit, rather than leave half a file on a full disk."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            28, f"No space left on device: {needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free"
        )


def _bytes_of(variables: Sequence[Any]) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def checkpoint_paths(store: RunStore, run_id: str) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths of a run's checkpoint."""
    folder = store.run_dir(run_id)
    return folder / WEIGHTS_FILE, folder / META_FILE


def save_checkpoint(
    store: RunStore,
    run_id: str,
    model: keras.Model,
    meta: dict[str, Any],
    optimizer: keras.optimizers.Optimizer | None = None,
) -> None:
    """Weights (and the optimizer's state) after a finished epoch, each file written atomically.

    ``checkpoint.json`` is written last: it is what makes the others count.
    """
    weights, info = checkpoint_paths(store, run_id)
    state_vars = optimizer.variables if optimizer is not None and optimizer.built else []
    # The new files sit beside the old ones until they replace them; 1 MB for HDF5's own.
    _ensure_room(weights.parent, _bytes_of(model.weights) + _bytes_of(state_vars) + 2**20)
    with atomic_path(weights) as tmp:
        model.save_weights(tmp)
    meta = dict(meta)
    if optimizer is not None and optimizer.built:
        with atomic_path(weights.with_name(OPTIMIZER_FILE)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, *[keras.ops.convert_to_numpy(v) for v in optimizer.variables])
        meta["optimizer_variables"] = len(optimizer.variables)
    atomic_write_text(info, json.dumps(meta))


def restore_optimizer(
    store: RunStore, run_id: str, model: keras.Model, meta: dict[str, Any]
) -> bool:
    """Put the checkpointed optimizer state back into ``model``'s fresh optimizer.

    Returns False (the optimizer restarts) when the checkpoint holds no state of the same shape.
    """
    state_path = store.run_dir(run_id) / OPTIMIZER_FILE
    if not meta.get("optimizer_variables") or not state_path.is_file():
        return False
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    with np.load(state_path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = list(optimizer.variables)
    if len(values) != len(variables) or any(
        tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, values, strict=True)
    ):
        return False
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    return True


def resume_point(store: RunStore, run_id: str) -> tuple[int, dict[str, Any]]:
    """Epochs already done by an earlier attempt that a checkpoint backs (0 for a fresh run),
    with the checkpoint's metadata. Metrics past the checkpoint are dropped: they are redone."""
    weights, info = checkpoint_paths(store, run_id)
    if not (weights.is_file() and info.is_file()):
        store.truncate_after(run_id, 0)
        return 0, {}
    meta = json.loads(info.read_text())
    done = int(meta["epoch"])
    store.truncate_after(run_id, done)  # metrics past the checkpoint are redone, not repeated
    return done, meta


def load_checkpoint_weights(store: RunStore, run_id: str, model: keras.Model) -> None:
    """The checkpointed weights into ``model`` (the full model the checkpoint was taken of)."""
    model.load_weights(checkpoint_paths(store, run_id)[0])


def remove_checkpoint(store: RunStore, run_id: str) -> None:
    """Delete a run's checkpoint files (a completed run, its model saved, is never resumed).

    The metadata goes first: without it the other files no longer count as a checkpoint.
    """
    folder = store.run_dir(run_id)
    for name in (META_FILE, WEIGHTS_FILE, OPTIMIZER_FILE):
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError:
            pass  # a leftover checkpoint is harmless: the run is completed
