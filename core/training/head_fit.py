"""Trains the classifier head on cached features: one compiled call per epoch.

With the frozen base's features already computed, the head (dropout → dense → softmax) is a
tiny model, and Keras ``fit`` spends most of its time in per-step bookkeeping (iterator, metric
and callback plumbing): about twice what the arithmetic needs on a 2-core CPU, and with 10
epochs that bookkeeping alone would cap the warm-cache speed-up well below the benchmark's
target. Here each epoch is a single ``tf.function`` call that walks a seeded permutation of the
in-memory features, applying the compiled model's own optimizer and its compiled loss (what
``compile_model`` set, plus any regularisation losses, as ``fit`` computes it); validation is
part of the same call. The default optimizer, plain Adam, runs as TensorFlow's fused kernel
(``fused_adam``): the same update, without Keras's dozen elementwise ops per weight.

Callbacks are dispatched through a ``keras.callbacks.CallbackList`` as ``fit`` does, with
``on_train_batch_end`` once per epoch carrying the epoch's last batch index, which is what Keras
itself does with ``steps_per_execution``, so metrics, stop requests and checkpoints work as for
``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # Keras (TensorFlow) loads on first fit: ``epoch_rows`` and
    import keras  # ``class_weights`` serve a search whose features are all cached without it.

__all__ = [
    "aligned_empty",
    "class_weights",
    "epoch_rows",
    "fit_head",
    "even_batches",
    "features_tensor",
    "fused_adam",
]


def _compiled_epoch(
    head: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    batch: int,
    class_weight: np.ndarray | None = None,
) -> tuple[Callable[[np.ndarray], Any], int]:
    """A compiled ``epoch(order) -> (loss, accuracy, val_loss, val_accuracy)`` and its steps.

    ``order``: the epoch's training rows, one per image. Training and validation are one traced
    function: one trace per run, one call per epoch. ``class_weight[c]`` weighs class ``c``'s
    training loss (as ``fit(class_weight=...)`` does: validation stays unweighted).
    """
    import tensorflow as tf

    # Views ``(k, n, width)`` are flattened to rows ``v * n + i``; ``order`` picks one per image.
    n, n_val = len(train[1]), int(val[0].shape[0])
    x = features_tensor(train[0].reshape(-1, train[0].shape[-1]))
    views = train[0].shape[0] if train[0].ndim == 3 else 1
    y = tf.constant(np.tile(train[1], views), tf.int32)
    x_val, y_val = features_tensor(val[0]), tf.constant(val[1], tf.int32)
    steps = math.ceil(n / batch)
    optimizer = head.optimizer
    variables = head.trainable_variables
    weights = None if class_weight is None else tf.constant(class_weight, tf.float32)

    def hits(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
        same = tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels)
        return tf.reduce_sum(tf.cast(same, tf.float32))

    # Keras's update is a dozen elementwise passes over every weight per step (Adam's moments,
    # the step), memory-bound at a head's batch of 32. The default optimizer (plain Adam) runs
    # as TensorFlow's fused, multi-threaded kernel instead (``fused_adam``); any other is
    # compiled with XLA, which fuses its passes into one. Measured on 40,000 features, 200
    # classes, 3 epochs: Keras's ops 5.3 s, XLA 3.4-4.1 s (0.4-0.9 s of it compiling), fused
    # 2.7-2.8 s, the same losses. (The step's batch has a dynamic size, the last one smaller:
    # only the update, whose shapes are the weights', is compiled.)
    apply = fused_adam(optimizer, variables)
    if apply is None:
        apply = tf.function(
            lambda gradients: optimizer.apply(gradients, variables), jit_compile=True
        )

    # An explicit loop, without AutoGraph: converting this function's source cost 0.7 s of
    # the first epoch (its trace: 0.9 s of a 50,000-image run's 4 s of training).
    @tf.function(autograph=False)
    def epoch(order: tf.Tensor) -> tuple[tf.Tensor, ...]:
        def step(i: tf.Tensor, loss_sum: tf.Tensor, correct: tf.Tensor) -> tuple[tf.Tensor, ...]:
            rows = order[i * batch : tf.minimum((i + 1) * batch, n)]
            xb, yb = tf.gather(x, rows), tf.gather(y, rows)
            with tf.GradientTape() as tape:
                probs = head(xb, training=True)
                # The compiled loss, regularisers included, as ``fit``'s train step computes
                # it. Class weights as ``fit`` applies them: sum(w_i * loss_i) / batch size.
                sw = None if weights is None else tf.gather(weights, yb)
                loss = head.compute_loss(x=xb, y=yb, y_pred=probs, sample_weight=sw, training=True)
                # Mixed precision: the compiled optimizer is a LossScaleOptimizer, whose
                # ``apply`` unscales gradients of the scaled loss (identity otherwise).
                scaled = optimizer.scale_loss(loss)
            apply(tape.gradient(scaled, variables))
            loss_sum += loss * tf.cast(tf.shape(rows)[0], tf.float32)
            return i + 1, loss_sum, correct + hits(yb, probs)

        zero = tf.constant(0.0)
        _, loss_sum, correct = tf.while_loop(
            lambda i, *_: i < steps, step, (tf.constant(0), zero, zero)
        )
        if n_val == 0:
            return loss_sum / n, correct / n
        val_probs = head(x_val, training=False)
        val_loss = head.compute_loss(x=x_val, y=y_val, y_pred=val_probs, training=False)
        return loss_sum / n, correct / n, val_loss, hits(y_val, val_probs) / n_val

    return epoch, steps


def fused_adam(
    optimizer: keras.optimizers.Optimizer, variables: Sequence[keras.Variable]
) -> Callable[[Sequence[Any]], None] | None:
    """``optimizer.apply(gradients, variables)`` as TensorFlow's fused Adam kernel
    (``ResourceApplyAdam``, one multi-threaded op per variable), or ``None`` when ``optimizer``
    is not a plain Keras Adam that the kernel computes exactly (AMSGrad, weight decay,
    clipping, EMA, gradient accumulation, loss scaling, constraints: Keras's own update).

    Both compute ``m += (g - m)(1 - β1)``, ``v += (g² - v)(1 - β2)`` and
    ``w -= lr·√(1 - β2ᵗ)/(1 - β1ᵗ) · m / (√v + ε)``, on the optimizer's own moment variables
    and step counter, so a checkpoint saves and restores them as usual. The moments are
    Keras's private slots: a Keras without them gets Keras's update (``None``).
    """
    import keras
    import tensorflow as tf

    plain = (
        type(optimizer) is keras.optimizers.Adam
        and not optimizer.amsgrad
        and not optimizer.weight_decay
        and optimizer.clipnorm is None
        and optimizer.clipvalue is None
        and optimizer.global_clipnorm is None
        and not optimizer.use_ema
        and not optimizer.gradient_accumulation_steps
        and optimizer.loss_scale_factor is None
        and all(
            v.constraint is None
            and v.dtype == "float32"
            and not getattr(v, "overwrite_with_gradient", False)
            for v in variables
        )
    )
    if not plain or not variables:
        return None
    try:
        if not optimizer.built:
            optimizer.build(list(variables))
        slots = [
            (
                variable.value.handle,
                optimizer._momentums[optimizer._get_variable_index(variable)].value.handle,
                optimizer._velocities[optimizer._get_variable_index(variable)].value.handle,
            )
            for variable in variables
        ]
    except (AttributeError, KeyError, IndexError):  # another Keras's internals
        return None
    beta_1 = tf.constant(optimizer.beta_1, tf.float32)
    beta_2 = tf.constant(optimizer.beta_2, tf.float32)
    epsilon = tf.constant(optimizer.epsilon, tf.float32)

    def apply(gradients: Sequence[Any]) -> None:
        lr = tf.cast(optimizer.learning_rate, tf.float32)  # a schedule's value at this step
        step = tf.cast(optimizer.iterations + 1, tf.float32)
        powers = {"beta1_power": tf.pow(beta_1, step), "beta2_power": tf.pow(beta_2, step)}
        for (var, m, v), gradient in zip(slots, gradients, strict=True):
            if gradient is None:  # a weight the loss does not reach: Keras skips it too
                continue
            tf.raw_ops.ResourceApplyAdam(
                var=var, m=m, v=v, lr=lr, beta1=beta_1, beta2=beta_2, epsilon=epsilon,
                grad=gradient, **powers,
            )  # fmt: skip
        optimizer.iterations.assign_add(1)

    return apply


# TensorFlow's CPU kernels need their buffers aligned to this many bytes (Eigen's maximum).
TENSOR_ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting at a TENSOR_ALIGN boundary: a buffer TensorFlow can
    adopt without copying (``features_tensor``). A pass of the frozen base fills one."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + TENSOR_ALIGN, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _adoptable(array: np.ndarray) -> bool:
    return (
        array.dtype == np.float32
        and array.flags.c_contiguous
        and array.flags.writeable  # NumPy exports no read-only array through DLPack
        and array.ctypes.data % TENSOR_ALIGN == 0
        and array.size > 0
    )


def features_tensor(features: np.ndarray) -> Any:
    """``features`` as a float32 tensor on the same memory where it can be: through DLPack, an
    aligned float32 array is adopted, not copied; any other is copied into an aligned one first.

    ``tf.constant`` copies into memory of TensorFlow's own allocator, which the kernel maps a
    page at a time: 0.35-0.7 s for 40,000 × 1,280 features (0.2 GB) on this VM. A pass of the
    frozen base fills an aligned array (``aligned_empty``), which the head then trains on as it
    is. TensorFlow's kernels abort the process on a misaligned buffer, hence the copy for
    others. The features must not change while the tensor is in use (nothing writes to them
    after their pass).
    """
    import tensorflow as tf

    source = np.asarray(features)
    if not _adoptable(source):
        if not source.size:  # DLPack of an empty array: nothing to share
            return tf.constant(source, tf.float32)
        aligned = aligned_empty(source.shape)
        np.copyto(aligned, source)  # one copy, converting another dtype on the way
        source = aligned
    return tf.experimental.dlpack.from_dlpack(source.__dlpack__())


def epoch_rows(seed: int, epoch: int, n: int, views: int = 1) -> np.ndarray:
    """The training rows of ``epoch``: each of ``n`` images once, in a seeded random order, as
    one of its ``views`` drawn at random (row ``v * n + i``).

    Seeded per epoch: a resumed run shuffles its remaining epochs as an unbroken one would.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if views > 1:
        order = order + n * rng.integers(0, views, n)[order]
    return order.astype(np.int32)


def fit_head(
    head: keras.Model,
    train: tuple[np.ndarray, Sequence[int]],
    val: tuple[np.ndarray, Sequence[int]],
    *,
    batch_size: int,
    epochs: int,
    initial_epoch: int = 0,
    seed: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] | keras.callbacks.CallbackList = (),
    class_weight: Sequence[float] | np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Train a compiled ``head`` on features for ``epochs`` (like ``fit``); returns the history.

    ``train[0]``: features ``(n, width)``, or views ``(k, n, width)`` of each image (e.g. the
    image and augmented copies), of which each epoch trains on one per image, drawn at random.

    ``callbacks``: a list (composed here into a ``CallbackList`` bound to ``head``) or a
    ``CallbackList`` already bound to it. Stops after the current epoch when a callback sets
    ``head.stop_training``.

    ``class_weight``: one weight per class (``class_weights``), applied to the training loss as
    Keras ``fit`` applies its ``class_weight``; ``None`` weighs every image the same.
    """
    import keras

    x_train = np.asarray(train[0], np.float32)
    y_train = np.asarray(train[1], np.int32)
    x_val = np.asarray(val[0], np.float32)
    y_val = np.asarray(val[1], np.int32)
    if getattr(head, "optimizer", None) is None or getattr(head, "_compile_loss", None) is None:
        raise ValueError("fit_head needs a compiled head model (call compile_model first).")
    views = x_train.shape[0] if x_train.ndim == 3 else 1
    if x_train.shape[-2] != len(y_train):
        raise ValueError(
            f"fit_head got {x_train.shape[-2]} feature rows per view for {len(y_train)} labels."
        )
    per_class = None if class_weight is None else np.asarray(class_weight, np.float32)
    if per_class is not None and len(y_train) and per_class.shape[0] <= int(y_train.max()):
        raise ValueError(
            f"fit_head got {per_class.shape[0]} class weights for labels up to {y_train.max()}."
        )
    strategy = getattr(head, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return _fit_distributed(
            head, (x_train, y_train), (x_val, y_val), batch_size=batch_size, epochs=epochs,
            initial_epoch=initial_epoch, seed=seed, callbacks=callbacks, class_weight=per_class,
        )  # fmt: skip
    run_epoch, steps = _compiled_epoch(
        head, (x_train, y_train), (x_val, y_val), batch_size, per_class
    )
    names = ("loss", "accuracy", "val_loss", "val_accuracy")
    history: dict[str, list[float]] = {}
    if isinstance(callbacks, keras.callbacks.CallbackList):
        dispatch = callbacks
    else:
        dispatch = keras.callbacks.CallbackList(list(callbacks), model=head)
    head.stop_training = False
    dispatch.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        dispatch.on_epoch_begin(epoch)
        if head.stop_training:  # a stop seen as the epoch begins: it does not run
            break
        dispatch.on_train_batch_begin(0)
        order = epoch_rows(seed, epoch, len(y_train), views)
        logs = {k: float(v) for k, v in zip(names, run_epoch(order), strict=False)}
        dispatch.on_train_batch_end(steps - 1, {"loss": logs["loss"], "accuracy": logs["accuracy"]})
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        dispatch.on_epoch_end(epoch, dict(logs))
        if head.stop_training:
            break
    dispatch.on_train_end()
    return history


def _fit_distributed(
    head: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int,
    epochs: int,
    initial_epoch: int,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] | keras.callbacks.CallbackList,
    class_weight: np.ndarray | None,
) -> dict[str, list[float]]:
    """``fit_head`` for a head built under a strategy of several replicas (a mirrored run).

    The single compiled epoch above updates variables outside any replica context, which a
    ``MirroredStrategy`` refuses; here Keras ``fit`` (which splits each batch of ``batch_size``,
    the global batch, over the replicas and all-reduces the gradients) runs one epoch at a
    time on the rows ``epoch_rows`` draws, so an epoch sees the same images in the same order
    as on one device.
    """
    import keras
    import tensorflow as tf

    from core.training.callbacks import fit_until_stopped

    x, y = train
    views = x.shape[0] if x.ndim == 3 else 1
    n = len(y)
    x_rows, y_rows = x.reshape(-1, x.shape[-1]), np.tile(y, views)
    val_ds = None
    if len(val[1]):
        val_ds = even_batches(tf.data.Dataset.from_tensor_slices(val).batch(batch_size), batch_size)
    history: dict[str, list[float]] = {}
    head.stop_training = False
    for epoch in range(initial_epoch, epochs):
        order = epoch_rows(seed, epoch, n, views)
        ds = tf.data.Dataset.from_tensor_slices((x_rows[order], y_rows[order])).batch(batch_size)
        ds = even_batches(ds, batch_size, class_weight)
        fitted: list[Any] = []

        def fit(ds: Any = ds, epoch: int = epoch, fitted: list[Any] = fitted) -> None:
            fitted.append(
                head.fit(
                    ds,
                    validation_data=val_ds,
                    initial_epoch=epoch,
                    epochs=epoch + 1,
                    callbacks=callbacks,
                    verbose=0,
                    shuffle=False,
                )
            )

        if isinstance(callbacks, keras.callbacks.CallbackList):
            fit_until_stopped(fit, callbacks)
        else:
            fit()
        logs = (getattr(fitted[0], "history", None) or {}) if fitted else {}
        for key, values in logs.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        if head.stop_training or not fitted:
            break
    return history


def even_batches(ds: Any, global_batch: int, class_weight: np.ndarray | None = None) -> Any:
    """``ds``'s batches of ``(x, labels)`` as ``(x, labels, weights)`` of exactly ``global_batch``
    rows, for Keras ``fit``/``evaluate`` under a strategy of several replicas.

    ``experimental_distribute_dataset`` splits each batch over the replicas; a last partial
    batch (or a dataset smaller than one batch) would split unevenly, or leave a replica
    nothing, which Keras's distributed step does not accept (its first batch is reduced across
    replicas to find the input shapes). So a short batch of ``n`` rows is padded with repeats
    of its own rows weighing 0 (repeats, not zeros: a layer in training mode normalises over
    real images), and its real rows weigh ``global_batch / n`` (times their class weight):
    each replica's ``sum_over_batch_size`` loss, scaled by Keras by ``1 / replicas`` and summed
    over replicas, is then the mean (class-weighted) loss over the ``n`` real rows, as on one
    device, and so is its gradient. Weighted metrics (accuracy) count only the real rows.
    """
    import tensorflow as tf

    per_class = None if class_weight is None else tf.constant(class_weight, tf.float32)

    def pad(x: Any, labels: Any) -> tuple[Any, Any, Any]:
        n = tf.shape(labels)[0]
        extra = global_batch - n
        repeat = tf.range(extra) % tf.maximum(n, 1)
        scale = tf.cast(global_batch, tf.float32) / tf.cast(tf.maximum(n, 1), tf.float32)
        weights = tf.fill([n], scale)
        if per_class is not None:
            weights *= tf.gather(per_class, labels)
        # Static shapes: the strategy then splits each batch into equal per-replica parts.
        x = tf.ensure_shape(tf.concat([x, tf.gather(x, repeat)], 0), [global_batch, *x.shape[1:]])
        labels = tf.ensure_shape(tf.concat([labels, tf.gather(labels, repeat)], 0), [global_batch])
        weights = tf.ensure_shape(tf.concat([weights, tf.zeros([extra])], 0), [global_batch])
        return x, labels, weights

    return ds.map(pad)


def class_weights(setting: str, labels: Sequence[int], num_classes: int) -> np.ndarray | None:
    """Per-class loss weights for a config's ``class_weight`` setting; ``None`` for ``"none"``.

    ``"balanced"``: scikit-learn's rule, ``n_samples / (n_classes * count_c)`` over the classes
    present in ``labels``; a class with no training image (it cannot be learnt) keeps 1.0.
    """
    if setting == "none":
        return None
    if setting != "balanced":
        raise ValueError(f"Unknown class weight setting {setting!r}; expected none or balanced.")
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(labels, np.int64)
    weights = np.ones(num_classes, np.float32)
    present = np.unique(y)
    if len(present):
        weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return weights
