"""Fine-tuning on activations cached at the freeze cut, on disk in memory-mapped chunks.

In ``fine_tuning`` mode only the base's last layers train; everything before the cut is frozen and
runs in inference mode, so without augmentation its output for an image never changes. Here the
frozen part runs once over train and validation images and its activations go to the run's folder
(``<run>/activations``) as chunk files with a manifest; the head warm-up then trains on pooled
features (as feature extraction does) and phase 2 runs only the unfrozen layers and the head, on
batches read from the memory-mapped chunks by ``tf.data`` (the activations are never all in the
process's memory at once). The models built here share
their layers with the full model, so the saved model still takes images.

Why the run's folder and not the embedding cache: activations at the cut belong to one run's cut
(backbone, image size, unfreeze depth, the run's split), are rarely shared between runs and weigh
up to hundreds of MB per 10,000 images; the embedding cache is a small bounded LRU shared by every
feature-extraction run, which one such entry would empty. In the run's folder they go with the
run: a killed or stopped run resumes its pass from the last completed chunk, and a completed run
deletes them (its model is saved; nothing reads them again).

Chunks are stored in float16 (half the disk and half the reads; the measured accuracy change is
in docs/benchmark.md, figure 14), except a chunk whose values float16 cannot hold, stored float32.
``TRANSFER_STUDIO_ACTIVATION_DTYPE=float32`` stores every chunk in float32.

The cut must be a single tensor through which the unfrozen layers see the frozen ones (true at
block boundaries; a residual connection across the cut would need two). When it is not, or the
activations would not fit on disk (``MAX_ACTIVATION_BYTES``, or the free space of the run's
disk), the run uses the image pipeline and says why (``core.training.sources.choose_source``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.config import RunConfig
from core.errors import ConfigError
from core.files import atomic_path, read_json
from core.training.model import BuiltModel, unfreeze_count

__all__ = [
    "ACTIVATION_DIR",
    "CHUNK_ENV",
    "CHUNK_ROWS",
    "DISK_MARGIN_BYTES",
    "DTYPE_ENV",
    "MANIFEST",
    "MAX_ACTIVATION_BYTES",
    "MEMORY_ACTIVATION_BYTES",
    "ActivationStore",
    "Cut",
    "StageFn",
    "activation_dtype",
    "chunk_rows",
    "compute_activations",
    "plan_cut",
    "pooled_features",
    "remove_activations",
    "store_identity",
]

# The most a run's activation cache may take on disk (``TRANSFER_STUDIO_ACTIVATION_BYTES``).
MAX_ACTIVATION_BYTES = int(os.environ.get("TRANSFER_STUDIO_ACTIVATION_BYTES", 64 * 1024**3))
# What a pass that keeps its activations in memory may hold (the learning-rate finder's).
MEMORY_ACTIVATION_BYTES = 2 * 1024**3
DISK_MARGIN_BYTES = 1024**3  # left free on the run's disk, for checkpoints, the model, the store
ACTIVATION_DIR = "activations"  # inside the run's folder
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CHUNK_ENV = "TRANSFER_STUDIO_ACTIVATION_CHUNK"  # images per chunk (a kill loses at most one)
CHUNK_ROWS = 512
DTYPE_ENV = "TRANSFER_STUDIO_ACTIVATION_DTYPE"
DTYPES = ("float16", "float32")
FLOAT16_LIMIT = float(np.finfo(np.float16).max)
StageFn = Callable[..., None]


def chunk_rows() -> int:
    """Images per chunk file: ``CHUNK_ENV`` if set (tests use a few), else ``CHUNK_ROWS``."""
    text = os.environ.get(CHUNK_ENV, "")
    try:
        rows = int(text) if text else CHUNK_ROWS
    except ValueError:
        rows = 0
    if rows < 1:
        raise ConfigError(f"{CHUNK_ENV}={text!r} is not a number of images: expected e.g. 512.")
    return rows


def activation_dtype() -> str:
    """The dtype activation chunks are stored in (``DTYPE_ENV``, default float16)."""
    value = os.environ.get(DTYPE_ENV, "") or "float16"
    if value not in DTYPES:
        raise ConfigError(f"{DTYPE_ENV}={value!r}: expected float16 or float32.")
    return value


@dataclass
class Cut:
    """The full model split at the freeze cut (all layers shared with it)."""

    index: int  # first unfrozen layer in ``base.layers``
    shape: tuple[int, ...]  # activation shape of one image
    prefix: keras.Model  # raw pixels → activations at the cut (frozen, inference mode)
    classifier: keras.Model  # activations → class probabilities (unfrozen layers + head)
    pooled: keras.Model  # activations → pooled features (the head warm-up's input)
    dtype: str = "float16"  # how the chunks are stored (``activation_dtype``)

    def nbytes(self, images: int, dtype: str | None = None) -> int:
        """Bytes of ``images`` images' activations in ``dtype`` (default the cut's)."""
        return images * math.prod(self.shape) * np.dtype(dtype or self.dtype).itemsize


def _suffix(base: keras.Model, index: int) -> tuple[keras.Model, tuple[int, ...]] | None:
    """``base`` from the cut tensor on, if exactly the layers from ``index`` on need it alone."""
    if not 0 < index < len(base.layers):
        return None
    try:
        cut_tensor = base.layers[index - 1].output  # raises for layers called more than once
        suffix = keras.Model(cut_tensor, base.output)
    except (AttributeError, ValueError):
        return None
    inside = {
        id(layer) for layer in suffix.layers if not isinstance(layer, keras.layers.InputLayer)
    }
    if inside != {id(layer) for layer in base.layers[index:]}:
        return None  # the unfrozen part also reads a tensor from before the cut
    return suffix, tuple(int(d) for d in cut_tensor.shape[1:])


def _free_bytes(folder: Path) -> int:
    """Free bytes on the disk of ``folder`` (or of its nearest existing parent)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def plan_cut(
    config: RunConfig, built: BuiltModel, images: int, folder: Path | None = None
) -> tuple[Cut | None, str | None]:
    """``(cut, None)`` when the model can train on cached activations, else ``(None, reason)``.

    ``folder``: where the activations would go (a run's ``<run>/activations``); its disk must
    keep ``DISK_MARGIN_BYTES`` free once they are written (chunks already there count as
    written). The model's side of the decision; whether the config asks for cached activations
    at all is ``core.training.sources.input_path``'s.
    """
    base = built.base
    index = len(base.layers) - unfreeze_count(config, built)
    found = _suffix(base, index)
    if found is None:
        return None, (
            f"the unfrozen layers (from {base.layers[index].name!r}) don't read the frozen ones "
            "through a single tensor; choose an unfreeze depth at a block boundary"
        )
    suffix, shape = found
    dtype = activation_dtype()
    need = images * math.prod(shape) * np.dtype(dtype).itemsize
    if need > MAX_ACTIVATION_BYTES:
        return None, (
            f"activations at the cut would take {need / 1024**3:.1f} GiB "
            f"(limit {MAX_ACTIVATION_BYTES / 1024**3:.1f} GiB, TRANSFER_STUDIO_ACTIVATION_BYTES)"
        )
    if folder is not None:
        free = _free_bytes(folder) + _folder_bytes(folder) - DISK_MARGIN_BYTES
        if need > free:
            return None, (
                f"activations at the cut would take {need / 1024**3:.1f} GiB on disk and "
                f"{max(free, 0) / 1024**3:.1f} GiB is free in {folder.parent} (after keeping "
                f"{DISK_MARGIN_BYTES / 1024**3:.0f} GiB free); free some space to train on them"
            )
    from core.training.embeddings import build_head

    pixels = keras.Input((built.image_size, built.image_size, 3), name="image")
    x = built.model.get_layer("preprocess")(pixels)
    prefix_base = keras.Model(base.input, base.layers[index - 1].output)
    prefix = keras.Model(pixels, prefix_base(x, training=False), name="frozen_prefix")
    acts = keras.Input(shape, name="activations")
    pooled = built.model.get_layer("avg_pool")(suffix(acts, training=False))
    head = build_head(config, built)
    classifier = keras.Model(acts, head(pooled), name="unfrozen_part")
    cut = Cut(index, shape, prefix, classifier, keras.Model(acts, pooled), dtype)
    return cut, None


