"""The Run page (summary, confusion matrix, misclassified gallery, export) and Predict's Grad-CAM,
under AppTest against a store seeded with one tiny finished run; plus ``app.views.run_page``."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from conftest import seeded_studio
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.views import run_page as run_views
from app.views.text import md_escape
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120
EVALUATION = {  # what core.runs.evaluate.evaluate_run returns, trimmed to what the views read
    "class_names": ["cat", "dog", "fox"],
    "confusion_matrix": [[5, 2, 0], [1, 6, 0], [0, 3, 4]],
    "per_class": [
        {"class": c, "precision": 0.8, "recall": 0.7, "f1": 0.75, "support": s}
        for c, s in (("cat", 7), ("dog", 7), ("fox", 7))
    ],
    "macro_avg": {"precision": 0.8, "recall": 0.7, "f1": 0.75},
    "images": [
        {"path": "a.png", "true": "fox", "predicted": "dog", "probabilities": [0.1, 0.5, 0.4]},
        {"path": "b.png", "true": "fox", "predicted": "dog", "probabilities": [0.0, 0.9, 0.1]},
        {"path": "c.png", "true": "cat", "predicted": "cat", "probabilities": [0.7, 0.2, 0.1]},
    ],
}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A studio home of its own, holding one completed tiny run; yields (queue, run_id)."""
    with seeded_studio(tmp_path_factory.mktemp("run-page-home"), TINY) as seeded:
        yield seeded


