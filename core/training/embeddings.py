"""Cached backbone features: run the frozen base once per image, train the head on stored features.

On a CPU the frozen base's forward pass is almost the whole cost of feature extraction, and the
per-epoch pipeline pays it again every epoch. Here, in ``feature_extraction`` mode without
augmentation (``core.training.sources`` decides), the base runs once over train and validation
images; the head (``head_dropout →
head_dense → predictions``) trains on the pooled features. Those head layers are the full model's
own (shared, not copied), so the saved model still takes images.

Features also persist on disk (``<home>/cache/embeddings``), keyed by everything that changes them:
backbone, weights identity, image size, preprocessing, Keras version and the exact file list and
content. A second run on the same data with another head, learning rate or epoch count skips the
backbone entirely. The cache is bounded in size (least recently used entries go first) and safe to
delete at any time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.config import RunConfig
from core.files import TEMP_PREFIX, atomic_path, sha256_file
from core.models.backbones import get_backbone, weights_identity
from core.paths import studio_home
from core.training.model import Backbone, BuiltModel

CACHE_FORMAT = 1
MAX_CACHE_BYTES = int(os.environ.get("TRANSFER_STUDIO_EMBEDDING_CACHE_BYTES", 2 * 1024**3))
FEATURE_BATCH = 32
StageFn = Callable[[int, int], None]


def embedding_cache_dir() -> Path:
    """Folder of the persistent embedding cache (safe to delete)."""
    path = studio_home() / "cache" / "embeddings"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(
    config: RunConfig, image_size: int, paths: Sequence[str], backbone: Backbone | None = None
) -> str | None:
    """Key of the features of ``paths`` under ``config``'s base; ``None`` if not cacheable.

    ``backbone``: the run's resolved backbone (``model.resolve_backbone``), looked up when not
    given.
    """
    if backbone is None:
        backbone = Backbone(
            get_backbone(config.backbone), weights_identity(config.backbone, config.weights)
        )
    if backbone.weights_id is None:
        return None
    parts = {
        "format": CACHE_FORMAT,
        "keras": keras.__version__,
        "backbone": config.backbone,
        "weights": backbone.weights_id,
        "image_size": image_size,
        "preprocessing": backbone.spec.preprocessing,
        "files": [sha256_file(p) for p in paths],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _evict(limit: int) -> None:
    finished = (
        p for p in embedding_cache_dir().glob("*.npy") if not p.name.startswith(TEMP_PREFIX)
    )
    entries = sorted(finished, key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in entries)
    while entries and total > limit:
        victim = entries.pop(0)
        total -= victim.stat().st_size
        victim.unlink(missing_ok=True)


def load_cached(key: str) -> np.ndarray | None:
    """Cached features for ``key`` (marks the entry recently used), else ``None``."""
    path = embedding_cache_dir() / f"{key}.npy"
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    os.utime(path)  # least-recently-used eviction goes by mtime
    return features


def store_cached(key: str, features: np.ndarray) -> None:
    """Write features atomically, then trim the cache to its size bound."""
    folder = embedding_cache_dir()
    with atomic_path(folder / f"{key}.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, features.astype(np.float32), allow_pickle=False)
    _evict(MAX_CACHE_BYTES)


def feature_extractor(built: BuiltModel) -> keras.Model:
    """Raw pixels → pooled base features (the full model up to ``avg_pool``)."""
    return keras.Model(built.model.inputs, built.model.get_layer("avg_pool").output)


def forward_once(
    model: keras.Model, paths: Sequence[str], image_size: int, stage: StageFn | None = None
) -> np.ndarray:
    """``model`` (frozen, inference mode) over every image of ``paths``, in order.

    Parallel decode, batches of ``FEATURE_BATCH``, and a compiled call: an eager call walks the
    layers in Python and is ~3x slower per batch. The output is filled in place (no copies of
    what may be hundreds of MB of activations).
    """
    import tensorflow as tf

    from core.data.pipeline import image_errors, make_dataset

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    ds = make_dataset(paths, [0] * len(paths), image_size, FEATURE_BATCH, training=False)
    shape = tuple(int(d) for d in model.output.shape[1:])
    out = np.empty((len(paths), *shape), np.float32)
    done = 0
    with image_errors():  # a file that changed since the scan: a DataError naming it
        for images, _ in ds:
            batch = forward(images).numpy()
            out[done : done + len(batch)] = batch
            done += len(batch)
            if stage:
                stage(done, len(paths))
    return out


def compute_features(
    built: BuiltModel, paths: Sequence[str], stage: StageFn | None = None
) -> np.ndarray:
    """Run the frozen base once over ``paths``: pooled features, one row per image."""
    return forward_once(feature_extractor(built), paths, built.image_size, stage)


def features_for(
    config: RunConfig,
    built: BuiltModel,
    paths: Sequence[str],
    stage: StageFn | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, bool]:
    """``(features, was_cached)`` of ``paths``, from the persistent cache when possible.

    The key uses the weights identity ``built`` was built with; ``timings["hash"]`` (when given)
    gets the seconds spent on the key (the file digests).
    """
    started = time.perf_counter()
    key = cache_key(config, built.image_size, paths, Backbone(built.spec, built.weights_id))
    if timings is not None:
        timings["hash"] = time.perf_counter() - started
    if key is not None:
        cached = load_cached(key)
        if cached is not None and cached.shape == (len(paths), built.spec.feature_width):
            if stage:
                stage(len(paths), len(paths))
            return cached, True
    features = compute_features(built, paths, stage)
    if key is not None:
        store_cached(key, features)
    return features, False


def build_head(config: RunConfig, built: BuiltModel) -> keras.Model:
    """A model of the full model's head layers alone, on pooled features."""
    inputs = keras.Input((built.spec.feature_width,), name="features")
    x = inputs
    for name in ("head_dropout", "head_dense", "predictions"):
        x = built.model.get_layer(name)(x)  # shared layers: training the head trains the model
    return keras.Model(inputs, x, name="head")


def describe_stage(done: int, total: int, started: float) -> dict[str, Any]:
    """The ``stage`` record the pages show while features are computed."""
    elapsed = time.time() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    return {
        "stage": "features",
        "done": done,
        "total": total,
        "images_per_s": round(rate, 2),
        "eta_s": round((total - done) / rate, 1) if rate > 0 else None,
    }
