"""Results you can trust, end to end through ``python -m core`` on one small run: the leakage check
finds planted near-copies, calibration never makes the confidence worse, ``predict`` carries the
conformal set, every epoch is in TensorBoard's event files and ``log-mlflow`` writes a store that
MLflow's own client reads back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import cli, cropped_twin, last_json, smooth_picture

CLASSES = ("ants", "bees", "wasps")
ORIGINALS = 40  # per class; every 4th gets a twin: 30 planted pairs
EPOCHS, FINE_TUNE_EPOCHS = 2, 1


def planted_folder(root: Path) -> list[tuple[str, str]]:
    """Distinct pictures (smooth random colour fields, one colour leaning per class); every 4th
    has a twin in its class: cropped by 2 px a side and re-encoded as JPEG. The planted pairs,
    as paths relative to ``root``."""
    pairs = []
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(ORIGINALS):
            picture = smooth_picture(1000 * c + i, lean=c)
            Image.fromarray(picture).save(folder / f"{i:03d}.png")
            if i % 4 == 0:
                (folder / f"{i:03d}_twin.jpg").write_bytes(cropped_twin(picture))
                pairs.append((f"{name}/{i:03d}.png", f"{name}/{i:03d}_twin.jpg"))
    return pairs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("trust")
    data, runs = base / "planted", base / "runs"
    pairs = planted_folder(data)
    proc = cli(
        "train", "--data", str(data), "--backbone", "efficientnet_lite0", "--weights", "imagenet",
        "--image-size", "32", "--batch-size", "16", "--mode", "fine_tuning",
        "--epochs", str(EPOCHS), "--fine-tune-epochs", str(FINE_TUNE_EPOCHS),
        "--runs-dir", str(runs), "--json",
    )  # fmt: skip
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["status"] == "completed", run["error"]
    return {"run": run, "data": data, "runs": str(runs), "pairs": pairs, "base": base}


@pytest.fixture(scope="module")
def evaluation(trained: dict) -> dict:
    proc = cli("evaluate", "--run", trained["run"]["run_id"], "--runs-dir", trained["runs"],
               "--json")  # fmt: skip
    return json.loads(proc.stdout)


def _split(trained: dict) -> tuple[set[str], set[str]]:
    """The run's recorded training and validation files (``show --json``'s ``split``),
    relative to the data root."""
    shown = last_json(
        cli("show", trained["run"]["run_id"], "--runs-dir", trained["runs"], "--json")
    )
    split = shown["split"]
    return {i["path"] for i in split["train"]}, {i["path"] for i in split["val"]}


@pytest.mark.slow
def test_evaluate_finds_the_planted_twins_across_the_split(trained, evaluation) -> None:
    train, val = _split(trained)
    across = {
        frozenset(pair)
        for pair in trained["pairs"]
        if (pair[0] in train and pair[1] in val) or (pair[0] in val and pair[1] in train)
    }
    assert len(across) >= 5  # the seed's split puts enough pairs on both sides to measure
    leakage = evaluation["leakage"]
    found = {frozenset((p["val"], p["train"])) for p in leakage["pairs"]}
    recall = len(across & found) / len(across)
    false_pairs = found - {frozenset(pair) for pair in trained["pairs"]}
    false_list = sorted(map(sorted, false_pairs))
    print(f"\nplanted pairs across the split: {len(across)}, found {len(across & found)} "
          f"(recall {recall:.2f}), false pairs {len(false_pairs)}: {false_list}")  # fmt: skip
    assert recall >= 0.8
    for pair in leakage["pairs"]:
        assert pair["val"] in val and pair["train"] in train  # relative to the data root
        assert set(pair) >= {"val", "train", "similarity", "same_label"}
        assert pair["same_label"] == (pair["val"].split("/")[0] == pair["train"].split("/")[0])
    assert leakage["val_images_with_train_twin"] == len({p["val"] for p in leakage["pairs"]})
    twins = {p["val"] for p in leakage["pairs"]}
    images = evaluation_images(trained)
    kept = [img["true"] == img["predicted"] for img in images if img["rel"] not in twins]
    assert leakage["accuracy_without_twins"] == pytest.approx(np.mean(kept), abs=1e-4)


def evaluation_images(trained: dict) -> list[dict]:
    folder = Path(trained["runs"]) / "runs" / trained["run"]["run_id"]
    images = json.loads((folder / "evaluation.json").read_text())["images"]
    root = Path(trained["data"]).resolve()
    return [{**img, "rel": Path(img["path"]).relative_to(root).as_posix()} for img in images]


@pytest.mark.slow
def test_calibration_is_fitted_stored_and_never_worse(trained, evaluation) -> None:
    calibration = evaluation["calibration"]
    assert calibration["ece_after"] <= calibration["ece_before"]
    assert calibration["temperature"] > 0
    folder = Path(trained["runs"]) / "runs" / trained["run"]["run_id"]
    stored = json.loads((folder / "calibration.json").read_text())
    assert stored["temperature"] == pytest.approx(calibration["temperature"], abs=1e-4)
    assert len(stored["scores"]) == trained["run"]["val_images"]
    bins = json.loads((folder / "evaluation.json").read_text())["reliability"]
    assert sum(b["count"] for b in bins["after"]) == trained["run"]["val_images"]


@pytest.mark.slow
def test_predict_json_carries_the_conformal_set(trained) -> None:
    run_id, runs = trained["run"]["run_id"], trained["runs"]
    image = str(Path(trained["data"]) / "ants" / "001.png")
    calibrated = json.loads(
        cli(
            "predict",
            "--run",
            run_id,
            image,
            "--top-k",
            "3",
            "--coverage",
            "0.95",
            "--runs-dir",
            runs,
            "--json",
        ).stdout  # fmt: skip
    )[0]
    raw = json.loads(
        cli(
            "predict", "--run", run_id, image, "--top-k", "3", "--raw", "--runs-dir", runs, "--json"
        ).stdout  # fmt: skip
    )[0]
    assert "set" not in raw
    labels = [p["label"] for p in calibrated["predictions"]]
    assert calibrated["coverage"] == 0.95 and calibrated["set"]
    assert calibrated["set"] == labels[: len(calibrated["set"])]  # most probable first
    from core.runs.calibration import scale

    folder = Path(runs) / "runs" / run_id
    temperature = json.loads((folder / "calibration.json").read_text())["temperature"]
    assert calibrated["temperature"] == pytest.approx(temperature, abs=1e-4)
    raw_probs = {p["label"]: p["probability"] for p in raw["predictions"]}
    expected = scale(np.array([[raw_probs[n] for n in labels]]), temperature)[0]
    # Top-3 of 3 classes: all of them, so the scaled row is the full softmax.
    assert [p["probability"] for p in calibrated["predictions"]] == pytest.approx(expected, 1e-4)
    tta = json.loads(
        cli("predict", "--run", run_id, image, "--tta", "--runs-dir", runs, "--json").stdout
    )[0]
    assert tta["tta"] is True and tta["set"]


@pytest.mark.slow
def test_evaluate_tta_reports_both_accuracies_and_the_cost(trained) -> None:
    proc = cli("evaluate", "--run", trained["run"]["run_id"], "--tta", "--runs-dir",
               trained["runs"], "--json")  # fmt: skip
    tta = json.loads(proc.stdout)["tta"]
    assert tta["images"] == trained["run"]["val_images"] and tta["views"] == 5
    assert 0 <= tta["accuracy"] <= 1 and 0 <= tta["accuracy_tta"] <= 1
    assert tta["gain"] == pytest.approx(tta["accuracy_tta"] - tta["accuracy"], abs=1e-3)
    assert tta["ms_per_image_tta"] > 0 and tta["ms_per_image"] > 0
    assert tta["verdict"].startswith(("Worth it", "Not worth it", "Not clearly worth it"))


@pytest.mark.slow
def test_tensorboard_has_one_val_accuracy_point_per_epoch(trained) -> None:
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(trained["runs"]) / "runs" / trained["run"]["run_id"] / "tensorboard"
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    points = events.Tensors("val_accuracy")
    epochs = EPOCHS + FINE_TUNE_EPOCHS
    assert [p.step for p in points] == list(range(1, epochs + 1))
    history = trained["run"]["history"]["val_accuracy"]
    got = [float(tf.make_ndarray(p.tensor_proto)) for p in points]
    assert got == pytest.approx(history, abs=1e-6)
    tags = events.Tags()["tensors"]
    assert {"loss", "accuracy", "val_loss", "lr", "phase", "confusion_matrix"} <= set(tags)
    # The phase boundary: the fine-tuning phase starts at the epoch after the head's.
    assert [p.step for p in events.Tensors("phase_start")] == [1, EPOCHS + 1]


@pytest.mark.slow
def test_log_mlflow_writes_a_store_mlflow_reads_back(trained) -> None:
    from mlflow.tracking import MlflowClient

    uri = (trained["base"] / "mlruns").as_uri()
    proc = cli("log-mlflow", "--run", trained["run"]["run_id"], "--tracking-uri", uri,
               "--experiment", "ants", "--runs-dir", trained["runs"], "--json")  # fmt: skip
    logged = json.loads(proc.stdout)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(logged["mlflow_run_id"], "val_accuracy")
    assert [m.step for m in history] == list(range(1, EPOCHS + FINE_TUNE_EPOCHS + 1))
    assert [m.value for m in history] == pytest.approx(trained["run"]["history"]["val_accuracy"])
    run = client.get_run(logged["mlflow_run_id"])
    assert run.data.params["backbone"] == "efficientnet_lite0"
    assert run.data.tags["transfer_studio.run_id"] == trained["run"]["run_id"]
    assert client.get_experiment(run.info.experiment_id).name == "ants"
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model_card.md", "confusion_matrix.png", "model"} <= files
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == [
        "model/model.keras"
    ]
