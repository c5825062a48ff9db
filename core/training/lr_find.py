"""The learning-rate range test (Smith 2015; fastai's ``lr_find``) for a run's two phases.

The rate grows exponentially from ``min_lr`` to ``max_lr`` over ``steps`` training steps, one
batch each, on a throwaway copy of the run's model; the loss of every batch (before its update)
is recorded and smoothed with fastai's debiased exponential moving average (β = 0.98). The test
ends early once the smoothed loss exceeds 4× its minimum (and 0.04: a loss near 0 after the
head warm-up is not multiplied by noise into "divergence"), or is not finite: the rate has made
training diverge.

The suggestion is fastai's **valley** rule: over the smoothed curve (without its first tenth and
its last 5 points, fastai's trims), take the longest stretch of steadily falling loss (the
longest decreasing subsequence) and suggest the rate two thirds of the way down it: a rate where
the loss falls fast, well before the minimum (the minimum's rate is already too high to train
at, the loss being about to diverge).

- ``phase="head"``: the head on the frozen base's pooled features (from the persistent
  embedding cache when they are there: seconds), as the head phase of every mode trains it.
- ``phase="fine_tune"``: the head is first warmed up as the run would (its ``epochs`` at its
  ``lr``, on features), then the unfrozen layers and the head train from the activations at the
  freeze cut (or, when the model can't be cut there, from the images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.config import RunConfig
from core.errors import ConfigError, DataError
from core.tasks import register_task

__all__ = [
    "DEFAULTS",
    "DIVERGE_FACTOR",
    "LOSS_FLOOR",
    "LR_FIND_TASK",
    "RULE",
    "SMOOTHING",
    "LrFindResult",
    "ProgressFn",
    "StepFn",
    "lr_find",
    "lr_find_task",
    "lr_schedule",
    "phases_for",
    "range_test",
    "range_test_model",
    "start_lr_find",
    "suggest_valley",
]

SMOOTHING = 0.98  # fastai's beta for the smoothed loss
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds this many times its minimum
# ... or this, whichever is higher: after the head warm-up the training loss can start near 0,
# where 4x its minimum is noise, not divergence (0.01 is 99% confidence in the right class).
LOSS_FLOOR = 0.01
DEFAULTS = {  # phase: (min_lr, max_lr, steps)
    "head": (1e-7, 10.0, 100),
    "fine_tune": (1e-8, 1.0, 100),
}
RULE = (
    "valley (fastai): on the smoothed loss without its first tenth and last 5 points, the rate "
    "two thirds of the way down the longest steadily falling stretch"
)
StepFn = Callable[[float, int], float]  # step(lr, i) -> the batch's loss before the update
ProgressFn = Callable[[int, int], None]


@dataclass
class LrFindResult:
    """A range test's curve and the suggested learning rate."""

    phase: str
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    suggested_lr: float | None
    diverged: bool  # the test ended early because the loss blew up
    rule: str = RULE
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"lrs", "losses", "suggested_lr", ...}`` (``python -m core lr-find --json``)."""
        return {
            "lrs": self.lrs,
            "losses": self.losses,
            "suggested_lr": self.suggested_lr,
            "phase": self.phase,
            "raw_losses": self.raw_losses,
            "diverged": self.diverged,
            "rule": self.rule,
            **self.extra,
        }


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """``steps`` rates from ``min_lr`` to ``max_lr``, exponentially spaced."""
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / max(steps - 1, 1))


def range_test(
    step: StepFn,
    min_lr: float,
    max_lr: float,
    steps: int,
    progress: ProgressFn | None = None,
) -> tuple[list[float], list[float], list[float], bool]:
    """Run ``step(lr, i)`` at growing rates: ``(lrs, raw_losses, smoothed, diverged)``."""
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best = 0.0, math.inf
    for i, lr in enumerate(lr_schedule(min_lr, max_lr, steps)):
        loss = float(step(float(lr), i))
        if progress is not None:
            progress(i + 1, steps)
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        smoothed = avg / (1 - SMOOTHING ** (i + 1))
        if not math.isfinite(smoothed):
            return lrs, raw, smooth, True
        lrs.append(float(lr))
        raw.append(loss)
        smooth.append(smoothed)
        best = min(best, smoothed)
        if smoothed > DIVERGE_FACTOR * max(best, LOSS_FLOOR):
            return lrs, raw, smooth, True
    return lrs, raw, smooth, False


def suggest_valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """fastai's ``valley`` suggestion on a smoothed curve (see the module's docstring)."""
    skip_start, skip_end = len(losses) // 10, 5
    xs = list(lrs[skip_start : len(lrs) - skip_end])
    ys = list(losses[skip_start : len(losses) - skip_end])
    if len(ys) < 3:  # too short a curve for a valley: a tenth of the lowest loss's rate
        if not losses:
            return None
        return float(lrs[int(np.argmin(losses))]) / 10
    n = len(ys)
    longest = [1] * n  # length of the longest decreasing run ending at i
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if ys[i] < ys[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    sections = (end - start) / 3
    return float(xs[start + int(sections) + int(sections / 2)])


def _train_step(model: Any, class_weight: np.ndarray | None) -> Callable[..., Any]:
    """A compiled ``step(x, y) -> loss`` of ``model`` with its compiled loss and optimizer."""
    import tensorflow as tf

    optimizer, variables = model.optimizer, model.trainable_variables
    weights = None if class_weight is None else tf.constant(class_weight, tf.float32)

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            sw = None if weights is None else tf.gather(weights, y)
            loss = model.compute_loss(x=x, y=y, y_pred=probs, sample_weight=sw, training=True)
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return step


def _array_batches(x: np.ndarray, y: Sequence[int], batch: int, seed: int) -> Iterator[Any]:
    """Batches of ``(x, y)`` for ever, each epoch in the run's seeded order."""
    from core.training.head_fit import epoch_rows

    labels = np.asarray(y, np.int32)
    epoch = 0
    while True:
        order = epoch_rows(seed, epoch, len(labels))
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            yield x[rows], labels[rows]
        epoch += 1


