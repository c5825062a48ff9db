"""Import a Teachable Machine image project (its Keras export) as a finished run.

Teachable Machine exports ``keras_model.h5`` + ``labels.txt``. The model was saved by Keras 2:
a Sequential of a MobileNetV2 trunk (width ``alpha`` 0.35, pooled) and a Sequential head of two
Dense layers; Keras 3 cannot deserialise it (``DepthwiseConv2D(groups=1)``, ``Functional``...).
So the file's *config* is only read for the head's sizes and the input size, the architecture is
rebuilt with Keras 3's own ``MobileNetV2`` and every weight is copied by layer and variable name
from the HDF5 file (each shape checked). The result is a run like any other (predict, export,
Grad-CAM), its labels kept, and the trunk's weights are kept as imported weights of the
``teachable_machine`` backbone, a starting point for training on the user's own data.

Teachable Machine feeds the model ``x / 127.5 - 1`` of a 224 px RGB image: the studio's
``PixelNormalize("tf")``.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, StudioError
from core.models.backbones import TEACHABLE_MACHINE, get_backbone
from core.runs.store import COMPLETED, RunStore

__all__ = [
    "ALPHAS",
    "PROBE_LAYER",
    "TeachableMachineProject",
    "build_model",
    "import_project",
    "read_labels",
    "read_project",
]

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # the widths keras.applications.MobileNetV2 builds
PROBE_LAYER = "block_16_project"  # its output width tells the alphas apart


@dataclass
class TeachableMachineProject:
    """What the export holds: labels, input size, the two Dense layers and the trunk's arrays."""

    labels: list[str]
    image_size: int
    hidden_units: int
    hidden_activation: str
    output_bias: bool
    # layer name -> variable name ("kernel", "gamma", ...) -> array
    weights: dict[str, dict[str, np.ndarray]] = field(repr=False)
    head_layers: tuple[str, str] = ("", "")


def read_labels(path: Path) -> list[str]:
    """``labels.txt``: one class a line, ``"0 cat"`` (Teachable Machine) or just ``"cat"``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StudioError(f"Cannot read the labels file {path}: {exc}.") from exc
    labels = [re.sub(r"^\d+\s+", "", line.strip()) for line in lines if line.strip()]
    if not labels:
        raise StudioError(f"The labels file {path} names no class. Expected one class a line.")
    return labels


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _dense_layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Dense layer's config in the (nested) model config, in order."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "Dense":
                found.append(node["config"])
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def _input_size(config: dict[str, Any]) -> int:
    text = json.dumps(config)
    match = re.search(r'"batch_input_shape": \[null, (\d+), (\d+), 3\]', text) or re.search(
        r'"batch_shape": \[null, (\d+), (\d+), 3\]', text
    )
    if match is None or match.group(1) != match.group(2):
        raise StudioError("The model's input is not a square RGB image; expected (224, 224, 3).")
    return int(match.group(1))


def read_project(model_h5: str | Path, labels_txt: str | Path) -> TeachableMachineProject:
    """Read a Teachable Machine ``keras_model.h5`` and its ``labels.txt`` (no Keras involved)."""
    import h5py

    model_path, labels_path = Path(model_h5), Path(labels_txt)
    for path, what in ((model_path, "model file"), (labels_path, "labels file")):
        if not path.is_file():
            raise ConfigError(f"The Teachable Machine {what} {str(path)!r} was not found.")
    labels = read_labels(labels_path)
    try:
        with h5py.File(model_path, "r") as h5:
            config = json.loads(_text(h5.attrs["model_config"]))
            group = h5["model_weights"]
            weights: dict[str, dict[str, np.ndarray]] = {}
            for top in (_text(n) for n in group.attrs["layer_names"]):
                for name in (_text(n) for n in group[top].attrs.get("weight_names", [])):
                    layer, _, variable = name.rpartition("/")
                    layer = layer.rpartition("/")[2]  # nested models prefix their own names
                    weights.setdefault(layer, {})[variable.split(":")[0]] = np.asarray(
                        group[top][name]
                    )
    except (OSError, KeyError, ValueError) as exc:
        raise StudioError(
            f"{model_path.name} is not a Teachable Machine Keras export ({exc}). Export the "
            "project as Keras (keras_model.h5) and pick that file."
        ) from exc
    dense = _dense_layers(config)
    if len(dense) != 2:
        raise StudioError(
            f"{model_path.name} has {len(dense)} dense layers; a Teachable Machine image model "
            "has two (its hidden layer and its classes)."
        )
    hidden, output = dense
    if int(output["units"]) != len(labels):
        raise StudioError(
            f"{model_path.name} predicts {output['units']} classes but {labels_path.name} names "
            f"{len(labels)}. Use the labels.txt exported with this model."
        )
    return TeachableMachineProject(
        labels=labels,
        image_size=_input_size(config),
        hidden_units=int(hidden["units"]),
        hidden_activation=str(hidden.get("activation", "relu")),
        output_bias=bool(output.get("use_bias", True)),
        weights=weights,
        head_layers=(str(hidden["name"]), str(output["name"])),
    )


def _alpha(project: TeachableMachineProject) -> float:
    """The trunk's width, told apart by its last projection's output channels."""
    probe = project.weights.get(PROBE_LAYER, {}).get("kernel")
    if probe is None:
        raise StudioError(f"The model has no MobileNetV2 trunk (no layer {PROBE_LAYER!r}).")
    for alpha in ALPHAS:
        channels = int(alpha * 320 + 4) // 8 * 8  # keras' _make_divisible(320 * alpha, 8)
        channels += 8 if channels < 0.9 * alpha * 320 else 0
        if channels == probe.shape[-1]:
            return alpha
    raise StudioError(f"Unknown MobileNetV2 width: {PROBE_LAYER} has {probe.shape[-1]} channels.")


def _assign(layer: Any, arrays: dict[str, np.ndarray]) -> None:
    """Set ``layer``'s variables from ``arrays`` by variable name, every shape checked."""
    values = []
    for variable in layer.weights:
        short = variable.path.rpartition("/")[2]
        # Keras 2 called a depthwise convolution's kernel "depthwise_kernel".
        if short not in arrays and short == "kernel" and "depthwise_kernel" in arrays:
            short = "depthwise_kernel"
        if short not in arrays:
            raise StudioError(f"The model file has no {short!r} for layer {layer.name!r}.")
        array = arrays[short]
        if tuple(array.shape) != tuple(variable.shape):
            raise StudioError(
                f"Layer {layer.name!r}'s {short} has shape {array.shape} in the file, "
                f"{tuple(variable.shape)} in the rebuilt model."
            )
        values.append(array)
    layer.set_weights(values)