def compute_activations(
    cut: Cut, paths: Sequence[str], image_size: int, stage: StageFn | None = None
) -> np.ndarray:
    """Run the frozen prefix once over ``paths``: activations at the cut, one per image, in
    memory (float32). A run's pass goes to disk instead (``ActivationStore``)."""
    from core.training.embeddings import forward_once

    return forward_once(cut.prefix, paths, image_size, stage)


def pooled_features(cut: Cut, activations: Any, batch: int = 256) -> np.ndarray:
    """The base's pooled output for stored activations (what the head warm-up trains on):
    an array, or anything sliced by rows (an ``ActivationStore``), read ``batch`` rows at a
    time."""
    import tensorflow as tf

    forward = tf.function(lambda a: cut.pooled(a, training=False), reduce_retracing=True)
    rows = len(activations)
    parts = [
        forward(np.asarray(activations[i : i + batch], np.float32)).numpy()
        for i in range(0, rows, batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def remove_activations(run_dir: Path) -> None:
    """Delete a run's activation cache (a completed run never reads it again)."""
    shutil.rmtree(run_dir / ACTIVATION_DIR, ignore_errors=True)


@dataclass
class _Chunk:
    file: str
    rows: int
    dtype: str


@dataclass
class ActivationStore:
    """A run's activations at the cut: ``.npy`` chunk files of ``chunk`` images each, written
    atomically in order, and a manifest (also written atomically) listing the completed ones.

    ``fill`` computes what is missing, so a pass killed mid-way resumes from its last completed
    chunk as long as the identity (files, image size, backbone, weights, cut) is unchanged;
    otherwise the folder starts over. Rows are read back through memory maps.
    """

    folder: Path
    shape: tuple[int, ...]
    rows: int
    identity: dict[str, Any]
    dtype: str = "float16"
    chunk: int = CHUNK_ROWS
    chunks: list[_Chunk] = field(default_factory=list)
    reused: int = 0  # chunks found complete on disk by ``fill``
    computed: int = 0  # images ``fill`` ran through the model (the others were stored)
    _maps: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk)

    def __len__(self) -> int:
        return self.rows

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "identity": self.identity,
            "rows": self.rows,
            "shape": list(self.shape),
            "chunk_rows": self.chunk,
            "dtype": self.dtype,
            "chunks": [c.__dict__ for c in self.chunks],
        }

    def _write_manifest(self) -> None:
        with atomic_path(self.folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps(self._manifest(), indent=1), encoding="utf-8")

    def _load(self) -> None:
        """The completed chunks of an earlier attempt with the same identity, else none (and
        an empty folder)."""
        self.chunks = []
        manifest = read_json(self.folder / MANIFEST) if self.folder.is_dir() else None
        same = isinstance(manifest, dict) and all(
            manifest.get(k) == v
            for k, v in {
                "format": MANIFEST_FORMAT, "identity": self.identity, "rows": self.rows,
                "shape": list(self.shape), "chunk_rows": self.chunk, "dtype": self.dtype,
            }.items()
        )  # fmt: skip
        if same and isinstance(manifest, dict):
            for entry in manifest.get("chunks") or []:
                chunk = _Chunk(str(entry["file"]), int(entry["rows"]), str(entry["dtype"]))
                if not (self.folder / chunk.file).is_file():
                    break  # the manifest's chunks are in order: keep those before a gap
                self.chunks.append(chunk)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        keep = {MANIFEST, *(c.file for c in self.chunks)}
        for leftover in self.folder.iterdir():  # a chunk written after the manifest, temporaries
            if leftover.name not in keep:
                leftover.unlink(missing_ok=True)

    def _store(self, index: int, values: np.ndarray) -> None:
        """Write chunk ``index`` atomically, then the manifest that lists it."""
        dtype = self.dtype
        if dtype == "float16" and not float(np.abs(values).max(initial=0.0)) < FLOAT16_LIMIT:
            dtype = "float32"  # values float16 cannot hold: this chunk keeps float32
        name = f"chunk-{index:05d}.npy"
        with atomic_path(self.folder / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, values.astype(dtype), allow_pickle=False)
        self.chunks.append(_Chunk(name, len(values), dtype))
        self._write_manifest()

    def fill(
        self,
        model: keras.Model,
        paths: Sequence[str],
        image_size: int,
        stage: StageFn | None = None,
        strategy: Any = None,
    ) -> None:
        """Run ``model`` (the frozen prefix) over the images of ``paths`` not yet stored,
        chunk by chunk; ``stage(done, total, reused=...)`` counts stored images too."""
        from core.training.embeddings import forward_batches

        self._load()
        self.reused = len(self.chunks)
        start = sum(c.rows for c in self.chunks)
        self.computed = self.rows - start
        if stage:
            stage(start, self.rows, reused=start)
        if start < self.rows:
            buffer = np.empty((min(self.chunk, self.rows - start), *self.shape), np.float32)
            filled, done = 0, start
            for batch in forward_batches(model, paths[start:], image_size, strategy=strategy):
                used = 0
                while used < len(batch):
                    take = min(len(buffer) - filled, len(batch) - used)
                    buffer[filled : filled + take] = batch[used : used + take]
                    filled, used, done = filled + take, used + take, done + take
                    if filled == len(buffer):
                        self._store(len(self.chunks), buffer)
                        filled = 0
                        left = self.rows - done
                        if left and left < len(buffer):
                            buffer = np.empty((left, *self.shape), np.float32)
                if stage:
                    stage(done, self.rows, reused=start)
        self._open()

    def _open(self) -> None:
        self._maps = [
            np.load(self.folder / c.file, mmap_mode="r", allow_pickle=False) for c in self.chunks
        ]

    @property
    def stored_dtype(self) -> str:
        """``float16``, ``float32``, or ``mixed`` (some chunks kept float32)."""
        kinds = {c.dtype for c in self.chunks}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def nbytes(self) -> int:
        return _folder_bytes(self.folder)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (ascending) as float32: one read per chunk touched."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), *self.shape), np.float32)
        which = indices // self.chunk
        for c in np.unique(which):
            mask = which == c
            out[mask] = self._maps[int(c)][indices[mask] - int(c) * self.chunk]
        return out

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Consecutive rows (``store[a:b]``) as float32."""
        start, stop, _ = rows.indices(self.rows)
        return self.take(np.arange(start, stop))

    def dataset(
        self,
        start: int,
        stop: int,
        labels: Sequence[int],
        batch_size: int,
        *,
        training: bool,
        seed: int = 0,
    ) -> Any:
        """A ``tf.data`` dataset of ``(activations, int32 label)`` batches of rows
        ``start:stop`` (``labels`` theirs), read from the memory maps batch by batch; shuffled
        each epoch when ``training``. Each batch's rows are read in ascending order (the order
        of images inside a batch does not change its gradient)."""
        import tensorflow as tf

        n = stop - start
        labels_t = tf.constant(np.asarray(labels, np.int32))
        ds = tf.data.Dataset.range(n)
        if training:
            ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
        shape = self.shape

        def read(rows: np.ndarray) -> np.ndarray:
            return self.take(rows + start)

        def load(idx: Any) -> tuple[Any, Any]:
            idx = tf.sort(idx)
            x = tf.numpy_function(read, [idx], tf.float32, stateful=False)
            return tf.ensure_shape(x, (None, *shape)), tf.gather(labels_t, idx)

        ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def record(self) -> dict[str, Any]:
        """What the run's record says of the cache."""
        return {
            "folder": ACTIVATION_DIR,
            "memory_mapped": True,
            "dtype": self.stored_dtype,
            "chunks": len(self.chunks),
            "chunk_images": self.chunk,
            "reused_chunks": self.reused,
            "computed_images": self.computed,
            "bytes": self.nbytes,
        }


def store_identity(built: BuiltModel, cut: Cut, paths: Sequence[str]) -> dict[str, Any]:
    """What the stored activations depend on: a chunk from another attempt is reused only if
    these match (the files by path, size and modification time)."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {
        "files": digest.hexdigest(),
        "image_size": built.image_size,
        "backbone": built.spec.name,
        "weights": built.weights_id,
        "cut": cut.index,
        "keras": keras.__version__,
        "policy": keras.mixed_precision.global_policy().name,
    }
