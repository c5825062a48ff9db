"""tf.data input pipelines: parallel decode and resize, optional augmentation, batching, prefetch.

Decoding goes through ``core.data.images.load_rgb`` (PIL) rather than ``tf.io.decode_image`` so that
every mode PIL knows (palette, CMYK, 16-bit, EXIF-rotated) becomes RGB exactly as it will at
prediction time.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from core.data.images import file_kind, load_rgb
from core.errors import DataError

__all__ = [
    "AUTOTUNE",
    "MEMORY_CACHE_BYTES",
    "array_dataset",
    "augmentation_layers",
    "data_error_from",
    "image_errors",
    "load_batch",
    "load_checked",
    "make_dataset",
    "views_dataset",
]

AUTOTUNE = tf.data.AUTOTUNE
# Decoded images are cached in memory when they fit in this budget (uint8 pixels).
MEMORY_CACHE_BYTES = 2 * 1024**3
# TensorFlow reports an exception raised inside the tf.data map with its Python traceback, whose
# last line is "core.errors.DataError: <message>"; data_error_from() reads the message back.
_DATA_ERROR_LINE = re.compile(r"(?:^|\n)(?:core\.errors\.)?DataError: ([^\n]+)")
_RESCAN = "start the run again so that the dataset scan sees the files as they are now"


def _check_still_there(path: str) -> None:
    """Explain a file that was a usable image at scan time but is not any more."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as exc:
        raise DataError(
            f"{path!r}: the file disappeared after the dataset scan (it was a usable image when "
            f"the data was loaded, now it is gone). Put it back, or {_RESCAN}."
        ) from exc
    except OSError as exc:
        raise DataError(
            f"{path!r}: cannot be read any more ({exc.strerror or exc}) although it was a "
            f"usable image when the data was loaded. Fix its permissions, or {_RESCAN}."
        ) from exc
    if not stat.S_ISREG(mode):
        raise DataError(
            f"{path!r} is no longer a regular file (it is now a {file_kind(mode)}); it was an "
            f"image when the data was loaded. Put the image back, or {_RESCAN}."
        )


def _load(path: bytes, size: int) -> np.ndarray:
    return load_checked(os.fsdecode(path), int(size))


def load_checked(name: str, size: int) -> np.ndarray:
    """``load_rgb`` of a file the dataset scan found usable; a file gone, changed into another
    kind or unreadable since then is a ``DataError`` that says so."""
    # Stat first: never open a FIFO or a device (that could block the pipeline forever), and name
    # what happened to the file rather than failing on whatever open() says.
    _check_still_there(name)
    try:
        return load_rgb(name, size)
    except DataError:
        _check_still_there(name)  # swapped between the stat and the read: say that instead
        raise


def data_error_from(exc: BaseException) -> DataError | None:
    """The ``DataError`` an image raised inside a tf.data pipeline, from TensorFlow's error.

    TensorFlow turns an exception raised while decoding into an ``UnknownError`` ("Graph
    execution error") that carries the original message in its text; this recovers it, or
    returns None if ``exc`` is not such an error.
    """
    if isinstance(exc, DataError):
        return exc
    if not isinstance(exc, tf.errors.OpError):
        return None
    found = _DATA_ERROR_LINE.findall(getattr(exc, "message", None) or str(exc))
    return DataError(found[-1].strip()) if found else None


@contextlib.contextmanager
def image_errors() -> Iterator[None]:
    """Re-raise an image loading failure inside a tf.data pipeline as its ``DataError``.

    Wrap whatever iterates a ``make_dataset`` pipeline (``model.fit``, ``model.predict``, a
    ``for`` loop): the user then reads which file failed and why, not "Graph execution error".
    """
    try:
        yield
    except tf.errors.OpError as exc:
        error = data_error_from(exc)
        if error is None:
            raise
        raise error from exc


