"""Cached backbone features: run the frozen base once per image, train the head on stored features.

On a CPU the frozen base's forward pass is almost the whole cost of feature extraction, and the
per-epoch pipeline pays it again every epoch. Here, in ``feature_extraction`` mode
(``core.training.sources`` decides), the base runs once over train and validation images, and
with augmentation once more over ``augment_views - 1`` augmented views of each training image;
the head (``head_dropout → head_dense → predictions``) trains on the pooled features, one view
per image per epoch. Those head layers are the full model's
own (shared, not copied), so the saved model still takes images.

Features also persist on disk (``<home>/cache/embeddings``), keyed by everything that changes them:
backbone, weights identity, image size, preprocessing, Keras version and the exact file list and
content (and for augmented views: the augmentation set, the number of views and the seed). A
second run on the same data with another head, learning rate or epoch count skips the backbone
entirely. The cache is bounded in size (least recently used entries go first) and safe to delete
at any time.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import keras
import numpy as np

from core.config import RunConfig
from core.data.scan_cache import content_hashes
from core.files import TEMP_PREFIX, atomic_path
from core.models.backbones import get_backbone, weights_identity
from core.training.feature_cache import (
    CACHE_FORMAT,
    embedding_cache_dir,
    features_key,
    read_features,
)
from core.training.model import Backbone, BuiltModel

__all__ = [
    "CACHE_FORMAT",
    "CONVERT_MIN_ROWS",
    "FEATURE_BATCH",
    "MAX_CACHE_BYTES",
    "RUNTIME_CHECK_IMAGES",
    "RuntimePick",
    "StageFn",
    "augmented_features_for",
    "build_head",
    "cache_key",
    "compute_features",
    "describe_stage",
    "embedding_cache_dir",
    "feature_extractor",
    "features_for",
    "forward_batches",
    "forward_once",
    "forward_views",
    "identity_of",
    "load_cached",
    "runtime_pick",
    "runtime_identity",
    "store_cached",
    "store_cached_later",
    "wait_for_stores",
]

MAX_CACHE_BYTES = int(os.environ.get("TRANSFER_STUDIO_EMBEDDING_CACHE_BYTES", 2 * 1024**3))
FEATURE_BATCH = 32
StageFn = Callable[..., None]  # stage(done, total, **record): progress of a pass
# The converted LiteRT runtime (core.training.litert) runs the pass about twice as fast, but
# converting costs ~15 s once per backbone, image size and weights: a run converts it only when
# it sends at least this many images through the base (the default run's 408 do: its first run
# in a new home pays ~10 s more, and every later pass at that size runs twice as fast; a tiny
# trial run does not), and uses it whenever it is already converted.
CONVERT_MIN_ROWS = 300
RUNTIME_CHECK_IMAGES = 8  # images of the first batch the runtime must match Keras on
_FORWARD_ATTR = "_studio_forward"  # a model's compiled inference call, kept on the model


def cache_key(
    config: RunConfig,
    image_size: int,
    paths: Sequence[str],
    backbone: Backbone | None = None,
    views: int = 1,
    shas: Sequence[str] | None = None,
) -> str | None:
    """Key of the features of ``paths`` under ``config``'s base; ``None`` if not cacheable.

    ``backbone``: the run's resolved backbone (``model.resolve_backbone``), looked up when not
    given. ``views > 1``: the key of ``views - 1`` augmented views of each image, which also
    depends on the augmentation set and the seed. The key itself is
    ``core.training.feature_cache.features_key`` (which a process without Keras computes too).
    ``shas``: the files' content digests when the caller has them (a run's recorded split),
    one per path; else they are looked up (``content_hashes``).
    """
    if backbone is None:
        backbone = Backbone(
            get_backbone(config.backbone), weights_identity(config.backbone, config.weights)
        )
    if backbone.weights_id is None:
        return None
    # Features computed in float16 (a mixed-precision run) differ slightly from float32 ones:
    # keyed apart. Float32 keeps its old keys; ``distribute`` is never part of the key (the
    # features are the same on one device or many).
    policy = keras.mixed_precision.global_policy()
    augmented = None
    if views > 1:
        augmented = {
            "augmentations": list(config.active_augmentations()),
            "views": views - 1,
            "seed": config.seed,
        }
    return features_key(
        backbone=config.backbone,
        weights_id=backbone.weights_id,
        image_size=image_size,
        preprocessing=backbone.spec.preprocessing,
        # Else the digests the run's split recording just computed: a stat each, not a read.
        shas=list(shas) if shas is not None else content_hashes(list(paths)),
        keras_version=keras.__version__,
        policy=policy.name if policy.compute_dtype != "float32" else None,
        augmented=augmented,
    )


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
    return read_features(key)


def store_cached(key: str, features: np.ndarray) -> None:
    """Write features atomically, then trim the cache to its size bound."""
    folder = embedding_cache_dir()
    with atomic_path(folder / f"{key}.npy") as tmp, open(tmp, "wb") as fh:
        # asarray: float32 features (the usual case) are written as they are, not copied first.
        np.save(fh, np.asarray(features, np.float32), allow_pickle=False)
    _evict(MAX_CACHE_BYTES)


_STORES: list[threading.Thread] = []  # ``store_cached_later``'s writes not yet waited for
_STORES_LOCK = threading.Lock()


def store_cached_later(key: str, features: np.ndarray) -> None:
    """``store_cached`` on a thread, while the caller goes on (a run trains its head meanwhile):
    a 50,000-image entry is 256 MB, up to 0.7 s of writing when the disk's write-back is busy.
    ``wait_for_stores`` waits for it. The cache only saves time: a failed write is reported on
    stderr and leaves no entry, and the run goes on."""

    def write() -> None:
        try:
            store_cached(key, features)
        except Exception as exc:  # e.g. a full disk: the next run computes the features again
            print(f"warning: the features were not cached ({exc})", file=sys.stderr)

    # Not a daemon: a process that ends before ``wait_for_stores`` still finishes the write.
    thread = threading.Thread(target=write, name="transfer-studio-cache-write")
    with _STORES_LOCK:
        _STORES.append(thread)
    thread.start()


def wait_for_stores() -> None:
    """Wait until every ``store_cached_later`` write of this process has ended."""
    with _STORES_LOCK:
        pending = list(_STORES)
        _STORES.clear()
    for thread in pending:
        thread.join()


def feature_extractor(built: BuiltModel) -> keras.Model:
    """Raw pixels → pooled base features (the full model up to ``avg_pool``), one per model:
    a run's passes (clean images, augmented views) share it and its trace."""
    if built.extractor is None:
        pooled = built.model.get_layer("avg_pool").output
        built.extractor = keras.Model(built.model.inputs, pooled)
    return built.extractor