def range_test_model(
    model: Any,
    batches: Iterator[Any],
    min_lr: float,
    max_lr: float,
    steps: int,
    class_weight: np.ndarray | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[float], list[float], list[float], bool]:
    """The range test of a compiled Keras ``model`` on ``batches`` of ``(x, y)``."""
    train = _train_step(model, class_weight)
    lr_var = model.optimizer.learning_rate

    def step(lr: float, _i: int) -> float:
        lr_var.assign(lr)
        x, y = next(batches)
        return float(train(x, y))

    return range_test(step, min_lr, max_lr, steps, progress)


def lr_find(
    config: RunConfig,
    phase: str = "head",
    *,
    min_lr: float | None = None,
    max_lr: float | None = None,
    steps: int | None = None,
    progress: ProgressFn | None = None,
) -> LrFindResult:
    """The range test of ``config``'s ``phase`` (``"head"`` or ``"fine_tune"``) on its data.

    Defaults per phase in ``DEFAULTS``. Nothing is recorded and no run is made: the model is a
    throwaway copy. ``progress(step, steps)`` follows the test (and not the one-off passes).
    """
    import keras

    from core.data import load_dataset
    from core.training.embeddings import build_head, features_for
    from core.training.head_fit import class_weights, fit_head
    from core.training.model import (
        FINE_TUNE_PHASE,
        HEAD_PHASE,
        SCRATCH_PHASE,
        build_model,
        compile_model,
        resolve_backbone,
        set_phase,
    )

    if phase not in DEFAULTS:
        raise ConfigError(
            f"Learning-rate finder phase {phase!r} is invalid. Expected head (the new head on "
            "the frozen base) or fine_tune (the unfrozen layers)."
        )
    config = config.validate()
    if phase == "fine_tune" and len(config.phases) < 2:
        raise ConfigError(
            f"Mode {config.mode} has no fine-tuning phase to find a rate for. Choose mode "
            "fine_tuning or full_fine_tuning, or find the head's rate.",
            settings=("mode",),
        )
    lo, hi, n = DEFAULTS[phase]
    # Unset means the phase's default; a value given (0 included) is checked, never replaced.
    min_lr = lo if min_lr is None else min_lr
    max_lr = hi if max_lr is None else max_lr
    steps = n if steps is None else steps
    if not (0 < min_lr < max_lr < math.inf) or not 2 <= steps <= 10_000:
        raise ConfigError(
            f"Learning-rate finder range {min_lr:g} to {max_lr:g} over {steps} steps is invalid. "
            "Expected finite rates with 0 < lowest rate < highest rate, and 2 to 10000 steps."
        )
    data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    if not data.train_paths:
        raise DataError(f"No training images in {data.root}.")
    keras.utils.set_random_seed(config.seed)
    weights = class_weights(config.class_weight, data.train_labels, len(data.class_names))
    n_train = len(data.train_paths)
    extra: dict[str, Any] = {"train_images": n_train}
    if config.mode == "scratch":
        # One phase, everything trainable from random weights: the whole model on images.
        built = build_model(config, len(data.class_names))
        set_phase(config, built, SCRATCH_PHASE)
        compile_model(built.model, min_lr)
        lrs, raw, smooth, diverged = range_test_model(
            built.model, _image_batches(config, built, data), min_lr, max_lr, steps, weights,
            progress,
        )  # fmt: skip
        return LrFindResult(
            phase=SCRATCH_PHASE, lrs=lrs, losses=smooth, raw_losses=raw,
            suggested_lr=suggest_valley(lrs, smooth), diverged=diverged,
            extra={**extra, "reads": "images"},
        )  # fmt: skip
    # The frozen base's features are a feature-extraction run's: same weights, same cache key.
    frozen = config.with_changes(mode="feature_extraction")
    built = build_model(config, len(data.class_names), resolve_backbone(frozen))
    set_phase(config, built, HEAD_PHASE)
    features, cached = features_for(frozen, built, [*data.train_paths, *data.val_paths])
    head = build_head(config, built)
    extra["features_cached"] = cached
    if phase == "head":
        compile_model(head, min_lr)
        batches = _array_batches(
            features[:n_train], data.train_labels, config.batch_size, config.seed
        )
        extra["reads"] = "features"
        lrs, raw, smooth, diverged = range_test_model(
            head, batches, min_lr, max_lr, steps, weights, progress
        )
    else:
        # Phase 2 starts from a trained head, as in the run.
        compile_model(head, config.lr)
        fit_head(
            head, (features[:n_train], data.train_labels), (features[n_train:], data.val_labels),
            batch_size=config.batch_size, epochs=config.epochs, seed=config.seed,
            class_weight=weights,
        )  # fmt: skip
        set_phase(config, built, FINE_TUNE_PHASE)
        model, batches, reads = _fine_tune_inputs(config, built, data)
        extra["reads"] = reads
        compile_model(model, min_lr)
        lrs, raw, smooth, diverged = range_test_model(
            model, batches, min_lr, max_lr, steps, weights, progress
        )
        if smooth and smooth[0] < LOSS_FLOOR:
            extra["warning"] = (
                f"The training loss starts at {smooth[0]:.2g} after the head warm-up: the head "
                "already fits the training images, so the curve says little about the "
                "fine-tuning rate. Keep a low rate (1e-5 is the usual one), or warm the head "
                "up for fewer epochs."
            )
    return LrFindResult(
        phase=FINE_TUNE_PHASE if phase == "fine_tune" else HEAD_PHASE,
        lrs=lrs, losses=smooth, raw_losses=raw, suggested_lr=suggest_valley(lrs, smooth),
        diverged=diverged, extra=extra,
    )  # fmt: skip


