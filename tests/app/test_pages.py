"""Every page under Streamlit's AppTest, against a store seeded with one tiny finished run."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.runs.store import ACTIVE_STATUSES
from tests.helpers import TINY, fake_studio, seeded_studio, stored_run

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A studio home of its own, holding one completed tiny run; yields (queue, run_id)."""
    with seeded_studio(tmp_path_factory.mktemp("pages-home"), TINY) as seeded:
        yield seeded


@pytest.fixture
def row(tmp_path):
    """A studio home of its own holding one completed run as the worker leaves it, without
    training (for the pages that only read the store): yields (store, run_id)."""
    with fake_studio(tmp_path / "home") as store:
        yield store, stored_run(store, TINY, ["banded", "dotted", "striped"], model_bytes=2_000_000)


def _page(path: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    if path:
        at.switch_page(path).run()
    return at


def _image_bytes(fmt: str = "PNG", seed: int = 0, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _finish(queue, run_ids) -> None:
    """Stop and delete what a test queued: the next test starts with an idle worker and the
    seeded run as the only finished one (cached default runs can complete before the stop)."""
    for run_id in run_ids:
        queue.stop(run_id)
    for run_id in run_ids:
        assert queue.wait(run_id, timeout=300) not in ACTIVE_STATUSES
        queue.store.delete_run(run_id)


def _new_runs(queue, before: set[str]) -> list[str]:
    return [r["run_id"] for r in queue.store.list_runs() if r["run_id"] not in before]


def test_home_shows_queue_and_recent_runs(row):
    store, run_id = row
    at = _page()
    _ok(at)
    assert at.title[0].value.endswith("Transfer Studio")
    assert at.button(key="train_default").label == "Train the default"
    assert [s.value for s in at.subheader] == ["Job queue", "Recent runs"]
    table = at.dataframe[0].value
    assert run_id in set(table["run"]) and "completed" in table["status"].iloc[0]


@pytest.mark.slow
def test_home_train_the_default_reaches_the_queue(seeded):
    queue, _ = seeded
    before = {r["run_id"] for r in queue.store.list_runs()}
    at = _page()
    at.button(key="train_default").click().run()
    _ok(at)
    new = _new_runs(queue, before)
    try:
        assert len(new) == 1
        assert queue.store.config(new[0]) == RunConfig()
        assert at.session_state["run_id"] == new[0]
        assert any(new[0] in s.value for s in at.success)
    finally:
        _finish(queue, new)


def test_data_page_builtin_shows_counts_samples_and_health(row):
    at = _page("pages/data.py")
    _ok(at)
    assert at.info[0].value.startswith("Pick a source")
    at.selectbox[0].select_index(2)  # builtin:textures (the default first, then by name)
    at.button(key="use_data").click().run()
    _ok(at)
    assert at.session_state["data_source"] == "builtin:textures"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "3" and metrics["Training images"] == "96"
    assert metrics["Validation images"] == "24"
    assert at.success and "no imbalance" in at.success[0].value
    assert len(at.get("plotly_chart")) == 1
    assert len(at.get("image")) == 3  # one row of samples per class


def test_data_page_zip_upload(row, tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for cls in ("cats", "dogs"):
            for i in range(6):
                zf.writestr(f"pets/{cls}/{i}.png", _image_bytes(seed=hash((cls, i)) % 999))
        zf.writestr("pets/cats/readme.txt", "not an image")
    at = _page("pages/data.py")
    at.session_state["kind"] = "Zip upload"
    at.run()
    at.file_uploader(key="zip").upload("pets.zip", archive.getvalue(), "application/zip").run()
    at.button(key="use_data").click().run()
    _ok(at)
    source = at.session_state["data_source"]
    assert Path(source).parent.name == "uploads" and Path(source).name.startswith("upload-")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "2" and metrics["Skipped files"] == "1"
    assert any("skipped" in i.value for i in at.info)
    assert at.expander  # the skipped-files table


def test_data_page_shows_errors_without_traceback(row, tmp_path):
    at = _page("pages/data.py")
    at.session_state["kind"] = "Local folder"
    at.run()
    at.text_input[0].input(str(tmp_path / "missing")).run()
    assert at.button(key="use_data").disabled  # checked as typed: nothing to click
    assert not at.exception
    assert "not found" in at.error[0].value
    at.session_state["kind"] = "Kaggle"
    at.run()
    at.text_input[0].input("kaggle:not a handle").run()
    assert at.button(key="use_data").disabled
    assert not at.exception
    assert "Malformed Kaggle handle" in at.error[0].value


def test_train_page_widgets_and_latest_run(row):
    store, run_id = row
    at = _page("pages/train.py")
    _ok(at)
    for key in ("backbone", "data"):
        assert at.selectbox(key=key)
    assert at.radio(key="mode").options == [  # words on the page; the config keeps its keys
        "Feature extraction",
        "Fine-tuning",
        "Full fine-tuning",
        "From scratch (baseline)",
    ]
    assert at.radio(key="weights").value == "imagenet"
    for key in ("epochs", "ft", "size", "batch", "unfreeze", "val_split", "seed"):
        assert at.number_input(key=key) is not None
    assert at.button(key="launch") and at.button(key="compare")
    # an empty session follows the latest active, else the most recent, run from the store
    assert at.selectbox[-1].value == store.list_runs()[0]["run_id"]
    assert len(at.get("plotly_chart")) == 1
    at.selectbox[-1].select(run_id).run()
    _ok(at)
    assert at.session_state["run_id"] == run_id
    assert any("Completed: best validation accuracy" in s.value for s in at.success)
    # a finished run shows where it ended, not a stale "Epoch 4/4 · Step 1/2"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics.keys() >= {"Epochs done", "Best val acc", "Images/s", "Wall time"}
    assert "Step" not in metrics and metrics["Epochs done"] == "1/1"


def _tiny_form(at: AppTest) -> AppTest:
    at.selectbox(key="backbone").select("mobilenet_v2")
    at.radio(key="weights").set_value("none")
    at.number_input(key="size").set_value(32)
    at.selectbox(key="data").select("builtin:textures")
    at.number_input(key="epochs").set_value(1)
    at.number_input(key="ft").set_value(1)
    return at.run()


@pytest.mark.slow
def test_train_page_launch_reaches_the_queue(seeded):
    queue, _ = seeded
    before = {r["run_id"] for r in queue.store.list_runs()}
    at = _tiny_form(_page("pages/train.py"))
    _ok(at)
    at.button(key="launch").click().run()
    _ok(at)
    new = _new_runs(queue, before)
    try:
        assert len(new) == 1
        assert queue.store.status(new[0]) in ("queued", "running", "completed")
        config = queue.store.config(new[0])
        assert (config.backbone, config.weights, config.image_size) == ("mobilenet_v2", "none", 32)
        assert at.session_state["run_id"] == new[0]
        assert at.selectbox[-1].value == new[0]
        at.run()  # a rerun of the same click must not queue a copy
        assert len(_new_runs(queue, before)) == 1
    finally:
        _finish(queue, new)


@pytest.mark.slow
def test_train_page_compare_all_modes(seeded):
    queue, _ = seeded
    before = {r["run_id"] for r in queue.store.list_runs()}
    at = _tiny_form(_page("pages/train.py"))
    at.checkbox(key="scratch").check()
    at.button(key="compare").click().run()
    _ok(at)
    new = _new_runs(queue, before)
    try:
        modes = sorted(queue.store.config(r).mode for r in new)
        assert modes == ["feature_extraction", "fine_tuning", "full_fine_tuning", "scratch"]
        assert "Queued 4 runs" in at.toast[0].value
    finally:
        _finish(queue, new)


@pytest.mark.slow
def test_train_page_layer_preview_and_config_errors(seeded):
    at = _tiny_form(_page("pages/train.py"))
    at.radio(key="mode").set_value("fine_tuning")
    at.session_state["preview"] = True  # open the (lazy) expander
    at.run()
    _ok(at)
    labels = [m.label for m in at.metric]
    assert "Phase 1: head · trainable" in labels and "Phase 2: fine-tune · trainable" in labels
    assert any("base layers train" in c.value for c in at.caption)
    at.number_input(key="size").set_value(16).run()  # below mobilenet_v2's 32 px minimum
    assert not at.exception
    assert any("below mobilenet_v2's minimum" in e.value for e in at.error)
    at.button(key="launch").click().run()
    assert not at.exception
    assert any("below mobilenet_v2's minimum" in e.value for e in at.error)


def test_compare_page_table_and_charts(row):
    store, run_id = row
    at = _page("pages/compare.py")
    _ok(at)
    assert at.multiselect(key="compare_runs").value == [run_id]
    table = at.dataframe[0].value
    assert list(table["run"]) == [run_id] and table["best"].iloc[0] == "★"
    assert table["trainable params"].iloc[0] > 0 and table["model size (MB)"].iloc[0] > 0
    assert len(at.get("plotly_chart")) == 2
    assert "Best" in at.success[0].value
    # The run's name, not its id, and columns that fit the ~820 px a 1280-px window leaves
    # beside the sidebar: no horizontal scroll bar hides the last column.
    assert table["name"].iloc[0] == store.result(run_id)["name"]
    columns = json.loads(at.dataframe[0].proto.columns)
    shown = [c for c in columns.values() if not c.get("hidden")]
    assert len(shown) == 9 and sum(c["width"] for c in shown) <= 820


def test_predict_page_offers_finished_runs(row):
    _, run_id = row
    at = _page("pages/predict.py")
    _ok(at)
    assert at.multiselect(key="models").value == [run_id]
    assert at.slider(key="top_k").value == 3
    assert at.toggle(key="use_camera").value is False
    assert at.info[0].value.startswith("Pick at least one model")
    at.toggle(key="use_camera").set_value(True).run()
    assert not at.exception


@pytest.mark.slow
def test_predict_page_uploads_and_camera(seeded):
    _, run_id = seeded
    at = _page("pages/predict.py")
    at.file_uploader(key="images").set_value(
        [
            ("a.png", _image_bytes("PNG", 1), "image/png"),
            ("b.jpg", _image_bytes("JPEG", 2), "image/jpeg"),
            ("broken.png", b"\x89PNG definitely not", "image/png"),
        ]
    ).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2  # one per usable image and model
    assert any("broken.png" in e.value for e in at.error)  # the bad file, as a message
    assert sum(" ms" in c.value and run_id in c.value for c in at.caption) == 2
    at.toggle(key="use_camera").set_value(True).run()
    at.camera_input(key="camera").set_value(("photo.jpg", _image_bytes("JPEG", 3), "image/jpeg"))
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 3