def forward_once(
    model: keras.Model,
    paths: Sequence[str],
    image_size: int,
    stage: StageFn | None = None,
    pick: RuntimePick | None = None,
    strategy: Any = None,
) -> np.ndarray:
    """``model`` (frozen, inference mode) over every image of ``paths``, in order.

    ``pick(first_batch)``: a faster runtime of ``model`` to run instead of Keras, or ``None``.
    ``strategy``: a ``tf.distribute`` strategy (``model`` built in its scope) whose replicas
    each take ``FEATURE_BATCH`` images of every step; ``None``: the default device.
    """
    from core.data.pipeline import make_dataset

    if pick is not None and _replicas(strategy) == 1 and paths:
        out = _runtime_pass(model, paths, image_size, stage, pick)
        if out is not None:
            return out
        pick = None  # asked once: Keras runs the pass
    batch = FEATURE_BATCH * _replicas(strategy)
    # Read once: caching the decoded images would only hold memory (GBs at 25,000 images).
    ds = make_dataset(paths, [0] * len(paths), image_size, batch, training=False, cache=False)
    return _forward(model, ds.map(lambda x, _y: x), len(paths), stage, pick, strategy)


def _runtime_pass(
    model: keras.Model,
    paths: Sequence[str],
    image_size: int,
    stage: StageFn | None,
    pick: RuntimePick,
) -> np.ndarray | None:
    """The pass on the converted runtime ``pick`` gives for the first batch, or None (Keras runs
    it). Its images are decoded by PIL threads one batch ahead (``decoded_batches``, as a Ray
    node's runtime actor does), not by tf.data: measured over 10,000 images at 96 px, the same
    CPU seconds and 25 % less wall time, and steady from pass to pass, where tf.data's threads
    beside the interpreter's on 2 cores let the same 50,000-image pass take 42 s or 82 s."""
    from core.data.images import decoded_batches
    from core.data.pipeline import load_checked

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        batches = decoded_batches(paths, image_size, FEATURE_BATCH, pool, load=load_checked)
        first = next(batches).astype(np.float32)
        runtime = pick(first)
        if runtime is None:
            batches.close()
            return None
        rest = (runtime(b.astype(np.float32)) for b in batches)
        return _filled(model, itertools.chain([runtime(first)], rest), len(paths), stage)