def _page(path: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    return at.switch_page(path).run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _png(seed: int = 0, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- pages


@pytest.mark.slow
def test_run_page_summary_matrix_and_gallery(seeded):
    queue, run_id = seeded
    at = _page("app/pages/run.py")
    _ok(at)
    assert at.selectbox(key="run_page_run").value == run_id
    assert at.query_params["run"] == run_id
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Epochs"] == "1/1" and metrics["Best val acc"].startswith("0.")
    data = md_escape("builtin:textures")  # user text is escaped: shown as typed, not as Markdown
    assert any("mobilenet_v2" in m.value and data in m.value for m in at.markdown)
    assert metrics["Validation accuracy"].endswith("%")
    phases, per_class = (d.value for d in at.dataframe)
    assert list(phases["phase"]) == ["1 · head"] and phases["trainable params"].iloc[0] > 0
    assert list(per_class["class"])[-1] == "macro average"
    assert {"precision", "recall", "f1", "support"} <= set(per_class.columns)
    assert len(at.get("plotly_chart")) == 1  # the confusion matrix

    from core.runs.evaluate import evaluate_run

    evaluation = evaluate_run(queue.store, run_id)  # cached by the page's own call
    matrix = np.array(evaluation["confusion_matrix"])
    i, j = np.unravel_index(matrix.argmax(), matrix.shape)
    names = evaluation["class_names"]
    at.selectbox(key=f"true_{run_id}").select(names[i]).run()
    at.selectbox(key=f"pred_{run_id}").select(names[j]).run()
    _ok(at)
    assert any(f"{matrix[i, j]} validation images of {names[i]}" in m.value for m in at.markdown)
    (gallery,) = at.get("image")
    assert len(gallery.value) == min(matrix[i, j], run_views.GALLERY_LIMIT)
    assert all(names[j] in caption and "%" in caption for caption in gallery.captions)


@pytest.mark.slow
def test_run_page_opens_the_run_in_the_query(seeded):
    _, run_id = seeded
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.query_params["run"] = "no-such-run"  # unknown ids fall back to the newest completed
    at.switch_page("app/pages/run.py").run()
    _ok(at)
    assert at.selectbox(key="run_page_run").value == run_id


@pytest.mark.slow
def test_run_page_export_offers_downloads(seeded):
    _, run_id = seeded
    at = _page("app/pages/run.py")
    assert at.radio(key="export_format").options == ["keras", "savedmodel", "tflite"]
    assert at.checkbox(key="export_quantize").disabled  # only for tflite
    assert not at.get("download_button")  # nothing is exported on page load
    at.radio(key="export_format").set_value("keras")
    at.button(key="export").click().run()
    _ok(at)
    assert "verified it on" in at.success[0].value
    downloads = [d.proto.label for d in at.get("download_button")]
    assert downloads == ["model.keras", "labels.txt", "config.json"]
    at.run()  # a rerun keeps the export (and does not export again)
    assert len(at.get("download_button")) == 3


@pytest.mark.slow
def test_predict_page_grad_cam(seeded):
    _, run_id = seeded
    at = _page("app/pages/predict.py")
    at.file_uploader(key="images").set_value([("a.png", _png(1), "image/png")]).run()
    assert len(at.get("image")) == 1  # Grad-CAM is off by default
    at.toggle(key="gradcam").set_value(True).run()
    _ok(at)
    images = at.get("image")
    assert len(images) == 2 and images[1].captions[0].startswith("Grad-CAM · ")
    assert len(at.get("plotly_chart")) == 1
    assert sum(" ms" in c.value and run_id in c.value for c in at.caption) == 1
    assert any("1×1" in i.value for i in at.info)  # 32 px input: a 1x1 feature map


# --------------------------------------------------------------------------- app.views.run_page


def test_pick_run_prefers_the_request_then_the_newest_completed():
    runs = [
        {"run_id": "c", "status": "stopped"},
        {"run_id": "b", "status": "completed"},
        {"run_id": "a", "status": "completed"},
    ]
    assert run_views.pick_run(runs, ["a", "b"]) == "a"
    assert run_views.pick_run(runs, [None, "x"]) == "b"
    assert run_views.pick_run(runs[:1]) == "c"
    assert run_views.pick_run([]) is None


def test_confusion_matrix_figure_annotates_counts_and_outlines_the_pick():
    fig = run_views.confusion_matrix_figure(EVALUATION, selected=("fox", "dog"))
    heat, picker = fig.data
    assert isinstance(heat, go.Heatmap) and heat.texttemplate == "%{text}"
    assert [list(row) for row in heat.text] == EVALUATION["confusion_matrix"]
    assert list(heat.y) == ["cat", "dog", "fox"] and fig.layout.yaxis.autorange == "reversed"
    assert len(picker.customdata) == 9 and list(picker.customdata[7]) == ["fox", "dog", 3]
    (shape,) = fig.layout.shapes
    assert (shape.x0, shape.x1, shape.y0, shape.y1) == (0.5, 1.5, 1.5, 2.5)


def test_cell_from_selection():
    names = EVALUATION["class_names"]
    event = {"selection": {"points": [{"x": "dog", "y": "fox", "customdata": ["fox", "dog", 3]}]}}
    assert run_views.cell_from_selection(names, event) == ("fox", "dog")
    event = {"selection": {"points": [{"x": "cat", "y": "dog"}]}}
    assert run_views.cell_from_selection(names, event) == ("dog", "cat")
    assert run_views.cell_from_selection(names, {"selection": {"points": []}}) is None
    assert run_views.cell_from_selection(names, None) is None
    event = {"selection": {"points": [{"x": "owl", "y": "dog"}]}}
    assert run_views.cell_from_selection(names, event) is None


def test_default_cell_per_class_rows_and_gallery():
    assert run_views.default_cell(EVALUATION) == ("fox", "dog")  # the largest confusion
    assert run_views.default_cell({**EVALUATION, "confusion_matrix": np.eye(3).tolist()}) == (
        "cat",
        "cat",
    )
    rows = run_views.per_class_rows(EVALUATION)
    assert rows[-1]["class"] == "macro average" and rows[-1]["support"] == 21
    items, total = run_views.gallery(EVALUATION, "fox", "dog")
    assert total == 2 and [i["path"] for i in items] == ["b.png", "a.png"]  # confident first
    assert items[0]["caption"] == "dog 90% (fox 10%)"
    items, total = run_views.gallery(EVALUATION, "cat", "cat", limit=0)
    assert (items, total) == ([], 1)


def test_export_downloads_zip_a_savedmodel_folder(tmp_path):
    model = tmp_path / "saved_model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb")
    (model / "variables" / "variables.index").write_bytes(b"idx")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    export = {"files": [str(model), str(tmp_path / "labels.txt")]}
    items = run_views.export_downloads(export)
    assert [i["file_name"] for i in items] == ["saved_model.zip", "labels.txt"]
    assert [i["mime"] for i in items] == ["application/zip", "text/plain"]
    with zipfile.ZipFile(io.BytesIO(run_views.file_bytes(items[0]["path"]))) as zf:
        assert sorted(zf.namelist()) == [
            "saved_model/saved_model.pb",
            "saved_model/variables/variables.index",
        ]
    assert run_views.file_bytes(items[1]["path"]) == b"a\nb\n"
