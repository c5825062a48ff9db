"""TensorBoard event files of every run, in ``runs/<id>/tensorboard/`` (``tf.summary``).

Per finished epoch (the run's own epoch count, continuous across phases): ``loss``,
``accuracy``, ``val_loss``, ``val_accuracy`` and ``lr``; at each phase's start a ``phase`` text
(which phase, from which epoch, at which learning rate) and a ``phase_start`` scalar; at the end
the confusion matrix as an image. ``tensorboard --logdir RUNS_DIR/runs`` shows every run.

Keras' own TensorBoard callback counts epochs from 0 in each ``fit`` call, and a run fits each
phase separately (sometimes without ``fit`` at all: the head on cached features), so the run's
epochs would overlap; this callback writes with the run's epoch number instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.training.callbacks import EPOCH_METRICS, EpochMetrics, current_lr

__all__ = [
    "CELL_PX",
    "CONFUSION_MAX_PX",
    "TENSORBOARD_DIR",
    "confusion_image",
    "tensorboard_callback",
    "tensorboard_dir",
    "TensorBoardEpochs",
    "write_confusion_matrix",
]

TENSORBOARD_DIR = "tensorboard"
CELL_PX = 24  # pixels per confusion-matrix cell in the image
CONFUSION_MAX_PX = 1200  # the image's side at most: many classes get smaller cells
GRID_MIN_PX = 4  # cells smaller than this have no grid lines


def tensorboard_dir(run_dir: Path) -> Path:
    """Where a run's event files go."""
    return run_dir / TENSORBOARD_DIR


class TensorBoardEpochs(keras.callbacks.Callback):
    """Writes one point per finished epoch (and the phase boundary) to the run's event files."""

    def __init__(
        self, run_dir: Path, phase: str, epoch_offset: int, epochs: EpochMetrics | None = None
    ) -> None:
        super().__init__()
        self.logdir = tensorboard_dir(run_dir)
        self.phase, self.epoch_offset = phase, epoch_offset
        self.epochs = epochs  # the EpochMetrics callback: only its recorded epochs are written
        self._writer: Any = None

    def _open(self) -> Any:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.logdir))
        return self._writer

    def on_train_begin(self, logs: dict | None = None) -> None:
        import tensorflow as tf

        start = self.epoch_offset + 1
        lr = current_lr(self.model)
        with self._open().as_default():
            tf.summary.text(
                "phase", f"{self.phase} starts at epoch {start} (learning rate {lr:g})", step=start
            )
            tf.summary.scalar("phase_start", float(start), step=start)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import tensorflow as tf

        if self.epochs is not None and self.epochs.recorded is None:
            return  # cut short by a stop: not an epoch of the run's history
        logs = logs or {}
        step = self.epoch_offset + epoch + 1
        with self._open().as_default():
            for key in EPOCH_METRICS:
                if key in logs:
                    tf.summary.scalar(key, float(logs[key]), step=step)
            tf.summary.scalar("lr", current_lr(self.model), step=step)
        self._writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def tensorboard_callback(
    run_dir: Path, phase: str, epoch_offset: int, callbacks: keras.callbacks.CallbackList
) -> TensorBoardEpochs:
    """The phase's TensorBoard writer, bound to the model of ``callbacks`` and to their epoch
    recorder (an epoch cut short by a stop is not written)."""
    epochs = next((c for c in callbacks.callbacks if isinstance(c, EpochMetrics)), None)
    callback = TensorBoardEpochs(run_dir, phase, epoch_offset, epochs)
    callback.set_model(callbacks.model)
    return callback


def confusion_image(matrix: list[list[int]]) -> np.ndarray:
    """The confusion matrix as an RGB uint8 image: rows true, columns predicted, darker blue for
    a larger share of the row (the counts are in ``evaluation.json``).

    Cells are CELL_PX squares, smaller for many classes so that the image stays within
    CONFUSION_MAX_PX a side (200 classes at 24 px were 4,800 px: 1.9 s to draw and encode).
    """
    m = np.asarray(matrix, np.float64)
    px = max(1, min(CELL_PX, CONFUSION_MAX_PX // max(len(m), 1)))
    rows = np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    share = m / rows
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([31.0, 119.0, 180.0])
    cells = np.rint(white + (blue - white) * share[..., None]).astype(np.uint8)
    image = np.repeat(np.repeat(cells, px, axis=0), px, axis=1)
    if px >= GRID_MIN_PX:  # grid lines; in smaller cells they would hide the colours
        image[::px, :, :] = 200
        image[:, ::px, :] = 200
    return image


def write_confusion_matrix(run_dir: Path, matrix: list[list[int]], step: int) -> None:
    """The final confusion matrix as an image summary at the run's last epoch."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(tensorboard_dir(run_dir)))
    with writer.as_default():
        tf.summary.image("confusion_matrix", confusion_image(matrix)[None], step=step)
    writer.flush()
    writer.close()