def forward_views(
    model: keras.Model,
    paths: Sequence[str],
    image_size: int,
    augmentations: Sequence[str],
    views: int,
    seed: int,
    stage: StageFn | None = None,
    pick: RuntimePick | None = None,
    strategy: Any = None,
) -> np.ndarray:
    """``model`` over ``views`` augmented views of each image: shape ``(views, n, ...)``.
    ``strategy``: as for ``forward_once``."""
    from core.data.pipeline import views_dataset

    batch = FEATURE_BATCH * _replicas(strategy)
    ds = views_dataset(
        paths, image_size, batch, augmentations=augmentations, views=views, seed=seed
    )
    out = _forward(model, ds, views * len(paths), stage, pick, strategy)
    return out.reshape(views, len(paths), *out.shape[1:])


def _compiled(model: keras.Model) -> Any:
    """``model``'s compiled inference call, traced once per model (not once per pass); kept on
    the model, so it goes with it."""
    import tensorflow as tf

    forward = getattr(model, _FORWARD_ATTR, None)
    if forward is None:
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        setattr(model, _FORWARD_ATTR, forward)
    return forward


def _replicas(strategy: Any) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def _distributed(model: keras.Model, strategy: Any) -> Callable[[Any], Any]:
    """``model``'s inference call with each batch split over ``strategy``'s replicas: a
    ``tf.function`` taking a distributed batch, returning the replicas' outputs concatenated
    in replica order, which is the batch's own order (``experimental_distribute_dataset``
    gives replica ``i`` the ``i``-th slice of each global batch)."""
    import tensorflow as tf

    @tf.function
    def step(batch: Any) -> tf.Tensor:
        out = strategy.run(lambda x: model(x, training=False), args=(batch,))
        return tf.concat(strategy.experimental_local_results(out), axis=0)

    return step


def forward_batches(
    model: keras.Model,
    paths: Sequence[str],
    image_size: int,
    pick: RuntimePick | None = None,
    strategy: Any = None,
) -> Iterator[np.ndarray]:
    """``forward_once``, a batch at a time (nothing kept): for a pass whose output is written
    out as it comes (the activation cache at the freeze cut)."""
    from core.data.pipeline import make_dataset

    batch = FEATURE_BATCH * _replicas(strategy)
    # Read once: caching the decoded images would only hold memory (GBs at 25,000 images).
    ds = make_dataset(paths, [0] * len(paths), image_size, batch, training=False, cache=False)
    yield from _batches(model, ds.map(lambda x, _y: x), pick, strategy)


def _batches(
    model: keras.Model, images: Any, pick: RuntimePick | None = None, strategy: Any = None
) -> Iterator[np.ndarray]:
    """``model`` over a dataset of image batches, in order, one output batch at a time.

    Batches of ``FEATURE_BATCH`` and a compiled call: an eager call walks the layers in Python
    and is ~3x slower per batch; or the runtime ``pick`` returns for the first batch.
    With a ``strategy`` of several replicas, every batch is split over them (``pick`` is not
    used: the converted runtime runs on the host CPU alone).
    """
    from core.data.pipeline import image_errors

    if _replicas(strategy) > 1:
        forward = _distributed(model, strategy)
        images = strategy.experimental_distribute_dataset(images)
        pick = None
    else:
        forward = _compiled(model)
    runtime: Callable[[np.ndarray], np.ndarray] | None = None
    first = True
    with image_errors():  # a file that changed since the scan: a DataError naming it
        for batch in images:
            if first and pick is not None:
                runtime = pick(batch.numpy())
            first = False
            yield runtime(batch.numpy()) if runtime else np.asarray(forward(batch))


