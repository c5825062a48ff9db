"""``model_card.md``: what an exported model classifies, how it was trained, how well it does.

Written next to every export (with ``confusion_matrix.png``): the data (source, classes, counts,
split, skipped files, health warnings), the training (backbone, mode, phases, epochs, parameters,
time), the validation results (per-class precision/recall/F1, best and worst classes), the export
table (size, latency, agreement with the live model, accuracy) and the software versions, and a
short Python snippet per exported format that needs nothing from Transfer Studio.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from core.runs.safe_text import md_text
from core.runs.store import RunStore

__all__ = [
    "CARD_FILE",
    "CONFUSION_IMAGE",
    "SNIPPETS",
    "VERSION_PACKAGES",
    "card_text",
    "confusion_png",
    "export_table",
    "versions",
    "write_card",
]

CARD_FILE = "model_card.md"
CONFUSION_IMAGE = "confusion_matrix.png"
VERSION_PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "numpy", "ai-edge-litert",
                    "onnxruntime", "onnx", "tf2onnx", "openvino")  # fmt: skip

# Usage per format: plain runtimes only. {file} is the artifact, {size} the input side in pixels.
_READ = (
    "import numpy as np\nfrom PIL import Image\n\n"
    'labels = open("labels.txt").read().splitlines()\n'
    'image = Image.open("photo.jpg").convert("RGB").resize(({size}, {size}))\n'
    "x = np.asarray(image, np.float32)[None]  # raw 0-255 RGB: preprocessing is inside the model\n"
)
SNIPPETS = {
    "keras": _READ + 'import keras\n\nmodel = keras.saving.load_model("{file}")\n'
    "probs = model.predict(x)[0]\n",
    "savedmodel": _READ + 'import tensorflow as tf\n\nserve = tf.saved_model.load("{file}")'
    '.signatures["serve"]\nprobs = list(serve(tf.constant(x)).values())[0].numpy()[0]\n',
    "tflite": _READ + "from ai_edge_litert.interpreter import Interpreter\n\n"
    'interpreter = Interpreter(model_path="{file}")\ninterpreter.allocate_tensors()\n'
    'interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)\n'
    "interpreter.invoke()\n"
    'probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]\n',
    "tflite-int8": _READ + "from ai_edge_litert.interpreter import Interpreter\n\n"
    'interpreter = Interpreter(model_path="{file}")\ninterpreter.allocate_tensors()\n'
    "inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]\n"
    'interpreter.set_tensor(inp["index"], x.astype(np.uint8))  # input scale 1, zero point 0\n'
    "interpreter.invoke()\n"
    'scale, zero = out["quantization"]\n'
    'probs = (interpreter.get_tensor(out["index"])[0].astype(np.float32) - zero) * scale\n',
    "onnx": _READ + "import onnxruntime as ort\n\n"
    'session = ort.InferenceSession("{file}", providers=["CPUExecutionProvider"])\n'
    "probs = session.run(None, {{session.get_inputs()[0].name: x}})[0][0]\n",
}
SNIPPETS["tflite-fp16"] = SNIPPETS["tflite"]
SNIPPETS["openvino"] = (
    _READ + "import openvino as ov\n\n"
    'compiled = ov.Core().compile_model("{file}", "CPU")  # reads model.bin beside it\n'
    "probs = compiled(x)[0][0]\n"
)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _size(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _cell(text: Any) -> str:
    """Text from a user or a folder (a name, a message quoting one) in the card's Markdown,
    inline or in a table cell: shown as typed, never as a link, image or HTML."""
    return md_text(text)


def versions() -> dict[str, str]:
    """Installed versions of the packages an export depends on (missing ones left out)."""
    found = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def export_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The export benchmark as a Markdown table (one row per format)."""
    lines = [
        "| format | file | size | runtime | latency p50 (1 image) | top-1 agreement | "
        "accuracy | tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        latency = row.get("latency_ms_p50")
        fmt = row["format"] + (" (dynamic range)" if row.get("quantized") else "")
        agreement = _pct(row.get("top1_agreement"))
        if row.get("near_ties"):  # disagreements where the live model itself is at a near-tie
            agreement += f" ({row['near_ties']} near-ties)"
        lines.append(
            f"| {fmt} | {row['file']} | {_size(row.get('bytes'))} | {_cell(row.get('runtime'))} "
            f"| {'–' if latency is None else f'{latency:.1f} ms'} "
            f"| {agreement} | {_pct(row.get('accuracy'))} "
            f"| {_cell(row.get('tolerance', ''))} |"
        )
    return "\n".join(lines)


def confusion_png(matrix: list[list[int]], path: Path, cell: int = 28) -> None:
    """A plain confusion-matrix heat map (rows: true class, columns: predicted) as a PNG."""
    from PIL import Image, ImageDraw

    counts = np.asarray(matrix, dtype=float)
    n = max(1, len(counts))
    row_sums = counts.sum(axis=1, keepdims=True) if counts.size else np.ones((1, 1))
    share = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    image = Image.new("RGB", (n * cell + 1, n * cell + 1), "white")
    draw = ImageDraw.Draw(image)
    for i in range(len(counts)):
        for j in range(len(counts)):
            shade = int(255 - 200 * share[i, j])
            box = (j * cell, i * cell, (j + 1) * cell, (i + 1) * cell)
            draw.rectangle(box, fill=(shade, shade, 255), outline=(200, 200, 200))
            text = str(int(counts[i, j]))
            draw.text((j * cell + 4, i * cell + 8), text, fill="black" if shade > 120 else "white")
    image.save(path)


def _health(config: dict[str, Any]) -> list[str]:
    """The data health warnings of the run's data, when it can still be read."""
    try:
        from core.data import load_dataset
        from core.data.health import health_report

        data = load_dataset(config["data"], val_split=config["val_split"], seed=config["seed"])
        return [item["message"] for item in health_report(data) if item["level"] == "warning"]
    except Exception:  # the card is still useful without them; the data may be gone
        return []


def card_text(
    result: dict[str, Any],
    evaluation: dict[str, Any] | None,
    rows: Sequence[Mapping[str, Any]],
    summary: dict[str, Any],
    health: list[str] | None = None,
    params: tuple[int, int] | None = None,
) -> str:
    """The model card's Markdown from the run's result, its evaluation and the export rows."""
    config = result.get("config") or {}
    names = list(result.get("class_names") or [])
    dataset = result.get("dataset") or {}
    size = config.get("image_size") or "?"
    out = [f"# Model card: {_cell(result.get('name') or result.get('run_id'))}", ""]
    out += [
        f"An image classifier for **{len(names)} classes**: {', '.join(map(_cell, names))}. "
        "Input: one RGB "
        f"image of {size} x {size} px as raw 0-255 values (preprocessing is inside the model); "
        "output: one probability per class, in the order of `labels.txt`.",
        "",
        f"Run `{result.get('run_id')}`, trained with Transfer Studio.",
        "",
        "## Data",
        "",
        f"- Source: {_cell(config.get('data'))}",
        f"- Split: {result.get('train_images')} training / {result.get('val_images')} validation "
        f"images (validation share {config.get('val_split')}, seed {config.get('seed')})",
    ]
    skipped = result.get("skipped_files") or []
    out.append(f"- Skipped files: {len(skipped)}")
    counts = dataset.get("class_counts") or {}
    if counts.get("train"):
        out += ["", "| class | training | validation |", "|---|---|---|"]
        for name in names:
            train_n = counts["train"].get(name, "?")
            out.append(f"| {_cell(name)} | {train_n} | {counts.get('val', {}).get(name, '?')} |")
    if health:
        out += ["", "Data health warnings:", ""] + [f"- {_cell(m)}" for m in health]
    out += [
        "",
        "## Training",
        "",
        f"- Backbone: {config.get('backbone')} (weights: {config.get('weights')}), mode: "
        f"{config.get('mode')}",
        f"- Image size {size} px, batch {config.get('batch_size')}, dropout "
        f"{config.get('dropout')}, head {config.get('dense_units')} units",
    ]
    for phase in result.get("phases") or []:
        details = ", ".join(f"{k} {v}" for k, v in phase.items() if k != "phase")
        out.append(f"- Phase {phase.get('phase', '?')}: {details}")
    history = result.get("history") or {}
    out.append(f"- Epochs run: {len(history.get('loss') or [])}")
    if params:
        out.append(f"- Parameters: {params[0]:,} trainable, {params[1]:,} frozen")
    if result.get("duration_s"):
        out.append(f"- Training time: {result['duration_s']:.0f} s")
    out += ["", "## Results (validation set)", ""]
    if evaluation:
        out.append(f"Accuracy **{evaluation['accuracy']:.1%}** on {evaluation['val_images']} "
                   "images.")  # fmt: skip
        out += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for c in evaluation["per_class"]:
            out.append(
                f"| {_cell(c['class'])} | {c['precision']:.3f} | {c['recall']:.3f} | "
                f"{c['f1']:.3f} | {c['support']} |"
            )
        ranked = sorted(evaluation["per_class"], key=lambda c: -c["f1"])
        if len(ranked) > 1:
            best, worst = ranked[0], ranked[-1]
            out += ["", f"Best class: {_cell(best['class'])} (F1 {best['f1']:.3f}); worst: "
                        f"{_cell(worst['class'])} (F1 {worst['f1']:.3f})."]  # fmt: skip
        out += ["", f"![Confusion matrix: rows true class, columns predicted]({CONFUSION_IMAGE})"]
    else:
        out.append("No evaluation is available (the validation data could not be read).")
    out += _calibration_lines(evaluation)
    if rows:  # a card without exports (e.g. logged to a tracker) has no Exports section
        verified = summary.get("verified_images")
        out += [
            "",
            "## Exports",
            "",
            "Each file was loaded in its own runtime, in a separate Python process without "
            "Transfer Studio, and compared with the trained model on "
            f"{verified} {summary.get('verified_on')} images (live model accuracy on them: "
            f"{_pct(summary.get('live_accuracy'))}). Latency: median of single-image calls on "
            "this machine's CPU.",
            "",
            export_table(rows),
        ]
    for item in summary.get("skipped_formats") or []:
        out.append(f"\nNot exported: {item['format']}, {item['reason']}.")
    out += ["", "## Versions", ""]
    out += [f"- {name} {ver}" for name, ver in versions().items()]
    out += ["", "## Usage", ""]
    for row in rows:
        snippet = SNIPPETS.get(row["format"], "")
        if snippet:
            out += [f"### {row['file']}", "", "```python",
                    snippet.format(file=row["file"], size=size).rstrip(),
                    'print(labels[int(np.argmax(probs))])', "```", ""]  # fmt: skip
    return "\n".join(out).rstrip() + "\n"


def _calibration_lines(evaluation: dict[str, Any] | None) -> list[str]:
    """The card's calibration section: the temperature every export leaves to its user."""
    calibration = (evaluation or {}).get("calibration")
    if not calibration:
        return []
    t = calibration["temperature"]
    return [
        "",
        "## Calibration",
        "",
        f"Temperature **T = {t:.4f}**, fitted on the validation set ({calibration['method']}): "
        f"expected calibration error {calibration['ece_before']:.4f} before, "
        f"{calibration['ece_after']:.4f} after. Every exported file keeps the model's own "
        "probabilities; Transfer Studio's Predict applies the temperature. To apply it yourself: "
        "`p = softmax(log(p) / T)` (with T = 1 nothing changes).",
    ]


def write_card(
    store: RunStore,
    run_id: str,
    folder: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: dict[str, Any],
    model: Any = None,
) -> Path:
    """Write ``model_card.md`` and ``confusion_matrix.png`` into ``folder``; the card's path."""
    from core.errors import StudioError
    from core.runs.evaluate import evaluate_run

    result: dict[str, Any] = dict(store.result(run_id))
    try:
        evaluation: dict[str, Any] | None = evaluate_run(store, run_id, model=model)
    except StudioError:  # e.g. the data is gone: the card says so
        evaluation = None
    params = None
    if model is not None:
        from core.models.layers import count_params

        trainable, frozen = count_params(model)
        params = (int(trainable), int(frozen))
    matrix = evaluation["confusion_matrix"] if evaluation else [[0]]
    confusion_png(matrix, folder / CONFUSION_IMAGE)
    text = card_text(result, evaluation, rows, summary, _health(result["config"]), params)
    path = folder / CARD_FILE
    path.write_text(text, encoding="utf-8")
    return path