def _fine_tune_inputs(config: RunConfig, built: Any, data: Any) -> tuple[Any, Iterator[Any], str]:
    """The phase-2 model and its training batches: activations at the freeze cut when the model
    can be cut there (the frozen layers run once), else images through the whole model."""
    from core.training.cut import MEMORY_ACTIVATION_BYTES, compute_activations, plan_cut

    n_train = len(data.train_paths)
    cut, _why = plan_cut(config, built, n_train)
    # A test of a few hundred steps: its activations stay in memory, when they fit.
    if cut is not None and cut.nbytes(n_train, "float32") <= MEMORY_ACTIVATION_BYTES:
        acts = compute_activations(cut, data.train_paths, built.image_size)
        batches = _array_batches(acts, data.train_labels, config.batch_size, config.seed)
        return cut.classifier, batches, "activations"
    return built.model, _image_batches(config, built, data), "images"


def _image_batches(config: RunConfig, built: Any, data: Any) -> Iterator[Any]:
    """The run's training pipeline (augmentation included), for ever."""
    from core.data.pipeline import make_dataset

    ds = make_dataset(
        data.train_paths, data.train_labels, built.image_size, config.batch_size, training=True,
        augmentations=config.active_augmentations(), seed=config.seed,
    ).repeat()  # fmt: skip
    return iter(ds)