def _forward(
    model: keras.Model,
    images: Any,
    rows: int,
    stage: StageFn | None,
    pick: RuntimePick | None = None,
    strategy: Any = None,
) -> np.ndarray:
    """``model`` over a dataset of image batches (``rows`` images in all), in order
    (``_batches``)."""
    return _filled(model, _batches(model, images, pick, strategy), rows, stage)


def _filled(
    model: keras.Model, results: Iterable[np.ndarray], rows: int, stage: StageFn | None
) -> np.ndarray:
    """``model``'s output for ``rows`` images from its batches ``results``, filled in place (no
    copies of what may be hundreds of MB), with progress after each batch."""
    from core.training.head_fit import aligned_empty

    shape = tuple(int(d) for d in model.output.shape[1:])
    out = aligned_empty((rows, *shape))  # a head trains on it without a copy (features_tensor)
    done = 0
    for result in results:
        out[done : done + len(result)] = result
        done += len(result)
        if stage:
            stage(done, rows)
    return out


def compute_features(
    built: BuiltModel, paths: Sequence[str], stage: StageFn | None = None
) -> np.ndarray:
    """Run the frozen base once over ``paths``: pooled features, one row per image."""
    return forward_once(
        feature_extractor(built), paths, built.image_size, stage, strategy=built.strategy
    )


def features_for(
    config: RunConfig,
    built: BuiltModel,
    paths: Sequence[str],
    stage: StageFn | None = None,
    timings: dict[str, float] | None = None,
    runtime: dict[str, Any] | None = None,
    shas: Sequence[str] | None = None,
) -> tuple[np.ndarray, bool]:
    """``(features, was_cached)`` of ``paths``, from the persistent cache when possible.

    The key uses the weights identity ``built`` was built with; ``timings["hash"]`` (when given)
    gets the seconds spent on the key (the file digests). ``runtime`` (when given): a request
    for the converted runtime (``{"convert": bool}``: may it convert now), filled in with what
    the pass ran on (``core.training.litert.runtime_extractor``'s info). ``shas``: the files'
    content digests, when the caller has them (``cache_key``).
    """
    return _cached(config, built, paths, 1, stage, timings, runtime, shas)


def augmented_features_for(
    config: RunConfig,
    built: BuiltModel,
    paths: Sequence[str],
    stage: StageFn | None = None,
    timings: dict[str, float] | None = None,
    runtime: dict[str, Any] | None = None,
    shas: Sequence[str] | None = None,
) -> tuple[np.ndarray, bool]:
    """``(features, was_cached)`` of ``config.augment_views - 1`` augmented views of each of
    ``paths`` (shape ``(views - 1, n, width)``), from the persistent cache when possible.
    ``runtime``, ``shas``: as for ``features_for``."""
    return _cached(config, built, paths, config.augment_views, stage, timings, runtime, shas)


def _cached(
    config: RunConfig,
    built: BuiltModel,
    paths: Sequence[str],
    views: int,
    stage: StageFn | None,
    timings: dict[str, float] | None,
    runtime: dict[str, Any] | None = None,
    shas: Sequence[str] | None = None,
) -> tuple[np.ndarray, bool]:
    started = time.perf_counter()
    backbone = Backbone(built.spec, built.weights_id)
    key = cache_key(config, built.image_size, paths, backbone, views, shas)
    if timings is not None:
        timings["hash"] = timings.get("hash", 0.0) + time.perf_counter() - started
    extra, width = views - 1, built.spec.feature_width
    shape = (extra, len(paths), width) if extra else (len(paths), width)
    if key is not None:
        cached = load_cached(key)
        if cached is not None and cached.shape == shape:
            if stage:
                rows = len(paths) * max(extra, 1)
                stage(rows, rows)
            return cached, True
    model = feature_extractor(built)
    pick = runtime_pick(model, built, runtime, stage) if runtime is not None else None
    if runtime is not None and _replicas(built.strategy) > 1:
        runtime.update(runtime="keras", reason="distribute=mirrored: every replica runs the pass")
    if extra:
        features = forward_views(
            model, paths, built.image_size, config.active_augmentations(), extra, config.seed,
            stage, pick, built.strategy,
        )  # fmt: skip
    else:
        features = forward_once(model, paths, built.image_size, stage, pick, built.strategy)
    if key is not None:
        store_cached_later(key, features)  # the run waits for it before it ends
    return features, False


