"""A finished run in the trackers practitioners use: TensorBoard (the command) and MLflow.

Every run writes TensorBoard event files as it trains (``core.training.tensorboard``);
``tensorboard_command`` is what to type to open them. ``log_to_mlflow`` writes one finished run
into any MLflow tracking store (``file:`` URIs included: no server needed): its config as
params, every epoch's metrics with the epoch as step, the evaluation's accuracy and calibration,
and as artifacts the model card, the confusion matrix and ``model.keras``. ``mlflow-skinny`` is
enough (``requirements-trackers.txt``).
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import StudioError
from core.runs.store import COMPLETED, RunStore

__all__ = [
    "DEFAULT_EXPERIMENT",
    "EPOCH_KEYS",
    "MAX_PARAM_CHARS",
    "log_to_mlflow",
    "MlflowLogged",
    "tensorboard_command",
]

EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "duration_s")
DEFAULT_EXPERIMENT = "transfer-studio"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def tensorboard_command(store: RunStore, run_id: str | None = None) -> str:
    """The shell command that opens a run's (or every run's) event files in TensorBoard."""
    folder = store.run_dir(run_id) / "tensorboard" if run_id else store.root / "runs"
    return f"tensorboard --logdir {shlex.quote(str(folder))}"


@dataclass
class MlflowLogged:
    """Where a run went: the store, experiment and MLflow run, and what was written."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    mlflow_run_id: str
    params: int
    metric_points: int
    artifacts: list[str]

    def to_json(self) -> dict[str, Any]:
        """The public object ``log-mlflow --json`` prints."""
        return asdict(self)


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise StudioError(
            "Logging to MLflow needs the mlflow-skinny package, which is not installed. Install "
            "it with: pip install -r requirements-trackers.txt"
        ) from exc
    return mlflow


def _params(config: dict[str, Any]) -> dict[str, str]:
    """The run's config as MLflow params (strings; lists and dicts as JSON)."""
    out = {}
    for key, value in sorted(config.items()):
        text = value if isinstance(value, str) else json.dumps(value)
        out[key] = text[:MAX_PARAM_CHARS]
    return out


def log_to_mlflow(
    store: RunStore, run_id: str, tracking_uri: str, experiment: str | None = None
) -> MlflowLogged:
    """Write the finished run ``run_id`` into the MLflow store at ``tracking_uri``."""
    _mlflow()
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from core.runs.model_card import CONFUSION_IMAGE, write_card
    from core.runs.predict import saved_model_path

    row = store.get_run(run_id)
    if row["status"] != COMPLETED:
        raise StudioError(
            f"Run {run_id} is {row['status']}, not completed: only a finished run can be logged "
            "to MLflow. Wait for it to finish, or pick a completed run."
        )
    result = store.result(run_id)
    model_path = saved_model_path(store, run_id)
    name = experiment or DEFAULT_EXPERIMENT
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        # MLflow 3 keeps its file store working but refuses it unless asked: a folder store is
        # what a user without a server has, so this command asks for it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else client.create_experiment(name)
        run = client.create_run(
            experiment_id,
            run_name=str(result.get("name") or run_id),
            tags={"transfer_studio.run_id": run_id},
        )
    except MlflowException as exc:
        raise StudioError(
            f"Could not open the MLflow tracking store {tracking_uri!r}: {exc.message}. Give a "
            "tracking URI such as file:/path/to/mlruns (a folder, no server) or "
            "http://host:5000 (an MLflow server)."
        ) from exc
    mlflow_id = run.info.run_id
    params = [Param(k, v) for k, v in _params(result["config"]).items()]
    now = int(time.time() * 1000)
    epochs: list[dict[str, Any]] = [dict(e) for e in store.epochs(run_id)]
    metrics = [
        Metric(key, float(epoch[key]), int(epoch.get("t", 0) * 1000) or now, int(epoch["epoch"]))
        for epoch in epochs
        for key in EPOCH_KEYS
        if epoch.get(key) is not None
    ]
    artifacts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="studio-mlflow-") as tmp:
        folder = Path(tmp)
        card = write_card(store, run_id, folder, [], {})
        evaluation_path = store.run_dir(run_id) / "evaluation.json"
        final = _final_metrics(evaluation_path)
        metrics += [Metric(k, v, now, len(epochs)) for k, v in final.items()]
        # MLflow takes at most 100 params and 1000 metrics per batch.
        backbone = str(result["config"].get("backbone"))
        client.set_tag(mlflow_id, "transfer_studio.backbone", backbone)
        for start in range(0, len(params), 100):
            client.log_batch(mlflow_id, params=params[start : start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(mlflow_id, metrics=metrics[start : start + 1000])
        client.log_artifact(mlflow_id, str(card))
        client.log_artifact(mlflow_id, str(folder / CONFUSION_IMAGE))
        client.log_artifact(mlflow_id, str(model_path), artifact_path="model")
        artifacts = [card.name, CONFUSION_IMAGE, f"model/{model_path.name}"]
    client.set_terminated(mlflow_id, status="FINISHED")
    return MlflowLogged(
        tracking_uri, name, str(experiment_id), mlflow_id, len(params), len(metrics), artifacts
    )


def _final_metrics(evaluation_path: Path) -> dict[str, float]:
    """The evaluation's headline numbers (when the run was evaluated)."""
    try:
        evaluation = json.loads(evaluation_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {"eval_accuracy": float(evaluation["accuracy"])}
    calibration = evaluation.get("calibration") or {}
    for key in ("temperature", "ece_before", "ece_after"):
        if key in calibration:
            out[f"calibration_{key}"] = float(calibration[key])
    return out
