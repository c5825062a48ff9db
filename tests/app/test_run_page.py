"""The Run page (summary, confusion matrix, misclassified gallery, export) and Predict's Grad-CAM,
under AppTest against a store seeded with one tiny finished run; plus ``app.views.run_page``."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.views import run_page as run_views
from app.views.text import md_escape
from tests.helpers import TINY, fake_studio, seeded_studio, stored_run, write_pngs

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def row(tmp_path):
    """A studio home of its own holding one completed run as the worker leaves it, evaluated,
    without training (for the Run page's tests that never load the model): (store, run_id)."""
    names = ["banded", "dotted", "striped"]
    matrix = [[3, 0, 0], [0, 1, 1], [1, 0, 2]]  # the largest cell: 3 images of banded
    pictures = [Path(p) for p in write_pngs(tmp_path / "pictures", 8)]
    images = [  # one validation image per count of the matrix, as the evaluation lists them
        {"path": str(pictures.pop()), "true": names[i], "predicted": names[j],
         "probabilities": [0.8 if k == j else 0.1 for k in range(3)]}
        for i in range(3) for j in range(3) for _ in range(matrix[i][j])
    ]  # fmt: skip
    with fake_studio(tmp_path / "home") as store:
        yield store, stored_run(store, TINY, names, matrix=matrix, images=images)


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


def test_run_page_summary_matrix_and_gallery(row):
    store, run_id = row
    at = _page("pages/run.py")
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
    assert list(per_class["class"])[-1] == "macro avg"
    assert {"precision", "recall", "f1", "support"} <= set(per_class.columns)
    # Its five columns start within the right-hand column's 300 px at 1280 x 800 (measured in
    # Chromium: at 333 px the last one, "support", was cut off).
    shown = json.loads(at.dataframe[1].proto.columns)
    assert [shown[c]["label"] for c in per_class.columns] == [
        "class", "precision", "recall", "F1", "images"
    ]  # fmt: skip
    assert sum(shown[c]["width"] for c in per_class.columns) <= 300
    assert len(at.get("plotly_chart")) == 1  # the confusion matrix

    from core.runs.evaluate import evaluate_run

    evaluation = evaluate_run(store, run_id)  # cached by the page's own call
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


def test_run_page_opens_the_run_in_the_query(row):
    _, run_id = row
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.query_params["run"] = "no-such-run"  # unknown ids fall back to the newest completed
    at.switch_page("pages/run.py").run()
    _ok(at)
    assert at.selectbox(key="run_page_run").value == run_id


@pytest.mark.slow
def test_run_page_export_offers_downloads(seeded):
    _, run_id = seeded
    at = _page("pages/run.py")
    assert at.radio(key="export_format").options == [
        "keras", "savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx", "openvino"
    ]  # fmt: skip
    assert at.checkbox(key="export_quantize").disabled  # only for tflite
    assert not at.get("download_button")  # nothing is exported on page load
    at.radio(key="export_format").set_value("keras")
    at.button(key="export").click().run()
    _ok(at)
    assert "verified it on" in at.success[0].value
    downloads = [d.proto.label for d in at.get("download_button")]
    assert downloads == [
        "Download all (zip)", "model.keras", "labels.txt", "config.json", "model_card.md",
        "confusion_matrix.png",
    ]  # fmt: skip
    at.run()  # a rerun keeps the export (and does not export again)
    assert len(at.get("download_button")) == 6
    # Another format: the keras result must not stay on screen as if it were that format's.
    at.radio(key="export_format").set_value("tflite").run()
    _ok(at)
    assert not at.get("download_button") and not at.success
    at.radio(key="export_format").set_value("keras").run()  # its own result is kept
    assert len(at.get("download_button")) == 6


@pytest.mark.slow
def test_run_page_reads_the_evaluation_the_worker_wrote(seeded, monkeypatch):
    """The worker evaluated the run as it completed: the page opens without running the model."""
    import core.runs.predict
    from app import loaders
    from core.runs.evaluate import EVALUATION_FILE

    queue, run_id = seeded
    assert (queue.store.run_dir(run_id) / EVALUATION_FILE).is_file()

    def no_model(*_args, **_kwargs):
        raise AssertionError("the Run page loaded the model to evaluate it")

    monkeypatch.setattr(core.runs.predict, "load_run", no_model)
    loaders._evaluation.clear()  # no copy in memory from an earlier test: the file is read
    at = _page("pages/run.py")
    _ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Validation accuracy"].endswith("%")
    assert len(at.get("plotly_chart")) == 2  # the confusion matrix and the reliability diagram


def _failed_run(store, config, error: str) -> str:
    """A run as the worker leaves one that failed before its first epoch."""
    from core.runs.store import FAILED

    run_id = store.create_run(config)
    store.mark_running(run_id)
    store.mark_finished(run_id, FAILED, error=error)
    return run_id


def _open_run(run_id: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.query_params["run"] = run_id
    return at.switch_page("pages/run.py").run()


def test_run_page_renames_the_run(row):
    store, run_id = row
    before = store.result(run_id)["name"]
    at = _page("pages/run.py")
    assert at.text_input(key=f"name_{run_id}").value == before
    try:
        at.text_input(key=f"name_{run_id}").input("  cats   vs dogs  ").run()
        at.button(key="rename").click().run()
        _ok(at)
        assert store.result(run_id)["name"] == "cats vs dogs"
        assert any("Renamed the run" in s.value for s in at.success)
        selector = at.selectbox(key="run_page_run")
        assert "cats vs dogs" in selector.format_func(selector.value)
        assert at.text_input(key=f"name_{run_id}").value == "cats vs dogs"
        at.text_input(key=f"name_{run_id}").input("   ").run()
        at.button(key="rename").click().run()
        assert not at.exception and "cannot be empty" in at.error[0].value
        assert store.result(run_id)["name"] == "cats vs dogs"
    finally:
        store.rename(run_id, before)


def test_run_page_deletes_a_run_after_a_confirmation(row):
    store, kept = row
    run_id = _failed_run(store, TINY, "Out of memory")
    folder = store.run_dir(run_id)
    (folder / "error.log").write_text("Traceback ...")
    at = _open_run(run_id)
    assert at.selectbox(key="run_page_run").value == run_id
    assert "Delete this run (" in at.button(key="delete").label
    at.button(key="delete").click().run()
    _ok_but_the_run_error(at, "Out of memory")
    assert "cannot be undone" in at.warning[0].value and store.get_run(run_id)
    at.button(key="delete_cancel").click().run()  # cancel: nothing happens
    assert not at.warning and folder.is_dir()
    at.button(key="delete").click().run()
    at.button(key="delete_confirm").click().run()
    _ok(at)
    assert run_id not in {r["run_id"] for r in store.list_runs()}
    assert not folder.exists()
    assert any("Deleted run" in s.value for s in at.success)
    assert at.selectbox(key="run_page_run").value == kept  # back to the newest completed run


def test_run_page_lists_an_interrupted_run_and_resumes_it(row, monkeypatch):
    """A run whose worker died (kill -9) is on the Run page with what happened and Resume."""
    from core.runs.store import INTERRUPTED
    from core.training.jobs import JobQueue

    store, _ = row
    run_id = store.create_run(TINY)
    store.mark_running(run_id)
    lost = "The process running this run ended before it finished."
    store.update(run_id, status=INTERRUPTED, error=lost)
    resumed: list[str] = []
    monkeypatch.setattr(JobQueue, "resume", lambda self, rid, progress=None: resumed.append(rid))
    try:
        at = _open_run(run_id)
        assert not at.exception, [e.value for e in at.exception]
        assert at.selectbox(key="run_page_run").value == run_id
        assert any(lost in w.value for w in at.warning)
        at.button(key="run_page_resume").click().run()
        assert resumed == [run_id] and any("Resumed" in s.value for s in at.success)
    finally:
        store.delete_run(run_id)


@pytest.mark.slow
def test_run_page_offers_the_fix_of_a_run_failed_for_offline_weights(seeded, tmp_path, monkeypatch):
    """ImageNet weights that need the network: Resume would fail again, so the page offers the
    offline backbone or random weights instead, and a click queues that run."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing cached: mobilenet_v2 needs network
    queue, _ = seeded
    store = queue.store
    config = TINY.with_changes(weights="imagenet")
    run_id = _failed_run(store, config, "ImageNet weights for mobilenet_v2 are not cached")
    new: list[str] = []
    try:
        at = _open_run(run_id)
        _ok_but_the_run_error(at, "are not cached")
        labels = [b.label for b in at.button]
        assert "Train again with EfficientNet-Lite0 (offline)" in labels
        assert "Train again without pretrained weights" in labels
        assert "Resume" not in labels
        # ... or the exact file Keras wants, carried in by hand
        uploads = at.get("file_uploader")
        assert [u.proto.label for u in uploads] == ["Import the weights file"]
        wanted = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
        assert any(wanted in c.value and "storage.googleapis.com" in c.value for c in at.caption)
        before = {r["run_id"] for r in store.list_runs()}
        at.button(key=f"run_page_fix1_{run_id}").click().run()
        _ok_but_the_run_error(at, "are not cached")
        new = [r["run_id"] for r in store.list_runs() if r["run_id"] not in before]
        assert len(new) == 1 and at.session_state["run_id"] == new[0]
        fixed = store.config(new[0])
        assert (fixed.backbone, fixed.weights, fixed.image_size) == ("mobilenet_v2", "none", 32)
        assert any(new[0] in s.value for s in at.success)
    finally:
        for done in new:
            queue.stop(done)
            queue.wait(done, timeout=300)
            store.delete_run(done)
        store.delete_run(run_id)


def test_run_page_offers_resume_for_a_failure_resume_can_get_past(row):
    store, _ = row
    run_id = _failed_run(store, TINY, "No space left on device")  # random weights: no download
    try:
        at = _open_run(run_id)
        _ok_but_the_run_error(at, "No space left")
        labels = [b.label for b in at.button]
        assert "Resume" in labels and not any(lb.startswith("Train again") for lb in labels)
        assert not at.get("radio")  # no export (nor evaluation) of a run without a model
    finally:
        store.delete_run(run_id)


def _ok_but_the_run_error(at: AppTest, error: str) -> None:
    """No exception, and no error box but the failed run's own message."""
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error if error not in e.value] == []
    assert any(error in e.value for e in at.error)


@pytest.mark.slow
def test_predict_page_grad_cam(seeded):
    _, run_id = seeded
    at = _page("pages/predict.py")
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
    assert rows[-1]["class"] == "macro avg" and rows[-1]["support"] == 21
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


def _summary(run_id, acc, status="completed", data="builtin:textures"):
    return {"run_id": run_id, "status": status, "best_val_accuracy": acc, "data": data}


def test_predict_preselects_the_best_run_on_the_data_never_simply_the_newest():
    # Newest first, as list_runs gives them: "Compare all modes" with a scratch baseline last.
    runs = [
        _summary("scratch", 0.33),
        _summary("full", 0.90),
        _summary("fine", 0.93),
        _summary("feature", 0.91),
        _summary("other-data", 0.99, data="builtin:photos"),
        _summary("stopped", 1.0, status="stopped"),
    ]
    assert run_views.preselected_model(runs, "builtin:textures") == "fine"
    assert run_views.preselected_model(runs, " builtin:textures ") == "fine"
    assert run_views.preselected_model(runs, "builtin:photos") == "other-data"
    # Data with no completed run (or none chosen): the best completed run on any data.
    assert run_views.preselected_model(runs, "/my/folder") == "other-data"
    assert run_views.preselected_model(runs, None) == "other-data"
    # Only stopped runs: the best of those; nothing offered: nothing.
    assert run_views.preselected_model(runs[-1:], "builtin:textures") == "stopped"
    assert run_views.preselected_model([], "builtin:textures") is None


def test_predict_and_compare_name_the_same_best_run_whatever_the_tie():
    """Two runs at 100 %: Compare's banner and Predict's preselection break the tie one way
    (the faster run), whether or not the user just watched the other one."""
    from app.views import dashboard

    runs = [  # newest first
        {**_summary("slower", 1.0), "duration_s": 30.0, "created_at": 2.0},
        {**_summary("faster", 1.0), "duration_s": 20.0, "created_at": 1.0},
        {**_summary("worse", 0.9), "duration_s": 5.0, "created_at": 0.5},
    ]
    assert dashboard.best_run(runs) == "faster"
    assert run_views.preselected_model(runs, "builtin:textures") == "faster"
    assert run_views.preselected_model(runs, None, watched="slower") == "faster"
    assert (
        dashboard.compare_table([{**r, "config": {}, "history": {}, "phases": []} for r in runs])[
            1
        ]["best"]
        == "★"
    )
    # an equal wall time too: the newest
    same = [{**r, "duration_s": 20.0} for r in runs]
    assert dashboard.best_run(same) == run_views.preselected_model(same) == "slower"


def test_predict_preselects_the_best_run_on_the_watched_runs_data():
    runs = [_summary("new", 0.90), _summary("old", 0.93), _summary("scratch", 0.33)]
    # Watched, but not the best: Compare's banner names "old", so does Predict.
    assert run_views.preselected_model(runs, "builtin:textures", "new") == "old"
    assert run_views.preselected_model(runs, "builtin:textures", "scratch") == "old"
    assert run_views.preselected_model(runs, "builtin:textures", "gone") == "old"
    running = [_summary("live", None, status="running"), *runs]
    assert run_views.preselected_model(running, "builtin:textures", "live") == "old"
    tie = [_summary("b", 0.8), _summary("a", 0.8)]
    assert run_views.preselected_model(tie, "builtin:textures") == "b"  # the newer of equals


OFFLINE = ("efficientnet_lite0", "EfficientNet-Lite0 (offline)")


def _failed(status="failed", **config):
    from core.config import RunConfig

    return {"status": status, "config": RunConfig(**config).to_dict()}


def test_run_actions_offer_fixes_when_resume_cannot_get_the_weights():
    result = _failed(backbone="mobilenet_v2", weights="imagenet", image_size=64, name="mine",
                     extra={"compare_group": "g1"})  # fmt: skip
    actions = run_views.run_actions(result, False, OFFLINE)
    assert actions["resume"] is False
    offline, scratch = actions["fixes"]
    assert offline["label"] == "Train again with EfficientNet-Lite0 (offline)"
    assert offline["config"].backbone == "efficientnet_lite0"
    assert offline["config"].image_size == 64 and offline["config"].weights == "imagenet"
    assert scratch["label"] == "Train again without pretrained weights"
    assert (scratch["config"].backbone, scratch["config"].weights) == ("mobilenet_v2", "none")
    for fix in (offline, scratch):  # a new run: not the old one's name or compare group
        assert fix["config"].name == "" and "compare_group" not in fix["config"].extra
        fix["config"].validate()
    # The offline backbone itself failing for its weights: only the random-weights fix.
    lite = run_views.run_actions(_failed(weights="imagenet"), False, OFFLINE)
    assert [f["label"] for f in lite["fixes"]] == ["Train again without pretrained weights"]


def test_run_actions_keep_resume_where_it_can_help():
    offline = {"backbone": "mobilenet_v2", "weights": "imagenet"}
    # the weights are there now (cached since): resume can succeed
    assert run_views.run_actions(_failed(**offline), True, OFFLINE) == {"resume": True, "fixes": []}
    # no pretrained weights needed: a failure of another kind
    for config in ({"weights": "none"}, {**offline, "mode": "scratch"}):
        assert run_views.run_actions(_failed(**config), False, OFFLINE)["resume"] is True
    # stopped and interrupted runs resume; completed and active ones offer nothing
    for status in ("stopped", "interrupted"):
        assert run_views.run_actions(_failed(status, **offline), False, OFFLINE) == {
            "resume": True,
            "fixes": [],
        }
    for status in ("completed", "running", "queued"):
        assert run_views.run_actions(_failed(status), False, OFFLINE) == {
            "resume": False,
            "fixes": [],
        }


def test_size_text():
    assert run_views.size_text(999) == "999 B"
    assert run_views.size_text(12_345_678) == "12.3 MB"
    assert run_views.size_text(3.2e12) == "3200.0 GB"
    assert run_views.size_text(None) == "–"


def test_the_summary_line_says_the_input_size_the_run_used():
    """An unset size is the backbone's default: the line says 224 px, never "default px"."""
    result = {"config": {"weights": "imagenet", "backbone": "efficientnet_lite0",
                         "image_size": None}, "train_images": 8, "val_images": 2,
              "class_names": ["a", "b"], "run_dir": "/r"}  # fmt: skip
    assert "input 224 px" in run_views.run_details(result)
    result["config"]["image_size"] = 96
    assert "input 96 px" in run_views.run_details(result)
    assert run_views.input_size({"backbone": "no such backbone"}) is None
