"""fit_head: the head trains on features like fit would, honours stop, resume and callbacks."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from core.training.head_fit import (
    TENSOR_ALIGN,
    aligned_empty,
    features_tensor,
    fit_head,
    fused_adam,
)
from core.training.model import compile_model
from tests.helpers import blobs as _blobs
from tests.helpers import small_head as _head


class Recorder(keras.callbacks.Callback):
    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.events: list[tuple] = []
        self.stop_after = stop_after

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.events.append(("batch", batch, sorted(logs or {})))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.events.append(("epoch", epoch, sorted(logs or {})))
        if self.stop_after is not None and epoch + 1 >= self.stop_after:
            self.model.stop_training = True


@pytest.mark.slow
def test_learns_separable_features_and_reports_like_fit() -> None:
    keras.utils.set_random_seed(0)
    head = _head()
    compile_model(head, 1e-2)
    train, val = _blobs(200, 1), _blobs(60, 2)
    before = head.evaluate(*val, verbose=0)[0]
    recorder = Recorder()
    history = fit_head(head, train, val, batch_size=16, epochs=4, seed=3, callbacks=[recorder])
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in history.values())
    assert history["val_accuracy"][-1] >= 0.95
    assert history["loss"][-1] < history["loss"][0]
    # The reported validation metrics are Keras' own evaluation of the trained head.
    val_loss, val_acc = head.evaluate(*val, verbose=0)
    assert val_loss < before
    assert history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-4)
    assert history["val_accuracy"][-1] == pytest.approx(val_acc, abs=1e-6)
    # One batch-end per epoch carrying the last batch index (13 batches of 16 for 200 rows).
    batches = [e for e in recorder.events if e[0] == "batch"]
    assert [b[1] for b in batches] == [12] * 4
    assert batches[0][2] == ["accuracy", "loss"]


@pytest.mark.slow
def test_stop_training_ends_after_the_current_epoch_and_initial_epoch_resumes() -> None:
    head = _head()
    compile_model(head, 1e-3)
    data = _blobs(50, 4)
    history = fit_head(head, data, data, batch_size=8, epochs=5, callbacks=[Recorder(2)])
    assert len(history["loss"]) == 2
    recorder = Recorder()
    history = fit_head(head, data, data, batch_size=8, epochs=5, initial_epoch=3,
                       callbacks=[recorder])  # fmt: skip
    assert [e[1] for e in recorder.events if e[0] == "epoch"] == [3, 4]


@pytest.mark.slow
def test_same_seed_same_result_and_an_uncompiled_head_is_refused() -> None:
    data = _blobs(64, 5)
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        head = _head()
        compile_model(head, 1e-2)
        fit_head(head, data, data, batch_size=8, epochs=2, seed=11)
        weights.append(head.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="compiled"):
        fit_head(_head(), data, data, batch_size=8, epochs=1)


@pytest.mark.parametrize("shape", [(37, 5), (3, 37, 5), (0, 5), (0,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_features_tensor_is_an_aligned_float32_copy_that_kernels_can_read(shape, dtype) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    # A source that is not aligned as TensorFlow's kernels need: a view one float in.
    source = rng.normal(size=int(np.prod(shape)) + 1).astype(dtype)[1:].reshape(shape)
    tensor = features_tensor(source)
    assert tensor.dtype == tf.float32 and tuple(tensor.shape) == shape
    np.testing.assert_array_equal(tensor.numpy(), source.astype(np.float32))
    if source.size:
        # A kernel reading it (a gather in a traced function) aborts the process if the
        # buffer is misaligned; the copy is the tensor's own: the source may change.
        before = source.astype(np.float32)
        rows = tf.function(lambda i: tf.gather(tensor, i))(tf.constant([0, shape[0] - 1]))
        np.testing.assert_array_equal(rows.numpy(), before[[0, shape[0] - 1]])
        source[...] = 7
        np.testing.assert_array_equal(tensor.numpy(), before)


@pytest.mark.parametrize("shape", [(1,), (37, 5), (3, 37, 5), (40_000, 1_280)])
def test_an_aligned_float32_array_is_adopted_not_copied(shape) -> None:
    import tensorflow as tf

    features = aligned_empty(shape)
    assert features.ctypes.data % TENSOR_ALIGN == 0 and features.dtype == np.float32
    features[...] = 1.5
    tensor = features_tensor(features)
    last = shape[0] - 1
    rows = tf.function(lambda i: tf.gather(tensor, i))(tf.constant([0, last]))
    assert float(tf.reduce_min(rows)) == 1.5
    # Adopted: the tensor is the array's memory (the pass's output, trained on as it is).
    features[last] = 4.0
    assert float(tf.reduce_max(tf.gather(tensor, [last]))) == 4.0


def _gradients(head: keras.Model, steps: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(4)
    return [[rng.normal(size=v.shape).astype(np.float32) for v in head.trainable_variables]
            for _ in range(steps)]  # fmt: skip


def test_the_fused_adam_update_is_keras_adams_to_float32_rounding() -> None:
    """The default optimizer (``compile_model``'s Adam) runs as TensorFlow's fused kernel: the
    weights, moments and step counter after some steps are what Keras's own update gives, up
    to float32 rounding of the steps (the kernel's vectorised square root and division round
    differently). Fails if a Keras release renames the private slots the fused path reads (it
    returns ``None`` then, and the head trains slower on Keras's update)."""
    import tensorflow as tf

    models = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        head = _head()
        compile_model(head, 3e-2)
        models.append(head)
    keras_head, fused_head = models
    start = fused_head.get_weights()
    fused = fused_adam(fused_head.optimizer, fused_head.trainable_variables)
    assert fused is not None
    apply = tf.function(fused)
    for grads in _gradients(keras_head, 5):
        keras_head.optimizer.apply(grads, keras_head.trainable_variables)
        apply([tf.constant(g) for g in grads])
    # Five steps of 3e-2 move each weight by up to 0.15; the two updates differ by < 1e-6.
    for before, a, b in zip(start, keras_head.get_weights(), fused_head.get_weights(), strict=True):
        assert np.abs(b - before).max() > 0.1
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    for a, b in zip(keras_head.optimizer.variables, fused_head.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert int(fused_head.optimizer.iterations) == int(keras_head.optimizer.iterations) == 5


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.Adam(amsgrad=True),
        lambda: keras.optimizers.Adam(weight_decay=1e-4),
        lambda: keras.optimizers.Adam(clipnorm=1.0),
        lambda: keras.optimizers.Adam(use_ema=True),
        lambda: keras.optimizers.AdamW(),
        lambda: keras.optimizers.SGD(),
        lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()),
    ],
    ids=["amsgrad", "weight_decay", "clipnorm", "ema", "adamw", "sgd", "loss_scale"],
)
def test_an_optimizer_the_fused_kernel_does_not_compute_keeps_keras_update(optimizer) -> None:
    head = _head()
    assert fused_adam(optimizer(), head.trainable_variables) is None
