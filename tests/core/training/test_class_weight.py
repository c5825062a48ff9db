"""Class weights: sklearn's balanced rule, the weighted loss of every training path, the setting,
and the minority class's recall on an imbalanced set of real photos."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

from core.config import RunConfig
from core.errors import ConfigError
from core.training.head_fit import class_weights, fit_head
from core.training.model import compile_model
from tests.helpers import TINY


def test_balanced_is_n_samples_over_classes_times_count() -> None:
    labels = [0] * 10 + [1] * 1 + [2] * 4  # 15 images, 3 classes
    weights = class_weights("balanced", labels, 3)
    assert weights is not None
    np.testing.assert_allclose(weights, [15 / (3 * 10), 15 / (3 * 1), 15 / (3 * 4)], rtol=1e-6)
    assert class_weights("none", labels, 3) is None
    # A class without a training image cannot be learnt: it keeps 1, the others share the rule.
    np.testing.assert_allclose(class_weights("balanced", [0, 0, 1], 3), [0.75, 1.5, 1.0])


def test_the_setting_defaults_to_none_round_trips_and_is_checked() -> None:
    assert RunConfig().class_weight == "none"
    config = RunConfig(class_weight="balanced").validate()
    assert json.loads(config.to_json())["class_weight"] == "balanced"
    assert RunConfig.from_json(config.to_json()) == config
    old = RunConfig().to_dict()
    del old["class_weight"]  # a config.json from before the setting existed
    assert RunConfig.from_dict(old).class_weight == "none"
    with pytest.raises(ConfigError, match="Class weights 'heavy' is invalid.*none, balanced") as e:
        RunConfig(class_weight="heavy").validate()
    assert e.value.settings == ("class_weight",)
    with pytest.raises(ConfigError, match="Class weights 3 is invalid. Expected text"):
        RunConfig(class_weight=3).validate()  # type: ignore[arg-type]


def _data(seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([0] * (n - 4) + [1] * 4)  # imbalanced, 5:1
    return rng.normal(0, 1, (n, 6)).astype(np.float32), y


def _linear_head() -> keras.Model:
    inputs = keras.Input((6,))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))


def _by_hand(model: keras.Model, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    probs = np.asarray(model(x, training=False))
    losses = -np.log(probs[np.arange(len(y)), y])
    weights = np.ones(len(y)) if w is None else w[y]
    return float(np.sum(weights * losses) / len(y))  # Keras: sum(w_i * loss_i) / batch size


def test_the_head_on_features_weighs_the_loss_as_computed_by_hand() -> None:
    keras.utils.set_random_seed(0)
    (x, y), (xv, yv) = _data(1), _data(2)
    w = class_weights("balanced", y, 2)
    assert w is not None
    head = _linear_head()
    compile_model(head, 1e-12)  # the weights stay put: one batch's loss, before its update
    weighted, plain = _by_hand(head, x, y, w), _by_hand(head, x, y, None)
    assert abs(weighted - plain) > 0.05 * plain  # the weights make a difference here
    history = fit_head(head, (x, y), (xv, yv), batch_size=64, epochs=1, class_weight=w)
    assert history["loss"][0] == pytest.approx(weighted, rel=1e-5)
    # Validation stays unweighted, as with Keras fit's class_weight.
    assert history["val_loss"][0] == pytest.approx(_by_hand(head, xv, yv, None), rel=1e-5)


def test_the_keras_fit_path_weighs_the_loss_as_computed_by_hand() -> None:
    import tensorflow as tf

    from core.training.sources import _fit_keras

    keras.utils.set_random_seed(0)
    (x, y), (xv, yv) = _data(3), _data(4)
    w = class_weights("balanced", y, 2)
    assert w is not None
    model = _linear_head()
    compile_model(model, 1e-12)
    expected = _by_hand(model, x, y, w)
    logs: dict[str, float] = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, epoch_logs: dict | None = None) -> None:
            logs.update(epoch_logs or {})

    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(64)
    # A History too, as the trainer's callbacks have: fit returns it.
    callbacks = keras.callbacks.CallbackList([Keep(), keras.callbacks.History()], model=model)
    _fit_keras(model, train, val, callbacks, epochs=1, initial_epoch=0, class_weight=w)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def _imbalanced_pngs(root: Path) -> str:
    rng = np.random.default_rng(0)
    for c, count in enumerate((12, 12, 3)):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{i}.png")
    return str(root)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({"augment": False}, "features"),
        ({"feature_cache": "off"}, "images"),
        ({"mode": "fine_tuning", "augment": False}, "activations"),
    ],
)
def test_every_training_path_gets_the_class_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], kind: str
) -> None:
    from core.data import load_dataset
    from core.training import head_fit, sources
    from core.training.model import build_model, resolve_backbone

    config = TINY.with_changes(data=_imbalanced_pngs(tmp_path), class_weight="balanced", **changes)
    data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    built = build_model(config, 3, resolve_backbone(config))
    source = sources.choose_source(config, built, 27)
    assert source.kind == kind
    source.prepare(data, lambda **_kw: lambda *_a, **_k: None)
    expected = class_weights("balanced", data.train_labels, 3)
    np.testing.assert_allclose(source.class_weight, expected)

    passed: list[Any] = []
    monkeypatch.setattr(head_fit, "fit_head", lambda *a, **kw: passed.append(kw["class_weight"]))
    monkeypatch.setattr(sources, "_fit_keras", lambda *a: passed.append(a[6]))
    for phase in config.phases:
        model = source.model_for(phase)
        source.fit(model, keras.callbacks.CallbackList([], model=model), 1, 0)
    assert len(passed) == len(config.phases)
    for weights in passed:
        np.testing.assert_allclose(weights, expected)


def _imbalanced_photos(root: Path, minority: str = "cat", ratio: int = 10) -> str:
    """builtin:photos' four classes, 30 training views each except ``minority`` (30 / ratio),
    and 12 validation views per class drawn with another seed."""
    from core.data.builtin import photo_items

    for split, per_class, seed in (("train", 30, 1), ("val", 12, 2)):
        for cls, name, data in photo_items(per_class, seed):
            keep = per_class // ratio if split == "train" and cls == minority else per_class
            if int(name.rsplit("_", 1)[1].split(".")[0]) < keep:
                folder = root / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
    return str(root)


@pytest.mark.slow
def test_balanced_weights_raise_the_minority_recall_on_imbalanced_photos(tmp_path: Path) -> None:
    from core.runs.evaluate import evaluate_run
    from core.training.jobs import JobQueue

    data = _imbalanced_photos(tmp_path / "photos")  # 30:30:30:3 training images
    queue = JobQueue(tmp_path / "runs")
    recall: dict[str, float] = {}
    for setting in ("none", "balanced"):
        # Offline EfficientNet-Lite0 weights at 32 px and 2 epochs: weak enough features for the
        # imbalance to show (at 96 px every class is recalled perfectly either way).
        config = RunConfig(data=data, image_size=32, augment=False, epochs=2, class_weight=setting)
        run_id = queue.submit(config)
        assert queue.wait(run_id, timeout=300) == "completed"
        per_class = {c["class"]: c for c in evaluate_run(queue.store, run_id)["per_class"]}
        recall[setting] = per_class["cat"]["recall"]
    # Measured: 0.083 without class weights, 0.917 with them (12 validation cats).
    assert recall["balanced"] > recall["none"] + 0.25, recall


def test_the_class_weight_flag() -> None:
    from core.cli.flags import add_class_weight_flag

    parser = argparse.ArgumentParser()
    add_class_weight_flag(parser)
    assert parser.parse_args(["--class-weight", "balanced"]).class_weight == "balanced"
    assert parser.parse_args([]).class_weight is None  # unset: the config's value stays
    with pytest.raises(SystemExit):
        parser.parse_args(["--class-weight", "heavy"])
