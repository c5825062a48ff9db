"""Where a run's training reads its inputs from, and why: the one rule, and the sources it picks.

Three input paths, from cheapest to dearest per epoch:

- ``features``: feature extraction. The frozen base runs once per image (or not at all, when
  the feature cache already holds its output); the head trains on the pooled features. With
  augmentation, it runs once over ``augment_views`` views of each training image (the image and
  augmented copies) and each epoch draws one view per image.
- ``activations``: fine-tuning without augmentation. The frozen part of the base runs once per
  image; the head warm-up trains on pooled features, phase 2 on the activations at the freeze
  cut (only the unfrozen layers and the head run each epoch).
- ``images``: everything else. The whole model runs on every image each epoch (augmentation
  changes the images, or the base trains, or the feature cache is off).

``input_path(config)`` is the rule, a pure function of the config (no model; it lives in the
Keras-free ``core.training.input_path`` and is re-exported here): the lint and the
pages use it to say what a run will do. ``choose_source(config, built, n_images)`` applies it to
a built model and returns a ``Source`` that the trainer drives without knowing which it is: the
model each phase trains, its prepared inputs, how it fits, how often it checkpoints.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from core.config import RunConfig
from core.training.input_path import ACTIVATIONS, FEATURES, IMAGES, InputPath, input_path
from core.training.model import HEAD_PHASE, BuiltModel

if TYPE_CHECKING:
    from core.data import DatasetIndex
    from core.training.cut import Cut

__all__ = [
    "CACHED_CHECKPOINT_S",
    "ActivationSource",
    "FeatureSource",
    "ImageSource",
    "Source",
    "StageFn",
    "StageReporter",
    "choose_source",
]

CACHED_CHECKPOINT_S = 5.0  # minimum seconds between checkpoints when epochs read cached inputs
StageFn = Callable[..., None]
# ``reporter(**extra)`` returns ``stage(done, total, **more)``: the pages' progress record of a
# one-off pass over the images (the trainer writes it to the run store).
StageReporter = Callable[..., StageFn]


def _fit_keras(
    model: keras.Model,
    train_ds: Any,
    val_ds: Any,
    callbacks: keras.callbacks.CallbackList,
    epochs: int,
    initial_epoch: int,
    class_weight: np.ndarray | None = None,
    batch: int = 0,
) -> None:
    """``model.fit`` on batches of ``batch`` images; under a strategy of several replicas every
    batch is padded to an even split, the class weights folded into its weights
    (``even_batches``)."""
    from core.data.pipeline import image_errors
    from core.training.callbacks import fit_until_stopped
    from core.training.head_fit import even_batches

    weights = None if class_weight is None else dict(enumerate(map(float, class_weight)))
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        train_ds = even_batches(train_ds, batch, class_weight)
        val_ds = even_batches(val_ds, batch)
        weights = None

    def fit() -> None:
        model.fit(
            train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
            callbacks=callbacks, verbose=0, shuffle=False, class_weight=weights,
        )  # fmt: skip

    with image_errors():  # a file that vanished since the scan is named, not "Graph error"
        fit_until_stopped(fit, callbacks)


class Source(ABC):
    """A run's inputs: prepared once, then read by every phase's fit."""

    kind: str = IMAGES
    stage: str = "inputs"  # the name of ``prepare``'s timing in the run's ``timings``
    checkpoint_every: float = 0.0  # minimum seconds between checkpoints (0: every epoch)

    def __init__(self, config: RunConfig, built: BuiltModel, reason: str) -> None:
        self.config, self.built, self.reason = config, built, reason
        # Images per training step: ``batch_size`` per replica, times the replicas of the
        # strategy the model was built under (1 on one device).
        replicas = 1 if built.strategy is None else int(built.strategy.num_replicas_in_sync)
        self.batch = config.batch_size * replicas
        self.timings: dict[str, float] = {}  # seconds of what ``prepare`` did, by stage
        # Per-class training-loss weights (``config.class_weight``), set by ``prepare``.
        self.class_weight: np.ndarray | None = None
        # The content digests of the data's training then validation files, when the run's
        # split recorded them a moment ago (``RunSplit.digests``): the feature cache's key
        # then costs no ``stat`` per file (0.2 s at 50,000). ``None``: hashed when needed.
        self.digests: list[str] | None = None

    def _weigh_classes(self, data: DatasetIndex) -> None:
        """The class weights of ``config.class_weight`` for ``data``'s training labels."""
        from core.training.head_fit import class_weights

        self.class_weight = class_weights(
            self.config.class_weight, data.train_labels, len(data.class_names)
        )

    @property
    def name(self) -> str:
        """The input path's name (``features``, ``activations`` or ``images``)."""
        return self.kind

    @abstractmethod
    def prepare(self, data: DatasetIndex, reporter: StageReporter) -> None:
        """Make the inputs every epoch reads (pipelines, or a pass of the frozen base)."""

    @abstractmethod
    def model_for(self, phase: str) -> keras.Model:
        """The model ``phase`` trains; all share their layers with the full model."""

    @abstractmethod
    def fit(
        self,
        model: keras.Model,
        callbacks: keras.callbacks.CallbackList,
        epochs: int,
        initial_epoch: int,
    ) -> None:
        """Train ``model`` (``model_for``'s, compiled) up to epoch ``epochs``."""

    def phase_info(self, phase: str) -> dict[str, Any]:
        """What ``phase`` reads, for the run's ``phases`` record."""
        return {"feature_cache": False, "activation_cache": False}

    def val_probabilities(self) -> np.ndarray | None:
        """The trained model's class probabilities of the validation images, in their order,
        when this source can give them without reading the images again; else ``None``."""
        return None