LR_FIND_TASK = "lr_find"


def phases_for(config: RunConfig) -> list[str]:
    """The phases whose rate the finder can test for ``config``: the head, and the fine-tuning
    phase for the modes that have one (a scratch run's one phase is its "head" test)."""
    return ["head", "fine_tune"] if len(config.phases) >= 2 else ["head"]


def start_lr_find(
    root: Any, config: RunConfig, phases: Sequence[str] | None = None, steps: int | None = None
) -> bool:
    """``lr_find`` of each of ``phases`` (default ``phases_for(config)``) in a background
    process (``core.tasks.start_task``: ``False`` if one runs for runs folder ``root``). The
    state file holds the settings (``config``, ``phases``, ``steps``), each finished phase's
    result under ``results[phase]`` and the test under way under ``step``."""
    from core.data.sources import check_source
    from core.tasks import start_task

    config = config.validate()
    check_source(config.data)  # a missing folder: said now, on the page, not by a failed task
    wanted = list(phases or phases_for(config))
    for phase in wanted:  # as the data: said now, not by a failed task
        if phase not in DEFAULTS:
            raise ConfigError(
                f"Learning-rate finder phase {phase!r} is invalid. Expected head or fine_tune."
            )
    initial = {
        "config": config.to_dict(), "phases": wanted, "steps": steps, "results": {}, "step": None,
    }  # fmt: skip
    return start_task(root, LR_FIND_TASK, None, initial)


class _Stopped(Exception):
    """A stop was asked for in the middle of a test."""


def lr_find_task(initial: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """The LR finder a task's state describes (``start_lr_find`` put its settings there)."""
    if not isinstance(initial.get("config"), dict):
        raise ConfigError(
            "The learning-rate task's state has no run config. Expected the settings "
            "start_lr_find writes; start the test again from the Train page."
        )
    config = RunConfig.from_dict(initial["config"]).validate()
    wanted = list(initial.get("phases") or phases_for(config))
    steps = initial.get("steps")

    def run(update: Any, should_stop: Callable[[], bool]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for phase in wanted:
            if should_stop():
                break

            def step(done: int, total: int, phase: str = phase) -> None:
                if should_stop():  # a stop ends the test within a step, not after the phase
                    raise _Stopped
                if done % 10 == 0 or done == total:
                    update({"step": {"phase": phase, "done": done, "total": total}})

            try:  # lr_find is looked up at call time: tests replace it with a fast fake
                results[phase] = lr_find(config, phase, steps=steps, progress=step).to_json()
            except _Stopped:
                break
            update({"results": dict(results), "step": None})
        return {"results": results, "step": None}

    return run


register_task(LR_FIND_TASK, lr_find_task)
