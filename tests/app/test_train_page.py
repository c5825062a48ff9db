"""The Train and Home pages under AppTest: a form that survives a refresh, controls that say
what happens, checks above the Launch button, a monitor that follows the queue, the queue's
live chart. No model is trained here: runs are written into the store as the worker would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Button, Warning

from core.runs import drafts
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TRAIN = "pages/train.py"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A studio home (and runs folder) of this test's own: drafts never leak between tests."""
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    return tmp_path.resolve()


def _open(page: str | None = TRAIN, errors: bool = False, **session) -> AppTest:
    """A new browser session (what a refresh or a server restart gives) on ``page``; no red
    box unless ``errors``."""
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    if not errors:
        _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _flat(node) -> Iterator:
    """Every element under ``node`` in page order."""
    children = getattr(node, "children", None)
    if children is None:
        yield node
        return
    for child in children.values():
        yield from _flat(child)


FORM = {  # widget key -> a value that is not the default
    "backbone": "mobilenet_v2", "mode": "fine_tuning", "weights": "none", "size": 96,
    "data": "builtin:textures", "batch": 16, "epochs": 5, "ft": 2, "lr": 3e-4,
    "ft_lr": 3e-5, "unfreeze": 12, "augment": False, "cache": False, "seed": 7,
}  # fmt: skip


def _form(at: AppTest) -> dict:
    widgets = {
        "backbone": at.selectbox, "data": at.selectbox, "mode": at.radio, "weights": at.radio,
        "lr": at.select_slider, "ft_lr": at.select_slider, "augment": at.toggle,
        "cache": at.toggle,
    }  # fmt: skip
    return {key: widgets.get(key, at.number_input)(key=key).value for key in FORM}


@pytest.mark.slow
def test_the_train_form_survives_a_refresh_and_a_restart(home):
    at = _open()
    assert _form(at)["backbone"] == "efficientnet_lite0"  # the defaults, with no draft
    at.selectbox(key="backbone").select(FORM["backbone"])
    at.radio(key="mode").set_value(FORM["mode"])
    at.radio(key="weights").set_value(FORM["weights"])
    at.selectbox(key="data").select(FORM["data"])
    at.toggle(key="augment").set_value(False)
    at.select_slider(key="lr").set_value(FORM["lr"])
    at.select_slider(key="ft_lr").set_value(FORM["ft_lr"])
    for key in ("size", "batch", "epochs", "ft", "unfreeze", "seed"):
        at.number_input(key=key).set_value(FORM[key])
    at.run()
    at.toggle(key="cache").set_value(False).run()  # fine-tuning without augmentation: applies
    _ok(at)
    assert _form(at) == FORM
    assert drafts.load_draft(home) is not None  # kept in the runs folder, not the session

    again = _open()  # a new session on the same runs folder: a refresh, or a restarted server
    assert _form(again) == FORM
    visited = _open("pages/compare.py")  # and a visit to another page (widgets forgotten)
    visited.switch_page(TRAIN).run()
    assert _form(visited) == FORM


def test_a_damaged_draft_gives_the_defaults(home):
    drafts.draft_path(home).write_bytes(b"\x00\xff not a draft {")
    at = _open()
    form = _form(at)
    assert (form["backbone"], form["mode"], form["size"]) == (
        "efficientnet_lite0",
        "feature_extraction",
        None,
    )
    assert form["data"] == "builtin:photos" and form["cache"] is True


@pytest.mark.slow
def test_the_chosen_data_survives_a_new_session(home):
    from app import navigation

    drafts.save_chosen_data(home, "builtin:textures")  # chosen on the Data page, earlier
    at = _open()
    assert at.session_state[navigation.DATA_SOURCE] == "builtin:textures"
    assert at.selectbox(key="data").value == "builtin:textures"
    assert any(c.value == "Data: textures" for c in at.sidebar.caption)  # its name, not a path
    # choosing data later makes it the Train form's data too (the form is in the draft now)
    drafts.save_chosen_data(home, "builtin:photos")
    assert _open().selectbox(key="data").value == "builtin:photos"