class ImageSource(Source):
    """The images themselves, through the (augmenting) tf.data pipeline, every epoch."""

    kind, stage, checkpoint_every = IMAGES, "inputs", 0.0

    def prepare(self, data: DatasetIndex, reporter: StageReporter) -> None:
        from core.data.pipeline import make_dataset

        started = time.perf_counter()
        self._weigh_classes(data)
        config, size = self.config, self.built.image_size
        self.train_ds = make_dataset(
            data.train_paths, data.train_labels, size, self.batch, training=True,
            augmentations=config.active_augmentations(), seed=config.seed,
        )  # fmt: skip
        self.val_ds = make_dataset(
            data.val_paths, data.val_labels, size, self.batch, training=False
        )
        self.timings[self.stage] = time.perf_counter() - started

    def model_for(self, phase: str) -> keras.Model:
        return self.built.model

    def fit(
        self,
        model: keras.Model,
        callbacks: keras.callbacks.CallbackList,
        epochs: int,
        initial_epoch: int,
    ) -> None:
        _fit_keras(
            model, self.train_ds, self.val_ds, callbacks, epochs, initial_epoch, self.class_weight,
            self.batch,
        )  # fmt: skip


class _HeadOnFeatures(Source):
    """A source whose head phase trains on pooled features in memory (``fit_head``)."""

    checkpoint_every = CACHED_CHECKPOINT_S

    def __init__(self, config: RunConfig, built: BuiltModel, reason: str) -> None:
        super().__init__(config, built, reason)
        from core.training.embeddings import build_head

        # The head model shares its layers with the full model: training it trains the model.
        self.head = build_head(config, built)
        self.train_features: tuple[np.ndarray, Sequence[int]] = (np.zeros((0,)), [])
        self.val_features: tuple[np.ndarray, Sequence[int]] = (np.zeros((0,)), [])

    def _set_features(self, data: DatasetIndex, features: np.ndarray) -> None:
        n = len(data.train_paths)
        self.train_features = (features[:n], data.train_labels)
        self.val_features = (features[n:], data.val_labels)

    def _fit_head(
        self, callbacks: keras.callbacks.CallbackList, epochs: int, initial_epoch: int
    ) -> None:
        from core.training.head_fit import fit_head

        fit_head(
            self.head, self.train_features, self.val_features, batch_size=self.batch,
            epochs=epochs, initial_epoch=initial_epoch, seed=self.config.seed, callbacks=callbacks,
            class_weight=self.class_weight,
        )  # fmt: skip


class FeatureSource(_HeadOnFeatures):
    """Pooled features of the frozen base, computed once (or read from the feature cache)."""

    kind, stage = FEATURES, "features"

    def prepare(self, data: DatasetIndex, reporter: StageReporter) -> None:
        from core.training.embeddings import (
            CONVERT_MIN_ROWS,
            augmented_features_for,
            features_for,
        )

        started = time.perf_counter()
        self._weigh_classes(data)
        config, n = self.config, len(data.train_paths)
        paths = [*data.train_paths, *data.val_paths]
        views = config.augment_views if config.active_augmentations() else 1
        total = len(paths) + (views - 1) * n  # images through the base, augmented views too
        stage = reporter(views=views)
        # The converted runtime, if already there, or if this many images pay for converting.
        runtime: dict[str, Any] = {"convert": total >= CONVERT_MIN_ROWS}

        def part(offset: int) -> Callable[..., None]:
            return lambda done, _total, **more: stage(offset + done, total, **more)

        digests = self.digests if self.digests and len(self.digests) == len(paths) else None
        features, was_cached = features_for(
            config, self.built, paths, part(0), self.timings, runtime, shas=digests
        )
        self._set_features(data, features)
        if views > 1:
            augmented, views_cached = augmented_features_for(
                config, self.built, data.train_paths, part(len(paths)), self.timings, runtime,
                shas=None if digests is None else digests[:n],
            )  # fmt: skip
            # (views, n, width): view 0 is the image itself, the others augmented copies.
            stacked = np.concatenate([features[None, :n], augmented])
            self.train_features = (stacked, data.train_labels)
            was_cached = was_cached and views_cached
        used = runtime.get("runtime")  # None: every pass came from the cache
        if runtime.get("convert_s"):
            self.timings["convert_runtime"] = float(runtime["convert_s"])
        stage(total, total, cached=was_cached, runtime=used)
        self.timings[self.stage] = time.perf_counter() - started

    def model_for(self, phase: str) -> keras.Model:
        return self.head

    def fit(
        self,
        model: keras.Model,
        callbacks: keras.callbacks.CallbackList,
        epochs: int,
        initial_epoch: int,
    ) -> None:
        self._fit_head(callbacks, epochs, initial_epoch)

    def phase_info(self, phase: str) -> dict[str, Any]:
        return {"feature_cache": True, "activation_cache": False}

    def val_probabilities(self) -> np.ndarray | None:
        # The base stayed frozen: the full model on an image is the head on its pooled
        # features, the very features the run's validation accuracy was measured on. (10,000
        # images: 0.1 s, where reading and passing them through the model took 14 s.)
        features = self.val_features[0]
        probs = self.head.predict(features, batch_size=max(self.batch, 256), verbose=0)
        return np.asarray(probs, np.float32)


