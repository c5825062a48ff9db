"""A Teachable Machine project's Keras export (built here with tf_keras, Keras 2, the way
Teachable Machine builds it) becomes a run that predicts like the original and a backbone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import StudioError
from core.runs.teachable_machine import read_labels
from tests.helpers import cli, last_json

LABELS = ["cat", "dog", "bird"]


def teachable_machine_export(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """``keras_model.h5`` as Teachable Machine saves it: Sequential(Sequential(MobileNetV2 0.35
    trunk, pooled), Sequential(Dense 100 relu, Dense N softmax without bias)), by Keras 2.

    Like Teachable Machine, only the head is trained (here on ``images``, raw 0-255 pixels, so
    the model's answers differ from image to image). The trunk keeps random weights, its
    BatchNorm statistics measured on the images (else its features vanish to ~1e-10)."""
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(0)
    base = tf_keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), alpha=0.35, include_top=False, weights=None
    )
    x = images / 127.5 - 1
    for layer in base.layers:  # each BatchNorm's statistics from its input, in order
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            seen = tf_keras.Model(base.input, layer.input)(x, training=False).numpy()
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, seen.mean((0, 1, 2)), seen.var((0, 1, 2)) + 1e-3])
    pooled = tf_keras.layers.GlobalAveragePooling2D()(base.output)
    trunk = tf_keras.Model(base.input, pooled, name="model1")
    trunk.trainable = False
    classes = int(labels.max()) + 1
    head = tf_keras.Sequential(
        [
            tf_keras.layers.Dense(100, activation="relu", name="dense_Dense1", input_shape=(1280,)),
            tf_keras.layers.Dense(
                classes, activation="softmax", use_bias=False, name="dense_Dense2"
            ),
        ],
        name="sequential_3",
    )
    model = tf_keras.Sequential([tf_keras.Sequential([trunk], name="sequential_1"), head])
    model.compile(tf_keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=30, batch_size=20, verbose=0)
    path = folder / "keras_model.h5"
    model.save(str(path))
    return path


def test_labels_keep_teachable_machines_numbering_out(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("0 cat\n1 big dog\n\n2 bird\n", encoding="utf-8")
    assert read_labels(path) == ["cat", "big dog", "bird"]
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(StudioError, match="names no class"):
        read_labels(path)


@pytest.mark.slow
def test_an_export_becomes_a_run_that_predicts_like_keras_2(tmp_path: Path) -> None:
    tf_keras = pytest.importorskip("tf_keras")  # requirements-dev-nodeps.txt

    from core.data.images import to_array

    project = tmp_path / "my-project"
    project.mkdir()
    rng = np.random.default_rng(1)
    images, classes = [], np.arange(20) % len(LABELS)
    for i, label in enumerate(classes):
        # Each class a colour, with noise: something a random trunk tells apart.
        colour = np.eye(3)[label] * 200 + 30
        pixels = np.clip(colour + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        images.append(path)
    pixels = np.stack([to_array(p, 224, np.float32) for p in images])
    model_path = teachable_machine_export(project, pixels, classes)
    (project / "labels.txt").write_text(
        "".join(f"{i} {name}\n" for i, name in enumerate(LABELS)), encoding="utf-8"
    )

    reference = tf_keras.models.load_model(str(model_path), compile=False)
    expected = [LABELS[i] for i in np.argmax(reference.predict(pixels / 127.5 - 1, verbose=0), 1)]
    assert len(set(expected)) > 1  # the check can fail: the model's answers differ

    env = {**os.environ, "TRANSFER_STUDIO_HOME": str(tmp_path / "h")}
    runs = str(tmp_path / "runs")
    labels = str(project / "labels.txt")
    imported = cli("teachable-machine", "import", str(model_path), labels, "--runs-dir", runs,
                   "--json", env=env)  # fmt: skip
    run = last_json(imported)
    assert run["status"] == "completed" and run["class_names"] == LABELS
    assert run["config"]["backbone"] == "teachable_machine" and run["name"] == "my-project"

    predicted = cli("predict", "--runs-dir", runs, "--run", run["run_id"], *map(str, images),
                    "--json", env=env)  # fmt: skip
    assert [r["predictions"][0]["label"] for r in last_json(predicted)] == expected

    cli("export", "--runs-dir", runs, "--run", run["run_id"], "--format", "keras",
        "--out", str(tmp_path / "export"), "--json", env=env)  # fmt: skip
    assert (tmp_path / "export" / "labels.txt").read_text(encoding="utf-8").split() == LABELS

    # Its trunk is the teachable_machine backbone's pretrained weights: a new run starts there.
    backbones = {b["name"]: b for b in last_json(cli("backbones", "--json", env=env))}
    assert backbones["teachable_machine"]["availability"] == "imported"
    trained = cli("train", "--backbone", "teachable_machine", "--data", "builtin:textures",
        "--mode", "fine_tuning", "--image-size", "64", "--epochs", "1", "--fine-tune-epochs", "1",
        "--no-augment", "--runs-dir", runs, "--json", env=env)  # fmt: skip
    assert last_json(trained)["status"] == "completed"
