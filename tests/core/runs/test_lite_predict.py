"""Prediction without TensorFlow (core.runs.lite_predict): a feature-extraction run's converted
base (LiteRT) and its head in numpy give the Keras model's probabilities."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.config import RunConfig
from core.runs import lite_predict
from core.runs.predict import predict_images
from core.runs.store import RunStore
from tests.helpers import fake_run, write_pngs

SIZE = 32
CLASSES = ("a", "b", "c")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(folder))
    monkeypatch.delenv("TRANSFER_STUDIO_FEATURE_RUNTIME", raising=False)
    lite_predict._CACHE.clear()
    return folder


def _model(class_names: list[str]) -> object:
    """The studio's layer names after a small trunk: avg_pool → head_dropout → head_dense
    (relu) → predictions (softmax), weights seeded."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(pooled)
    x = keras.layers.Dense(5, activation="relu", name="head_dense")(x)
    outputs = keras.layers.Dense(len(class_names), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


def _run(store: RunStore, data: Path, mode: str = "feature_extraction") -> str:
    """A run of ``mode`` on 3 small classes, its model saved (``_model``)."""
    for i, name in enumerate(CLASSES):
        write_pngs(data / name, 4, side=20 + 4 * i)
    config = RunConfig(data=str(data), image_size=SIZE, epochs=1, augment=False, mode=mode)
    return fake_run(store, str(data), config=config, model=_model)


def _fresh_process_predicts(store: RunStore, run_id: str, image: str) -> list[str]:
    """``[runtime, whether TensorFlow was imported]`` of one prediction in a new process."""
    probe = (
        "import sys; from core.runs.store import RunStore; from core.runs.predict import "
        f"predict_images; r = predict_images(RunStore({str(store.root)!r}), {run_id!r}, "
        f"[{image!r}]); print(r[0]['runtime'], 'tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[3])  # fmt: skip
    return done.stdout.split()[-2:]


@pytest.mark.slow  # builds and saves a Keras model
def test_the_head_is_read_from_the_saved_model(tmp_path: Path) -> None:
    import keras

    store = RunStore(tmp_path / "home" / "runs")
    run_id = _run(store, tmp_path / "data")
    path = Path(store.get_run(run_id)["model_path"])
    head = lite_predict.read_head(path)
    assert head is not None and [layer.activation for layer in head] == ["relu", "softmax"]
    model = keras.saving.load_model(path)
    pooled = np.random.default_rng(0).random((4, 8)).astype(np.float32)
    x: object = pooled
    for name in ("head_dropout", "head_dense", "predictions"):
        x = model.get_layer(name)(x)
    mine = pooled
    for layer in head:
        mine = lite_predict.ACTIVATIONS[layer.activation](mine @ layer.kernel + layer.bias)
    np.testing.assert_allclose(mine, np.asarray(x), atol=1e-6)
    assert lite_predict.lite_run(store, run_id) is None  # nothing converted: Keras predicts


@pytest.mark.slow
def test_a_converted_base_predicts_as_keras_without_importing_tensorflow(tmp_path: Path) -> None:
    import keras

    from core.models.backbones import get_backbone, weights_identity
    from core.training import litert

    store = RunStore(tmp_path / "home" / "runs")
    run_id = _run(store, tmp_path / "data")
    config = store.config(run_id)
    spec = get_backbone(config.backbone)
    identity = {"backbone": spec.name, "image_size": SIZE, "preprocessing": spec.preprocessing,
                "weights": weights_identity(config.backbone, config.weights),
                "output": "avg_pool"}  # fmt: skip
    model = keras.saving.load_model(store.get_run(run_id)["model_path"])
    trunk = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    litert.convert(trunk, litert.runtime_dir() / f"{litert.runtime_key(identity)}.tflite")
    images = sorted(str(p) for p in (tmp_path / "data").glob("*/*.png"))[:4]

    lite = predict_images(store, run_id, images, top_k=3, calibrated=True)
    assert {r["runtime"] for r in lite} == {"litert"}
    lite_predict._CACHE.clear()
    keras_side = predict_images(store, run_id, images, top_k=3, calibrated=True, tta=True)
    assert {r["runtime"] for r in keras_side} == {"keras"}
    plain = predict_images(store, run_id, images, top_k=3)
    for a, b in zip(lite, plain, strict=True):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
    assert _fresh_process_predicts(store, run_id, images[0]) == ["litert", "False"]


def _tuned_run(store: RunStore, data: Path) -> str:
    """A run whose base was trained: it predicts through its whole model, not base + head."""
    return _run(store, data, mode="fine_tuning")


@pytest.mark.slow
def test_a_fine_tuned_runs_converted_model_predicts_as_keras_without_tensorflow(
    tmp_path: Path,
) -> None:
    import keras

    from core.training.predict_runtime import convert_for_predict

    store = RunStore(tmp_path / "home" / "runs")
    run_id = _tuned_run(store, tmp_path / "data")
    path = Path(store.get_run(run_id)["model_path"])
    images = sorted(str(p) for p in (tmp_path / "data").glob("*/*.png"))
    assert lite_predict.lite_run(store, run_id) is None  # not converted yet: Keras predicts

    record = convert_for_predict(store, run_id, keras.saving.load_model(path))
    assert record is not None and record["accepted"], record
    assert record["images"] == 3 and record["source"] == "validation"  # the validation split
    assert record["max_abs_diff"] < 1e-3 and record["top1_agreement"] == 1.0
    lite_predict._CACHE.clear()
    lite = predict_images(store, run_id, images, top_k=3)
    assert {r["runtime"] for r in lite} == {"litert"}
    keras_side = predict_images(store, run_id, images, top_k=3, tta=True)  # TTA: on Keras
    assert {r["runtime"] for r in keras_side} == {"keras"}
    plain = lite_predict.lite_run(store, run_id)
    assert plain is not None and plain.head == []
    batch = np.stack(
        [np.asarray(keras.utils.load_img(p, target_size=(SIZE, SIZE))) for p in images]
    )
    expected = keras.saving.load_model(path).predict(batch.astype(np.float32), verbose=0)
    np.testing.assert_allclose(plain(batch.astype(np.float32)), expected, atol=1e-4)
    assert _fresh_process_predicts(store, run_id, images[0]) == ["litert", "False"]

    # A model file saved again (a retrain, an edit) is another model: back to Keras.
    keras.saving.load_model(path).save(path)
    lite_predict._CACHE.clear()
    assert lite_predict.lite_run(store, run_id) is None


@pytest.mark.slow
def test_a_converted_model_that_disagrees_is_recorded_and_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    from core.training import predict_runtime

    store = RunStore(tmp_path / "home" / "runs")
    run_id = _tuned_run(store, tmp_path / "data")
    path = Path(store.get_run(run_id)["model_path"])
    model = keras.saving.load_model(path)
    # The file LiteRT would run is another model's (seeded differently): the check refuses it.
    other = _model(list(CLASSES))
    other.set_weights([w + 0.5 for w in model.get_weights()])
    monkeypatch.setattr(predict_runtime, "portable_model", lambda _m: other)
    record = predict_runtime.convert_for_predict(store, run_id, model)
    assert record is not None and not record["accepted"]
    assert "differ" in record["reason"], record
    assert not (store.run_dir(run_id) / lite_predict.PREDICT_RUNTIME_FILE).exists()
    lite_predict._CACHE.clear()
    assert lite_predict.lite_run(store, run_id) is None


def test_feature_extraction_and_the_keras_setting_convert_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.training.predict_runtime import convert_for_predict

    store = RunStore(tmp_path / "home" / "runs")
    for i, name in enumerate(CLASSES):
        write_pngs(tmp_path / "data" / name, 4, side=20 + 4 * i)
    data = str(tmp_path / "data")
    extraction = fake_run(store, data, config=RunConfig(data=data, mode="feature_extraction"))
    assert convert_for_predict(store, extraction, model=None) is None
    monkeypatch.setenv("TRANSFER_STUDIO_FEATURE_RUNTIME", "keras")
    tuned = fake_run(store, data, config=RunConfig(data=data, mode="fine_tuning"))
    assert convert_for_predict(store, tuned, model=None) is None
    assert not (store.run_dir(tuned) / lite_predict.PREDICT_RUNTIME_RECORD).exists()
