"""Commands and flags for results you can trust: ``log-mlflow``, and what ``evaluate`` and
``predict`` gain (leakage, calibration, prediction sets, test-time augmentation).

``add_parsers``/``COMMANDS`` are the ``trackers`` family of ``core.cli`` (``log-mlflow``);
``add_evaluate_flags`` and ``add_predict_flags`` extend the ``runs`` family's ``evaluate`` and
``predict``, and ``evaluation`` / ``predictions`` are what those commands print.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from core.runs.calibration import DEFAULT_COVERAGE

if TYPE_CHECKING:
    from core.runs.evaluate import ProgressFn

__all__ = [
    "COMMANDS",
    "EVALUATE_KEYS",
    "LOG_MLFLOW_EPILOG",
    "add_evaluate_flags",
    "add_parsers",
    "add_predict_flags",
    "cmd_log_mlflow",
    "evaluation",
    "evaluation_lines",
    "prediction_line",
    "predictions",
]

LOG_MLFLOW_EPILOG = """examples:
  python -m core log-mlflow --run RUN_ID --tracking-uri file:/tmp/mlruns
  python -m core log-mlflow --run RUN_ID --tracking-uri http://localhost:5000 --experiment cats
  mlflow ui --backend-store-uri file:/tmp/mlruns      # then open http://127.0.0.1:5000

Every run also writes TensorBoard event files: tensorboard --logdir RUNS_DIR/runs
"""


def add_parsers(sub: Any) -> None:
    """Register ``log-mlflow`` on ``core.cli``'s subparsers."""
    p = sub.add_parser(
        "log-mlflow",
        help="write a finished run (params, per-epoch metrics, model card, confusion matrix, "
        "model) into an MLflow tracking store",
        description="Log a completed run into any MLflow tracking store, file: URIs included "
        "(no server needed): its config as params, each epoch's metrics with the epoch as step, "
        "the evaluation's accuracy and calibration, and the model card, confusion matrix and "
        "model.keras as artifacts. Needs mlflow-skinny (pip install -r "
        "requirements-trackers.txt).",
        epilog=LOG_MLFLOW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, metavar="RUN_ID", help="a completed run's id")
    p.add_argument(
        "--tracking-uri",
        required=True,
        metavar="URI",
        help="the MLflow tracking store: file:/path/to/mlruns (a folder, no server needed) or "
        "http(s)://host:port (an MLflow server)",
    )
    p.add_argument(
        "--experiment", metavar="NAME", help="MLflow experiment (default: transfer-studio)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--runs-dir",
        default=None,
        help="run store directory (default: $TRANSFER_STUDIO_HOME or ~/.transfer_studio)",
    )


def cmd_log_mlflow(args: argparse.Namespace) -> int:
    """Log one run into MLflow; print where it went."""
    from core.runs.store import RunStore
    from core.runs.trackers import log_to_mlflow

    logged = log_to_mlflow(RunStore(args.runs_dir), args.run, args.tracking_uri, args.experiment)
    if args.json:
        print(json.dumps(logged.to_json()))
        return 0
    print(
        f"logged run {args.run} to {logged.tracking_uri} (experiment {logged.experiment!r}, "
        f"MLflow run {logged.mlflow_run_id}): {logged.params} params, {logged.metric_points} "
        f"metric points, artifacts {', '.join(logged.artifacts)}"
    )
    return 0


COMMANDS = {"log-mlflow": cmd_log_mlflow}


def _coverage(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.9, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def add_predict_flags(p: argparse.ArgumentParser) -> None:
    """``predict``'s calibration, prediction-set and test-time augmentation flags."""
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the image, its mirror and three small crops "
        "(about 5x the prediction time)",
    )
    p.add_argument(
        "--coverage",
        type=_coverage,
        default=DEFAULT_COVERAGE,
        help="how often the prediction set ('set' in --json) holds the true label, from the "
        f"run's validation images (default {DEFAULT_COVERAGE})",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="the model's own probabilities, without the run's temperature (and no set)",
    )


def predictions(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What ``predict`` prints: calibrated probabilities and the set unless ``--raw``."""
    from core.runs.predict import predict_images
    from core.runs.store import RunStore

    return predict_images(
        RunStore(args.runs_dir), args.run, args.images, top_k=args.top_k,
        calibrated=not args.raw, coverage=args.coverage, tta=args.tta,
    )  # fmt: skip


def prediction_line(result: dict[str, Any]) -> str:
    """One text line per image: the top labels, then the set in words."""
    from core.runs.predict import set_text

    line = f"{result['image']}: " + ", ".join(
        f"{p['label']} {p['probability']:.3f}" for p in result["predictions"]
    )
    if result.get("set"):
        line += f"  (set at {result['coverage']:.0%}: {set_text(result['set'])})"
    return line


def add_evaluate_flags(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s test-time augmentation flag."""
    p.add_argument(
        "--tta",
        action="store_true",
        help="also measure test-time augmentation: accuracy with and without, and its latency",
    )


EVALUATE_KEYS = ("leakage", "calibration", "tta")


def evaluation(args: argparse.Namespace, progress: ProgressFn | None = None) -> dict[str, Any]:
    """The run's evaluation with its leakage check and calibration (and TTA with ``--tta``);
    ``progress(done, total)`` follows the validation images."""
    from core.runs.evaluate import evaluate_run, tta_report
    from core.runs.store import RunStore
    from core.training.leakage import check_leakage

    store = RunStore(args.runs_dir)
    ev = evaluate_run(store, args.run, force=args.force, progress=progress)
    ev["leakage"] = check_leakage(store, args.run, force=args.force)
    if args.tta:
        ev["tta"] = tta_report(store, args.run, force=args.force)
    return ev


def evaluation_lines(ev: dict[str, Any]) -> list[str]:
    """The text ``evaluate`` adds after the per-class table."""
    from core.runs.leakage import describe

    lines = ["leakage: " + describe(ev["leakage"])]
    for pair in ev["leakage"]["pairs"][:10]:
        sim = "" if pair["similarity"] is None else f" similarity {pair['similarity']:.3f}"
        labels = (
            "" if pair["same_label"] else f" (labels {pair['val_label']} / {pair['train_label']})"
        )
        lines.append(f"  val {pair['val']}  ~  train {pair['train']}{sim}{labels}")
    c = ev.get("calibration")
    if c:
        lines.append(
            f"calibration: temperature {c['temperature']:.3f}, ECE {c['ece_before']:.4f} -> "
            f"{c['ece_after']:.4f} ({c['method']})"
        )
    if ev.get("tta"):
        t = ev["tta"]
        lines.append(
            f"test-time augmentation: accuracy {t['accuracy']:.3f} -> {t['accuracy_tta']:.3f}, "
            f"{t['ms_per_image']:.1f} -> {t['ms_per_image_tta']:.1f} ms per image. {t['verdict']}"
        )
    return lines