class ActivationSource(_HeadOnFeatures):
    """Activations at the freeze cut, computed once: the head warm-up reads their pooled
    features, phase 2 the activations (only the unfrozen layers and the head run)."""

    kind, stage = ACTIVATIONS, "activations"

    def __init__(
        self, config: RunConfig, built: BuiltModel, reason: str, cut: Cut, folder: Path
    ) -> None:
        super().__init__(config, built, reason)
        self.cut, self.folder = cut, folder  # ``folder``: where the chunks go

    def prepare(self, data: DatasetIndex, reporter: StageReporter) -> None:
        from core.training.cut import ActivationStore, chunk_rows, pooled_features, store_identity

        started = time.perf_counter()
        self._weigh_classes(data)
        config, cut = self.config, self.cut
        paths = [*data.train_paths, *data.val_paths]
        stage = reporter(activations=list(cut.shape))
        # On disk in chunks (``cut.ActivationStore``): a pass killed mid-way resumes from its
        # last completed chunk; with several replicas each batch is split over them.
        self.store = ActivationStore(
            self.folder, cut.shape, len(paths), store_identity(self.built, cut, paths),
            dtype=cut.dtype, chunk=chunk_rows(),
        )  # fmt: skip
        self.store.fill(
            cut.prefix, paths, self.built.image_size, stage, strategy=self.built.strategy
        )
        reused = min(self.store.reused * self.store.chunk, len(paths))  # images found stored
        stage(len(paths), len(paths), cached=False, reused=reused)
        n = len(data.train_paths)
        self._set_features(data, pooled_features(cut, self.store))
        self.train_ds = self.store.dataset(
            0, n, data.train_labels, self.batch, training=True, seed=config.seed
        )
        self.val_ds = self.store.dataset(n, len(paths), data.val_labels, self.batch, training=False)
        self.timings[self.stage] = time.perf_counter() - started

    def model_for(self, phase: str) -> keras.Model:
        # The head warm-up on pooled features; phase 2, the unfrozen layers and the head.
        return self.head if phase == HEAD_PHASE else self.cut.classifier

    def fit(
        self,
        model: keras.Model,
        callbacks: keras.callbacks.CallbackList,
        epochs: int,
        initial_epoch: int,
    ) -> None:
        if model is self.head:
            self._fit_head(callbacks, epochs, initial_epoch)
        else:
            _fit_keras(
                model, self.train_ds, self.val_ds, callbacks, epochs, initial_epoch,
                self.class_weight, self.batch,
            )  # fmt: skip

    def phase_info(self, phase: str) -> dict[str, Any]:
        head = phase == HEAD_PHASE
        info: dict[str, Any] = {"feature_cache": head, "activation_cache": not head}
        if not head and hasattr(self, "store"):
            info["activation_store"] = self.store.record()
        return info


def choose_source(
    config: RunConfig,
    built: BuiltModel,
    n_images: int,
    path: InputPath | None = None,
    folder: Path | None = None,
) -> Source:
    """The source ``config``'s run trains from, for ``built`` and ``n_images`` images in all.

    ``path``: ``input_path(config)`` if already known. ``folder``: the run's folder (its
    activation cache goes to ``<folder>/activations``). Fine-tuning falls back to images, with
    the reason, when the model can't be cut at the freeze point or the activations would not
    fit on that disk.
    """
    path = path or input_path(config)
    if path.kind == FEATURES:
        return FeatureSource(config, built, path.reason)
    if path.kind == ACTIVATIONS:
        from core.training.cut import ACTIVATION_DIR, plan_cut

        if folder is None:  # not a run's (a test's source): a fresh temporary folder
            import tempfile
            import uuid

            folder = Path(tempfile.gettempdir()) / f"transfer-studio-{uuid.uuid4().hex}"
        where = folder / ACTIVATION_DIR
        cut, why = plan_cut(config, built, n_images, where)
        if cut is not None:
            return ActivationSource(config, built, path.reason, cut, where)
        return ImageSource(config, built, f"the frozen layers' activations can't be stored: {why}")
    return ImageSource(config, built, path.reason)