@pytest.mark.slow
def test_data_picked_on_the_train_page_is_the_chosen_data(home):
    from app import navigation

    at = _open()
    assert any(c.value == "Data: not chosen yet (Data page)" for c in at.sidebar.caption)
    at.selectbox(key="data").set_value("builtin:textures").run()
    # the sidebar says what Launch trains on, and the form kept the pick
    assert any(c.value == "Data: textures" for c in at.sidebar.caption)
    assert at.selectbox(key="data").value == "builtin:textures"
    assert drafts.load_chosen_data(home) == "builtin:textures"
    again = _open()  # a new session: the Data page's choice, the form and the sidebar agree
    assert again.session_state[navigation.DATA_SOURCE] == "builtin:textures"
    assert again.selectbox(key="data").value == "builtin:textures"
    assert any(c.value == "Data: textures" for c in again.sidebar.caption)


def test_the_feature_cache_toggle_never_shows_on_when_unused(home):
    at = _open()
    assert at.toggle(key="cache").value is True  # feature extraction: the cache applies
    at.radio(key="mode").set_value("full_fine_tuning").run()
    _ok(at)
    shown = at.toggle(key="cache_na")
    assert shown.value is False and shown.disabled
    assert "trains the whole base" in shown.help
    assert any("Training inputs:" in c.value and "whole base" in c.value for c in at.caption)
    # The mode in the form's words, never the config key.
    inputs = next(c.value for c in at.caption if c.value.startswith("Training inputs:"))
    assert "the full fine-tuning mode trains" in inputs and "full_fine_tuning" not in inputs
    assert "full_fine_tuning" not in shown.help
    at.radio(key="mode").set_value("fine_tuning").run()  # with augmentation on: images too
    assert at.toggle(key="cache_na").value is False
    at.toggle(key="augment").set_value(False).run()  # now the stored activations are used
    assert at.toggle(key="cache").value is True  # the setting was kept meanwhile
    at.radio(key="mode").set_value("scratch").run()
    weights = at.radio(key="weights")
    assert weights.disabled and "random weights" in weights.help


def test_checks_appear_above_the_launch_button(home):
    at = _open()
    at.radio(key="mode").set_value("fine_tuning")
    at.select_slider(key="ft_lr").set_value(1e-3)  # above 1e-4: a warning
    at.run()
    _ok(at)
    order = list(_flat(at.main))
    launch = next(i for i, e in enumerate(order) if isinstance(e, Button) and e.key == "launch")
    warned = [
        i for i, e in enumerate(order) if isinstance(e, Warning) and "above 0.0001" in e.value
    ]
    assert warned and max(warned) < launch


def _running_run(queue, batches: int, offset: float = 0.0) -> str:
    """A run as the worker leaves it while training: running, with ``batches`` batch rows
    written ``offset`` seconds after it started (a negative offset: an earlier attempt's)."""
    store = queue.store
    run_id = store.create_run(TINY.with_changes(epochs=2))
    store.mark_running(run_id)
    started = store.get_run(run_id)["started_at"]
    store.add_batches(
        run_id,
        [
            {"global_step": g, "phase": "head", "epoch": 1 + (g - 1) // 4, "step": 1 + (g - 1) % 4,
             "steps_per_epoch": 4, "loss": 1.0 / g, "accuracy": 0.1 * g, "lr": 1e-3,
             "images_per_s": 50.0, "t": started + offset + g * 0.1}
            for g in range(1, batches + 1)
        ],
    )  # fmt: skip
    return run_id


def _finished_run(queue) -> str:
    store = queue.store
    run_id = store.create_run(TINY)
    store.mark_running(run_id)
    store.mark_finished(run_id, "completed")
    return run_id


@pytest.mark.slow
def test_the_monitor_follows_the_queue_unless_pinned(home):
    from core.training.jobs import get_job_queue

    queue = get_job_queue(home)
    first = _finished_run(queue)  # the first run of a comparison, just finished
    time.sleep(0.01)
    second = _running_run(queue, 3)  # the next one, training now
    try:
        followed = _open(run_id=first, followed_was_active=True)
        assert followed.selectbox[-1].value == second
        assert followed.session_state["run_id"] == second
        pinned = _open(run_id=first, followed_was_active=True, pin_run=True)
        assert pinned.selectbox[-1].value == first
        assert pinned.checkbox(key="pin_run").value is True
        picked = _open(run_id=first, followed_was_active=False)  # looked at on purpose
        assert picked.selectbox[-1].value == first
    finally:
        queue.store.mark_finished(second, "stopped")