def augmentation_layers(names: Sequence[str], seed: int) -> list[tf.keras.layers.Layer]:
    """Keras layers for the named augmentations, in the order of ``names``.

    The choices and strengths are the usual tutorial recipe: horizontal flip, rotation 0.2,
    zoom 0.1, contrast 0.1; each layer gets its own seed derived from ``seed``.
    """
    import keras

    factories = {
        "flip": lambda: keras.layers.RandomFlip("horizontal", seed=seed),
        "rotation": lambda: keras.layers.RandomRotation(0.2, seed=seed + 1),
        "zoom": lambda: keras.layers.RandomZoom(0.1, seed=seed + 2),
        "contrast": lambda: keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 3),
    }
    return [factories[name]() for name in names]


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    image_size: int,
    batch_size: int,
    *,
    training: bool,
    augmentations: Sequence[str] = (),
    seed: int = 0,
    cache: bool = True,
) -> tf.data.Dataset:
    """Batches of ``(float32 0-255 RGB images, int32 labels)``.

    Training sets are shuffled every epoch (seeded) and augmented when asked; validation sets are
    neither. Decoded images are cached in memory when they fit, so epochs after the first never
    wait on decoding; ``cache=False`` for a dataset read once (a one-off pass of the frozen
    base), where the cache would only hold up to ``MEMORY_CACHE_BYTES`` for nothing.
    """
    ds = _decoded(paths, labels, image_size, cache)
    if training:
        ds = ds.shuffle(max(len(paths), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    if training and augmentations:
        ds = _augmented(ds, augmentations, seed)
    return ds.prefetch(AUTOTUNE)


def views_dataset(
    paths: Sequence[str],
    image_size: int,
    batch_size: int,
    *,
    augmentations: Sequence[str],
    views: int,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of float32 0-255 images: ``views`` augmented passes over ``paths``, in order.

    Row ``v * len(paths) + i`` is view ``v`` of image ``i`` (no shuffling, so the rows line up
    with ``paths``); each image is decoded once. For the frozen base's pass over augmented views.
    """
    ds = _decoded(paths, [0] * len(paths), image_size).repeat(views).batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return _augmented(ds, augmentations, seed).map(lambda x, _y: x).prefetch(AUTOTUNE)


def _decoded(
    paths: Sequence[str], labels: Sequence[int], image_size: int, cache: bool = True
) -> tf.data.Dataset:
    """``(uint8 image, int32 label)`` pairs, decoded in parallel, cached in memory if they fit
    (and ``cache``)."""
    path_tensor = tf.constant([os.fsencode(p) for p in paths], dtype=tf.string)
    ds = tf.data.Dataset.from_tensor_slices((path_tensor, tf.constant(labels, dtype=tf.int32)))

    def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(_load, [path, image_size], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image, label

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache and len(paths) * image_size * image_size * 3 <= MEMORY_CACHE_BYTES:
        ds = ds.cache()
    return ds


def _augmented(ds: tf.data.Dataset, augmentations: Sequence[str], seed: int) -> tf.data.Dataset:
    layers = augmentation_layers(augmentations, seed)

    def augment(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for layer in layers:
            x = layer(x, training=True)
        return x, y

    # In order: the views dataset's rows must line up with its paths.
    return ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=True)


def array_dataset(
    arrays: np.ndarray, labels: Sequence[int], batch_size: int, *, training: bool, seed: int = 0
) -> tf.data.Dataset:
    """Batches of ``(arrays, int32 labels)`` already in memory, shuffled each epoch if training."""
    ds = tf.data.Dataset.from_tensor_slices((arrays, np.asarray(labels, dtype=np.int32)))
    if training:
        ds = ds.shuffle(max(len(labels), 1), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def load_batch(paths: Sequence[str], image_size: int) -> np.ndarray:
    """Decode a few images into one float32 batch (for prediction)."""
    return np.stack([load_rgb(p, image_size) for p in paths]).astype(np.float32)
