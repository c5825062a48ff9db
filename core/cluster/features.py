"""The embedding-cache entry a feature-extraction run would use: found, or computed (locally or
sharded over a Ray cluster) and stored under the key a local pass gives.

The key and the writer are the embedding cache's own (``core.training.embeddings.cache_key``,
``store_cached``): a pass on the cluster leaves exactly the entry a local run of the same
config looks up, so that run (or a later local one) finds it warm. The entry is written once,
after every shard is in: a pass that fails halfway writes nothing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import RunConfig
from core.errors import ConfigError, StudioError

if TYPE_CHECKING:
    from core.cluster.shards import RuntimeFile
    from core.training.search import Candidate

# The driver's Keras work (a model built to check the runtime, the cache writes) is done by one
# pass at a time: several candidates' passes run in threads of one driver, and building Keras
# models from several threads at once is not safe. Their shards run on the cluster meanwhile.
_DRIVER_LOCK = threading.RLock()

__all__ = [
    "FeatureEntry",
    "candidate_passes",
    "ensure_features",
    "feature_config",
    "run_views",
]


@dataclass
class FeatureEntry:
    """What ``features`` prints (``--json``): the entry, and how it was obtained."""

    images: int  # images (and augmented views) through the base for the entry
    shards: int  # 0: computed locally or found in the cache
    ray_nodes: int  # nodes that computed shards (0: none)
    cache_key: str  # the clean pass's key
    seconds: float
    images_per_s: float
    cached: bool  # every part was in the cache already
    views_cache_key: str | None = None  # the augmented views' key (views > 1)
    restarts: int = 0  # actor processes replaced during the pass
    train_images: int = 0
    val_images: int = 0
    prepare_s: float = 0.0  # the driver's scan, file digests and key (before any pass)
    startup_s: float = 0.0  # Ray: until the last actor was up (its backbone or runtime loaded)
    compute_s: float = 0.0  # Ray: the actors' seconds inside shards, summed
    check_s: float = 0.0  # Ray: the driver's check (or conversion) of the runtime it ships
    runtime: str = ""  # what ran the pass: litert or keras ("" when nothing ran)

    def to_json(self) -> dict[str, Any]:
        """The public JSON object (keys are a contract: extend, never rename)."""
        return asdict(self)


def feature_config(
    data: str,
    backbone: str,
    image_size: int | None,
    views: int = 1,
    *,
    weights: str = "imagenet",
    val_split: float | None = None,
    seed: int | None = None,
    augmentations: tuple[str, ...] | None = None,
) -> RunConfig:
    """The feature-extraction run config whose features ``features`` computes."""
    base = RunConfig()
    changes: dict[str, Any] = {
        "data": data, "backbone": backbone, "mode": "feature_extraction", "weights": weights,
        "image_size": image_size, "augment": views > 1, "feature_cache": "auto",
    }  # fmt: skip
    if views > 1:
        changes["augment_views"] = views
    if val_split is not None:
        changes["val_split"] = val_split
    if seed is not None:
        changes["seed"] = seed
    if augmentations is not None:
        changes["augmentations"] = augmentations
    return base.with_changes(**changes).validate()


def run_views(config: RunConfig) -> int:
    """Views per training image a feature-extraction run of ``config`` computes."""
    return config.augment_views if config.active_augmentations() else 1


def ensure_features(
    config: RunConfig,
    *,
    ray: bool,
    shard_rows: int | None = None,
    progress: Callable[[Any], None] | None = None,
    share_nodes: bool = False,
) -> FeatureEntry:
    """Find or compute the cache entries (clean, and augmented views when the config has them)
    a feature-extraction run of ``config`` reads; ``ray``: compute them on the cluster the
    driver is connected to (``core.cluster.connect``), else in this process.

    ``progress(pass)``: called after each shard (``core.cluster.shards.ShardedPass``).
    ``share_nodes``: other passes run on the cluster beside this one (its actors join as they
    come up rather than all before the first shard).
    """
    started = time.perf_counter()
    if config.mode != "feature_extraction":
        raise ConfigError(
            f"Features are cached for feature_extraction runs only, got mode {config.mode!r}.",
            settings=("mode",),
        )
    sharded = _early_actors(config, shard_rows, progress, share_nodes) if ray else None
    try:
        return _ensure(config, sharded, started)
    finally:
        if sharded is not None:
            sharded.close()


def candidate_passes(
    passes: Sequence[tuple[Candidate, RunConfig]],
    done: Callable[[Candidate, FeatureEntry | None, StudioError | None], None] | None = None,
) -> Generator[tuple[Candidate, StudioError | None], None, None]:
    """The search candidates' feature passes, all submitted at once to the cluster the driver
    is connected to (each a sharded pass in a thread of this driver: Ray places their actors as
    nodes free up), each candidate yielded as its pass ends, with its error if it failed
    (``core.training.search.search``'s ``feature_passes``). ``done(candidate, entry, error)``:
    called just before each is yielded.

    Closing the generator early stops waiting: passes under way run to their end (or to the
    driver's disconnect), those not started yet are cancelled.
    """
    if not passes:
        return
    pool = ThreadPoolExecutor(max_workers=len(passes), thread_name_prefix="candidate-pass")
    futures: dict[Future[FeatureEntry], Candidate] = {
        pool.submit(ensure_features, config, ray=True, share_nodes=True): c for c, config in passes
    }
    order = {id(c): i for i, (c, _config) in enumerate(passes)}
    try:
        left = set(futures)
        while left:
            finished, left = wait(left, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: order[id(futures[f])]):
                c, exc = futures[future], future.exception()
                error = (
                    None
                    if exc is None
                    else exc
                    if isinstance(exc, StudioError)
                    else StudioError(f"{type(exc).__name__}: {exc}")
                )
                if done is not None:
                    done(c, future.result() if exc is None else None, error)
                # The caller trains the candidate's heads (and may build a model to time it)
                # holding the driver's Keras lock: no pass builds its check model meanwhile.
                with _DRIVER_LOCK:
                    yield c, error
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _early_actors(
    config: RunConfig, shard_rows: int | None, progress: Any, share_nodes: bool
) -> Any:
    """The sharded pass, its actors started before anything else when what they run is known
    already, so that they load while the driver scans and hashes the files: ``RuntimeEncoder``s
    when the converted runtime is on disk (checked before any shard is sent), Keras actors for
    augmented views; otherwise they start once the driver has decided (``_ensure``)."""
    from core.cluster.shards import ShardedPass
    from core.models.backbones import get_backbone, weights_identity
    from core.training.model import Backbone

    size = config.image_size or get_backbone(config.backbone).default_size
    weights_id = weights_identity(config.backbone, config.weights)
    views = run_views(config)
    runtime = (
        _converted_runtime(Backbone(get_backbone(config.backbone), weights_id), size)
        if views == 1
        else None
    )
    sharded = ShardedPass(
        config.with_changes(image_size=size), weights_id, [], shard_rows=shard_rows,
        progress=progress, runtime=runtime, share_nodes=share_nodes,
    )  # fmt: skip
    if weights_id is not None and (runtime is not None or views > 1):  # else: ``_ensure`` says
        sharded.start()
    return sharded


def _runtime_path(backbone: Any, size: int) -> Path | None:
    """Where the converted runtime of ``backbone`` at ``size`` is kept; ``None`` when a local
    pass would not use one (random weights, mixed precision, the runtime turned off)."""
    import keras

    from core.training import litert
    from core.training.embeddings import identity_of

    identity = identity_of(backbone, size)
    if identity is None or litert.runtime_choice() != "auto":
        return None
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        return None  # the converted runtime is float32: not this run's features
    key = litert.runtime_key(identity)
    if (litert.runtime_dir() / f"{key}.rejected.json").is_file():
        return None
    return litert.runtime_dir() / f"{key}.tflite"


def _converted_runtime(backbone: Any, size: int) -> RuntimeFile | None:
    """The converted runtime on disk, unchecked (``_checked_runtime`` checks it before any
    shard is sent); ``None`` when there is none to use."""
    from core.cluster.shards import RuntimeFile

    path = _runtime_path(backbone, size)
    try:
        content = path.read_bytes() if path is not None else None
    except OSError:
        return None
    if not content:
        return None
    return RuntimeFile(content, hashlib.sha256(content).hexdigest(), size)


def _checked_runtime(
    config: RunConfig, backbone: Any, size: int, paths: list[str], classes: int, convert: bool
) -> RuntimeFile | None:
    """The converted runtime the CPU nodes run, checked here against Keras on the pass's first
    images exactly as a local pass checks it (``core.training.litert.runtime_extractor``), and
    converted first when ``convert`` (a pass large enough to pay for it) and none is on disk;
    ``None``: the nodes run Keras."""
    import keras

    from core.cluster.shards import RuntimeFile
    from core.data.pipeline import load_batch
    from core.training import litert
    from core.training.embeddings import RUNTIME_CHECK_IMAGES, feature_extractor, identity_of
    from core.training.model import build_model

    path = _runtime_path(backbone, size)
    identity = identity_of(backbone, size)
    if path is None or identity is None or not (convert or path.is_file()):
        return None
    keras.utils.set_random_seed(config.seed)
    built = build_model(config.with_changes(image_size=size), classes, backbone)
    sample = load_batch(paths[:RUNTIME_CHECK_IMAGES], size)
    extractor, _info = litert.runtime_extractor(feature_extractor(built), identity, sample)
    if extractor is None:
        return None
    try:
        content = path.read_bytes()  # the file the check loaded
    except OSError:
        return None
    return RuntimeFile(content, hashlib.sha256(content).hexdigest(), size)


def _ensure(config: RunConfig, sharded: Any, started: float) -> FeatureEntry:
    import keras

    from core.data import load_dataset
    from core.training.embeddings import (
        CONVERT_MIN_ROWS,
        augmented_features_for,
        cache_key,
        features_for,
        load_cached,
        store_cached,
        wait_for_stores,
    )
    from core.training.model import build_model, resolve_backbone

    scanning = time.perf_counter()
    with _DRIVER_LOCK:  # the scan may write its cache
        data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    backbone = resolve_backbone(config)
    size = config.image_size or backbone.spec.default_size
    paths = [*data.train_paths, *data.val_paths]
    n_train, views = len(data.train_paths), run_views(config)
    key = cache_key(config, size, paths, backbone)
    views_key = cache_key(config, size, data.train_paths, backbone, views) if views > 1 else None
    prepared = time.perf_counter() - scanning  # the driver's own work: scan, digests, key
    if key is None:
        raise ConfigError(
            f"Features of {config.backbone} with weights {config.weights!r} are not cached "
            "(random weights have no identity to key them on). Use imagenet or a weights file.",
            settings=("weights",),
        )
    width = backbone.spec.feature_width
    total = len(paths) + (views - 1) * n_train
    clean = load_cached(key)
    have_clean = clean is not None and clean.shape == (len(paths), width)
    have_views = views_key is None or _has(load_cached(views_key), (views - 1, n_train, width))
    entry = FeatureEntry(
        images=total, shards=0, ray_nodes=0, cache_key=key, seconds=0.0, images_per_s=0.0,
        cached=have_clean and have_views, views_cache_key=views_key, train_images=n_train,
        val_images=len(data.val_paths), prepare_s=round(prepared, 3),
    )  # fmt: skip
    if entry.cached:
        entry.seconds = round(time.perf_counter() - started, 3)
        return entry
    if sharded is not None:
        # CPU nodes run the converted runtime when only the clean pass is missing (augmented
        # views need Keras); the driver checks it as a local pass would. Actors already running
        # an unchecked runtime from disk start on their shards meanwhile (the check runs in a
        # thread here, beside the pass); nothing is stored before the check has passed.
        light = not have_clean and have_views
        convert = total >= CONVERT_MIN_ROWS

        def check() -> RuntimeFile | None:
            checking = time.perf_counter()
            with _DRIVER_LOCK:
                runtime = _checked_runtime(
                    config, backbone, size, paths, len(data.class_names), convert
                )
            entry.check_s = round(time.perf_counter() - checking, 3)
            return runtime

        plan = {
            "train_rows": 0 if have_views else n_train, "views": 1 if have_views else views,
            "convert": convert, "clean": not have_clean,
        }  # fmt: skip
        result = None
        if light and sharded.runtime is not None:
            with ThreadPoolExecutor(1, thread_name_prefix="runtime-check") as pool:
                checked = pool.submit(check)
                sharded.plan(paths, **plan)
                result = sharded.run()
                runtime = checked.result()
            if runtime is None or runtime.digest != sharded.runtime.digest:
                result = None  # the nodes ran a runtime that failed the check: not stored
                sharded.runtime = runtime
        else:  # Keras actors (started early for augmented views), or a runtime checked now
            runtime = check() if light else None
            if runtime is not None or sharded.runtime is not None:
                sharded.close()  # the actors started (if any) run something else
            sharded.runtime = runtime
        if result is None:
            sharded.plan(paths, **plan)
            result = sharded.run()
        # Written only now, every shard in: a pass that failed halfway left nothing behind.
        with _DRIVER_LOCK:  # the writer trims the cache: one writer at a time
            if not have_clean:
                store_cached(key, result.features)
            if views_key is not None and result.augmented is not None:
                store_cached(views_key, result.augmented)
        entry.shards, entry.ray_nodes = result.shards, result.nodes
        entry.restarts = result.restarts
        entry.startup_s, entry.compute_s = round(result.startup_s, 3), round(result.compute_s, 3)
        entry.runtime = "litert" if sharded.runtime is not None else "keras"
    else:
        keras.utils.set_random_seed(config.seed)
        built = build_model(config, len(data.class_names), backbone)
        request: dict[str, Any] = {"convert": total >= CONVERT_MIN_ROWS}
        features_for(config, built, paths, runtime=request)
        if views > 1:
            augmented_features_for(config, built, data.train_paths, runtime=request)
        # The pass writes the cache on a thread: ensured means written, for whoever reads next.
        wait_for_stores()
        entry.runtime = str(request.get("runtime", "keras"))
    entry.seconds = round(time.perf_counter() - started, 3)
    entry.images_per_s = round(total / entry.seconds, 2) if entry.seconds > 0 else 0.0
    return entry


def _has(array: Any, shape: tuple[int, ...]) -> bool:
    return array is not None and tuple(array.shape) == shape