def test_a_resumed_run_shows_no_stale_step_while_it_prepares(home):
    from core.training.jobs import get_job_queue

    queue = get_job_queue(home)
    run_id = _running_run(queue, 5, offset=-60.0)  # rows of the attempt before the resume
    try:
        at = _open(run_id=run_id)
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Epoch"] == "–" and metrics["Step"] == "–" and metrics["ETA"] == "–"
        progress = at.get("progress")[0].proto
        assert progress.text.startswith("Resuming: preparing")
    finally:
        queue.store.mark_finished(run_id, "stopped")


def test_home_shows_names_disk_use_and_a_live_chart_of_the_running_job(home):
    from core.training.jobs import get_job_queue

    queue = get_job_queue(home)
    done = _finished_run(queue)
    running = _running_run(queue, 6)
    try:
        at = _open(page=None)
        charts = at.get("plotly_chart")
        assert len(charts) == 1  # the running job's sparkline
        assert '"loss"' in charts[0].proto.spec and '"accuracy"' in charts[0].proto.spec
        table = at.dataframe[0].value
        assert list(table["name"]) == ["textures #2", "textures #1"]
        assert set(table["data"]) == {"textures"} and {done, running} == set(table["run"])
        assert any(c.value.startswith("The runs folder uses ") for c in at.caption)
    finally:
        queue.store.mark_finished(running, "stopped")


def test_choose_data_is_kept_for_the_next_session_and_the_train_form(home):
    def choose() -> None:
        from app import navigation

        navigation.choose_data("  builtin:textures ")
        assert navigation.chosen_data() == "builtin:textures"

    chooser = AppTest.from_function(choose).run()
    assert not chooser.exception, [e.value for e in chooser.exception]
    assert drafts.load_chosen_data(home) == "builtin:textures"
    at = _open()
    assert at.selectbox(key="data").value == "builtin:textures"


def test_a_failure_resume_cannot_fix_offers_the_fixes_instead(home, monkeypatch):
    from core.models import backbones
    from core.training.jobs import get_job_queue

    monkeypatch.setattr(backbones.BackboneSpec, "weights_status", lambda self: "needs network")
    queue = get_job_queue(home)
    store = queue.store
    run_id = store.create_run(TINY.with_changes(weights="imagenet"))
    store.mark_running(run_id)
    store.mark_finished(run_id, "failed", error="Could not download mobilenet_v2's weights.")
    at = _open(errors=True, run_id=run_id)
    assert [e.value for e in at.error] == ["Could not download mobilenet_v2's weights."]
    assert "resume" not in _keys(at)  # Resume would fail again, offline
    fixes = [b for b in at.button if (b.key or "").startswith(f"train_fix0_{run_id}")]
    assert fixes and "EfficientNet-Lite0" in fixes[0].label


def _keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key}


@pytest.mark.slow
def test_the_mode_radio_shows_words_and_the_config_keeps_its_keys(home) -> None:
    at = _open()
    mode = at.radio(key="mode")
    assert mode.options == [
        "Feature extraction", "Fine-tuning", "Full fine-tuning", "From scratch (baseline)",
    ]  # fmt: skip
    assert mode.value == "feature_extraction"
    mode.set_value("full_fine_tuning").run()
    _ok(at)
    assert at.session_state["mode"] == "full_fine_tuning"


@pytest.mark.slow
def test_a_backbone_needing_the_network_offers_its_weights_file_for_import(
    home, tmp_path, monkeypatch
):
    """The backbone list says what is here; a Keras backbone with nothing cached names the file
    to carry in, and weights imported for a backbone become one of its weight choices."""
    import keras

    from core.models.weights_store import import_weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # nothing cached
    at = _open()
    at.selectbox(key="backbone").select("vgg16").run()
    _ok(at)
    assert at.selectbox(key="backbone").format_func("vgg16").endswith(" · needs network")
    assert [u.proto.label for u in at.get("file_uploader")] == ["Import the weights file"]
    assert any("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in c.value for c in at.caption)
    assert at.radio(key="weights").options == ["imagenet", "none"]

    path = tmp_path / "lab.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None).save_weights(path)
    import_weights(path, backbone="vgg16")
    at = _open()
    at.selectbox(key="backbone").select("vgg16").run()
    assert at.selectbox(key="backbone").format_func("vgg16").endswith(" · imported")
    assert at.radio(key="weights").options == ["imagenet", "none", "lab"]
    at.radio(key="weights").set_value("lab").run()
    _ok(at)
    at.selectbox(key="backbone").select("mobilenet_v2").run()  # "lab" is VGG16's, not its
    _ok(at)
    assert at.radio(key="weights").value == "imagenet"