RuntimePick = Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray] | None]


def runtime_identity(built: BuiltModel) -> dict[str, object] | None:
    """What determines the feature extractor's function, for its converted runtime's key;
    ``None`` for random weights (nothing to key on)."""
    return identity_of(Backbone(built.spec, built.weights_id), built.image_size)


def identity_of(backbone: Backbone, image_size: int) -> dict[str, object] | None:
    """``runtime_identity`` of a model of ``backbone`` at ``image_size``, without building it
    (a Ray driver finds the converted runtime it ships to its nodes by it)."""
    if backbone.weights_id is None:
        return None
    return {
        "backbone": backbone.spec.name,
        "weights": backbone.weights_id,
        "image_size": image_size,
        "preprocessing": backbone.spec.preprocessing,
        "output": "avg_pool",
    }


def runtime_pick(
    model: keras.Model, built: BuiltModel, request: dict[str, Any], stage: StageFn | None
) -> RuntimePick:
    """``pick(sample)``: the converted runtime of ``model`` if allowed and checked on ``sample``
    (recording what was used in ``request``), else ``None`` for Keras."""

    def pick(sample: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        from core.training import litert

        identity = runtime_identity(built)
        if identity is None:
            request.update(runtime="keras", reason="random weights")
            return None
        if keras.mixed_precision.global_policy().compute_dtype != "float32":
            # The converted runtime is float32: it would not compute this run's features.
            request.update(runtime="keras", reason="mixed precision")
            return None
        if _gpu_visible():
            # The converted runtime runs on the CPU: faster than Keras there, not than a GPU.
            request.update(runtime="keras", reason="a GPU runs the pass")
            return None
        converted = (litert.runtime_dir() / f"{litert.runtime_key(identity)}.tflite").is_file()
        if not converted and not request.get("convert"):
            request.update(runtime="keras", reason="not converted; too few images to pay for it")
            return None

        def converting(_what: str) -> None:
            if stage:
                stage(0, len(sample), stage="runtime")

        # The check runs Keras eagerly (~0.15 s an image at 224 px): 8 images are plenty.
        check = sample[:RUNTIME_CHECK_IMAGES]
        extractor, info = litert.runtime_extractor(model, identity, check, converting)
        spent = float(request.get("convert_s") or 0.0) + float(info.get("convert_s") or 0.0)
        request.update(info, convert_s=spent)  # a run's passes: conversion seconds add up
        return extractor

    return pick


def _gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def build_head(config: RunConfig, built: BuiltModel) -> keras.Model:
    """A model of the full model's head layers alone, on pooled features."""
    inputs = keras.Input((built.spec.feature_width,), name="features")
    x = inputs
    for name in ("head_dropout", "head_dense", "predictions"):
        x = built.model.get_layer(name)(x)  # shared layers: training the head trains the model
    return keras.Model(inputs, x, name="head")


def describe_stage(done: int, total: int, started: float, skipped: int = 0) -> dict[str, Any]:
    """The ``stage`` record the pages show while features are computed; ``skipped`` of the
    ``done`` images were found stored (a resumed pass): the rate counts the others."""
    elapsed = time.time() - started
    rate = (done - skipped) / elapsed if elapsed > 0 and done > skipped else 0.0
    return {
        "stage": "features",
        "done": done,
        "total": total,
        "images_per_s": round(rate, 2),
        "eta_s": round((total - done) / rate, 1) if rate > 0 else None,
        "t": time.time(),  # a resumed run's page ignores the previous attempt's stage by it
    }