def build_model(project: TeachableMachineProject) -> tuple[Any, Any]:
    """``(classifier, trunk)`` rebuilt in Keras 3 with the project's weights.

    The classifier takes raw 0-255 pixels, like every run's model, and is laid out like one:
    ``image -> preprocess -> base -> avg_pool -> head_dense -> predictions``.
    """
    import keras

    from core.models.layers import PixelNormalize

    size = project.image_size
    base = get_backbone(TEACHABLE_MACHINE).constructor(
        include_top=False, weights=None, input_shape=(size, size, 3), alpha=_alpha(project)
    )
    for layer in base.layers:
        if layer.weights:
            _assign(layer, project.weights.get(layer.name, {}))
    inputs = keras.Input((size, size, 3), name="image")
    x = PixelNormalize("tf", name="preprocess")(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    hidden = keras.layers.Dense(
        project.hidden_units, activation=project.hidden_activation, name="head_dense"
    )
    x = hidden(x)
    output = keras.layers.Dense(
        len(project.labels), activation="softmax", use_bias=project.output_bias, name="predictions"
    )
    outputs = output(x)
    for layer, name in zip((hidden, output), project.head_layers, strict=True):
        _assign(layer, project.weights.get(name, {}))
    return keras.Model(inputs, outputs, name="teachable_machine"), base


def import_project(
    store: RunStore,
    model_h5: str | Path,
    labels_txt: str | Path,
    name: str | None = None,
) -> str:
    """Import the project as a completed run; returns its id.

    The trunk's weights are kept as imported weights of the ``teachable_machine`` backbone
    (named ``teachable-machine-<run name>``), so a new run can start from them.
    """
    from core.config import RunConfig
    from core.files import atomic_path
    from core.models.imported_weights import keep_file

    project = read_project(model_h5, labels_txt)
    model, base = build_model(project)
    run_name = name or Path(model_h5).resolve().parent.name or "teachable machine"
    weights_name = "teachable-machine-" + (
        re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-.")[:50] or "project"
    )
    with tempfile.TemporaryDirectory() as tmp:
        trunk_file = Path(tmp) / f"{weights_name}.weights.h5"
        base.save_weights(trunk_file)
        kept = keep_file(
            trunk_file,
            TEACHABLE_MACHINE,
            weights_name,
            source=str(Path(model_h5).resolve()),
            note="the MobileNetV2 trunk of a Teachable Machine project",
        )
    config = RunConfig(
        data=str(Path(model_h5).resolve().parent),
        backbone=TEACHABLE_MACHINE,
        weights=kept.name,
        image_size=project.image_size,
        mode="feature_extraction",
        epochs=1,
        augment=False,
        dense_units=project.hidden_units,
        name=run_name,
    ).validate()
    run_id = store.create_run(config, status=COMPLETED, claimed=True)
    path = store.run_dir(run_id) / "model.keras"
    with atomic_path(path) as tmp_path:
        model.save(tmp_path)
    store.update(
        run_id,
        class_names=project.labels,
        model_path=str(path),
        model_bytes=path.stat().st_size,
        started_at=store.get_run(run_id)["created_at"],
    )
    store.mark_finished(run_id, COMPLETED)
    return run_id
