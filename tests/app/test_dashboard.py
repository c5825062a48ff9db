"""app.views.dashboard: compare-all-modes, progress/ETA, comparison table, run choosers, uploads."""

from __future__ import annotations

import pytest

from app.views import dashboard
from app.views.labels import modes_in_words
from core.config import DEFAULT_DATA, RunConfig
from core.data import builtin, uploads
from core.errors import ConfigError, DataError
from core.runs.store import RunStore
from core.training import compare, model

TINY = RunConfig(backbone="mobilenet_v2", weights="none", data="builtin:textures", image_size=32)


class FakeQueue:
    """Records submissions; idempotent per key like core.training.jobs.JobQueue."""

    def __init__(self):
        self.submitted: list[RunConfig] = []
        self.keys: dict[str, str] = {}

    def submit(self, config, key=None, progress=None):
        config.validate()
        if key is not None and key in self.keys:
            return self.keys[key]
        run_id = f"run-{len(self.submitted)}"
        self.submitted.append(config)
        if key is not None:
            self.keys[key] = run_id
        return run_id


# --------------------------------------------------------------------------- compare all modes


def test_submit_compare_all_queues_each_mode_with_same_data_and_seed():
    queue = FakeQueue()
    ids = compare.submit_compare_all(queue, TINY.with_changes(seed=7), key="click-1")
    assert ids == ["run-0", "run-1", "run-2"]
    modes = [c.mode for c in queue.submitted]
    assert modes == ["feature_extraction", "fine_tuning", "full_fine_tuning"]
    assert {c.data for c in queue.submitted} == {"builtin:textures"}
    assert {c.seed for c in queue.submitted} == {7}
    assert {c.extra[compare.COMPARE_GROUP_KEY] for c in queue.submitted} == {"click-1"}


def test_submit_compare_all_is_idempotent_per_key():
    queue = FakeQueue()
    first = compare.submit_compare_all(queue, TINY, key="k")
    again = compare.submit_compare_all(queue, TINY, key="k")
    assert first == again and len(queue.submitted) == 3


def test_submit_compare_all_scratch_uses_no_weights():
    queue = FakeQueue()
    compare.submit_compare_all(queue, TINY.with_changes(weights="imagenet"), True, key="s")
    by_mode = {c.mode: c for c in queue.submitted}
    assert by_mode["scratch"].weights == "none"
    assert by_mode["fine_tuning"].weights == "imagenet"


def test_submit_compare_all_validates_everything_before_queueing():
    queue = FakeQueue()
    with pytest.raises(ConfigError):
        compare.submit_compare_all(queue, TINY.with_changes(epochs=0), key="bad")
    assert queue.submitted == []


def test_compare_group_read_back_from_result():
    config = TINY.with_changes(extra={compare.COMPARE_GROUP_KEY: "g"})
    assert compare.compare_group({"config": config.to_dict()}) == "g"
    assert compare.compare_group({"config": TINY.to_dict()}) is None


# --------------------------------------------------------------------------- progress / ETA


def _batches(n, steps_per_epoch=10, seconds_per_step=0.5, phase="head", batch_size=8):
    return [
        {
            "global_step": g,
            "epoch": (g - 1) // steps_per_epoch + 1,
            "step": (g - 1) % steps_per_epoch + 1,
            "steps_per_epoch": steps_per_epoch,
            "phase": phase,
            "images_per_s": 100.0,
            "t": 1000.0 + g * seconds_per_step,
        }
        for g in range(1, n + 1)
    ]


def _result(status="running", planned=4, **over):
    base = {
        "status": status,
        "planned_epochs": planned,
        "epochs_done": 1,
        "started_at": 1000.0,
        "duration_s": None,
        "phases": [{"phase": "head"}],
        "config": {"batch_size": 8},
    }
    base.update(over)
    return base


def test_progress_summary_running_fraction_speed_and_eta():
    batches = _batches(15)  # epoch 2, step 5 of 10; 40 steps planned
    p = dashboard.progress_summary(_result(), batches, now=1010.0)
    assert (p["epoch"], p["step"], p["steps_per_epoch"]) == (2, 5, 10)
    assert p["fraction"] == pytest.approx(15 / 40)
    assert p["eta_s"] == pytest.approx(25 * 0.5)
    assert p["images_per_s"] == pytest.approx(8 / 0.5)
    assert p["elapsed_s"] == pytest.approx(10.0)
    assert p["phase_label"] == "training the head"
    assert "epoch 2/4" in p["text"] and "step 5/10" in p["text"]
    assert p["eta_text"] == "12s"


def test_progress_summary_eta_uses_current_phase_speed():
    head = _batches(20, seconds_per_step=0.1)
    fine = [
        {**b, "global_step": b["global_step"] + 20, "epoch": b["epoch"] + 2, "t": 2000 + i}
        for i, b in enumerate(_batches(5, phase="fine_tune"))
    ]
    p = dashboard.progress_summary(_result(), head + fine)
    assert p["phase"] == "fine_tune"
    assert p["eta_s"] == pytest.approx((40 - 25) * 1.0)


def test_progress_summary_before_first_batch_and_queued():
    p = dashboard.progress_summary(_result(), [])
    assert p["eta_s"] is None and p["eta_text"] == "estimating…" and p["fraction"] == 0
    assert p["text"].startswith("Preparing")
    q = dashboard.progress_summary(_result(status="queued", started_at=None), [])
    assert q["text"].startswith("Queued") and q["elapsed_s"] == 0.0


def test_progress_summary_finished_runs():
    done = dashboard.progress_summary(
        _result(status="completed", duration_s=42.0, epochs_done=4), _batches(40)
    )
    assert done["fraction"] == 1.0 and done["eta_s"] == 0.0 and done["elapsed_s"] == 42.0
    stopped = dashboard.progress_summary(_result(status="stopped", duration_s=5.0), _batches(12))
    assert stopped["fraction"] == pytest.approx(12 / 40)
    assert stopped["text"].startswith("stopped")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "–"), (-1, "–"), (float("nan"), "–"), (0, "0s"), (59.4, "59s"), (65, "1m 05s"),
     (3725, "1h 02m")],
)  # fmt: skip
def test_format_duration(seconds, text):
    assert dashboard.format_duration(seconds) == text


# --------------------------------------------------------------------------- choosing runs


def _run(run_id, status, **over):
    base = {
        "run_id": run_id,
        "status": status,
        "name": "",
        "mode": "fine_tuning",
        "backbone": "mobilenet_v2",
        "data": "builtin:faces",
        "epochs_done": 2,
        "planned_epochs": 2,
        "best_val_accuracy": 0.5,
        "duration_s": 3.0,
        "error": None,
    }
    base.update(over)
    return base


def test_pick_default_run_prefers_running_then_next_queued_then_newest():
    runs = [
        _run("q2", "queued"),
        _run("q1", "queued"),
        _run("r", "running"),
        _run("c", "completed"),
    ]
    assert dashboard.pick_default_run(runs) == "r"
    assert dashboard.pick_default_run(runs[:2] + runs[3:]) == "q1"
    assert dashboard.pick_default_run([_run("new", "failed"), _run("old", "completed")]) == "new"
    assert dashboard.pick_default_run([]) is None


def test_finished_runs_need_an_epoch_and_an_end():
    runs = [_run("a", "running"), _run("b", "failed", epochs_done=0), _run("c", "stopped")]
    assert [r["run_id"] for r in dashboard.finished_runs(runs)] == ["c"]


def test_default_compare_selection_prefers_newest_group():
    results = [
        {"run_id": "x", "config": {}},
        {"run_id": "g1", "config": {compare.COMPARE_GROUP_KEY: "G"}},
        {"run_id": "g2", "config": {compare.COMPARE_GROUP_KEY: "G"}},
        {"run_id": "old", "config": {compare.COMPARE_GROUP_KEY: "H"}},
    ]
    assert dashboard.default_compare_selection(results) == ["g1", "g2"]
    assert dashboard.default_compare_selection(results[:1]) == ["x"]


def test_runs_table_and_choice_label():
    rows = dashboard.runs_table([_run("a", "failed", error="boom", best_val_accuracy=None)])
    assert rows[0]["status"].endswith("failed") and rows[0]["error"] == "boom"
    assert rows[0]["best val acc"] is None and rows[0]["epochs"] == "2/2"
    label = dashboard.run_choice_label(_run("abc", "completed", name="try 1"))
    assert "try 1" in label and "val acc 0.500" in label and label.endswith("abc")


UPLOAD = "/home/me/.transfer_studio/data/uploads/upload-5b4636be56106d53.zip"


def test_runs_are_named_as_people_know_them_not_by_path():
    run = _run("20261121-210501-3fa2c1", "completed", name="photos #7", data="/home/me/photos")
    label = dashboard.run_choice_label(run)
    assert label.startswith("✅ photos #7 · fine-tuning · mobilenet_v2")
    assert label.endswith("val acc 0.500 · 3fa2c1") and "/home/me" not in label
    assert "/home/me/photos" in dashboard.run_details(run)  # the full path, for a tooltip
    renamed = dashboard.run_choice_label({**run, "name": "first try", "data": UPLOAD})
    assert "first try" in renamed and "upload 5b4636be.zip" in renamed and UPLOAD not in renamed
    row = dashboard.runs_table([run])[0]
    assert (row["name"], row["data"], row["id"]) == ("photos #7", "photos", "3fa2c1")
    assert (row["run"], row["source"]) == (run["run_id"], "/home/me/photos")
    assert list(row)[:3] == ["status", "name", "best val acc"]  # accuracy stays in view
    assert dashboard.data_label("builtin:textures") == "builtin:textures"  # short already
    assert dashboard.data_label(UPLOAD) == "upload 5b4636be.zip"
    assert dashboard.short_id("no-dashes") == "no-dashes"


def test_the_monitor_follows_the_queue_unless_pinned():
    runs = [_run("next", "queued"), _run("now", "running"), _run("first", "completed")]
    follow = dashboard.followed_run
    assert follow(runs, "first", was_active=True, pinned=False) == "now"
    assert follow(runs[:1] + runs[2:], "first", True, False) == "next"  # the next queued one
    assert follow(runs, "first", was_active=True, pinned=True) == "first"  # pinned: stays
    assert follow(runs, "first", was_active=False, pinned=False) == "first"  # picked on purpose
    assert follow(runs, "now", was_active=True, pinned=False) == "now"  # still training
    assert follow(runs[2:], "first", was_active=True, pinned=False) == "first"  # queue empty
    assert follow(runs, None, False, False) == "now" and follow(runs, "gone", True, False) == "now"
    assert follow([], None, False, False) is None


def test_predictable_runs_need_a_model_file(tmp_path):
    store = RunStore(tmp_path)
    with_model = store.create_run(TINY)
    without = store.create_run(TINY)
    running = store.create_run(TINY)
    model = tmp_path / "model.keras"
    model.write_bytes(b"x")
    store.update(with_model, status="completed", model_path=str(model))
    store.update(without, status="completed", model_path=str(tmp_path / "gone.keras"))
    store.update(running, status="running", model_path=str(model))
    assert [r["run_id"] for r in dashboard.predictable_runs(store)] == [with_model]


# --------------------------------------------------------------------------- comparing


def test_compare_table_marks_best_and_reports_sizes():
    results = [
        {**_run("a", "completed", best_val_accuracy=0.7), "model_bytes": 2_500_000,
         "phases": [{"trainable_params": 10}, {"trainable_params": 500}]},
        {**_run("b", "completed", best_val_accuracy=0.9, mode="feature_extraction"),
         "model_bytes": None, "phases": []},
    ]  # fmt: skip
    rows = dashboard.compare_table(results)
    assert [r["best"] for r in rows] == ["", "★"]
    assert rows[0]["trainable params"] == 500 and rows[1]["trainable params"] is None
    assert rows[0]["model size (MB)"] == 2.5 and rows[1]["model size (MB)"] is None
    assert rows[0]["wall time (s)"] == 3.0 and rows[0]["epochs"] == 2
    assert (
        dashboard.compare_table([{**_run("c", "stopped", best_val_accuracy=None)}])[0]["best"] == ""
    )


# --------------------------------------------------------------------------- data & training UI


def test_save_upload_uses_content_hash_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    first = uploads.save_upload(b"PK\x03\x04 zip bytes")
    again = uploads.save_upload(b"PK\x03\x04 zip bytes")
    other = uploads.save_upload(b"PK\x03\x04 other")
    assert first == again != other
    assert first.parent == tmp_path.resolve() / "data" / "uploads"
    assert first.name.startswith("upload-") and first.suffix == ".zip"
    assert first.read_bytes() == b"PK\x03\x04 zip bytes"
    with pytest.raises(DataError):
        uploads.save_upload(b"")
    with pytest.raises(DataError):
        uploads.save_upload(b"data", suffix="/../../evil.sh")


def test_data_choices_and_class_guess():
    runs = [_run("a", "completed", data="/pets"), _run("b", "completed", data="builtin:faces")]
    choices = dashboard.data_choices("kaggle:o/s/versions/1", runs)
    assert choices[0] == "kaggle:o/s/versions/1"
    assert "builtin:textures" in choices and "/pets" in choices
    assert len(choices) == len(set(choices))
    assert dashboard.data_choices(None, [])[0] == DEFAULT_DATA == RunConfig().data
    assert builtin.guess_num_classes("builtin:textures") == 3
    assert builtin.guess_num_classes("/somewhere") == 2
    assert builtin.guess_num_classes("/somewhere", {"/somewhere": 7}) == 7


def test_layer_preview_summary_counts_trainable_layers():
    config = TINY.with_changes(mode="fine_tuning", unfreeze=12, weights="imagenet")
    summary = model.layer_preview_summary(config, num_classes=3)
    head, fine = summary["phases"]
    assert head["phase"] == "head" and fine["phase"] == "fine_tune"
    assert fine["trainable_params"] > head["trainable_params"]
    assert head["trainable_params"] + head["non_trainable_params"] == (
        fine["trainable_params"] + fine["non_trainable_params"]
    )
    flagged = [row for row in summary["layers"] if row["trainable_in_fine_tune"]]
    assert 0 < summary["trainable_base_layers"] == len(flagged) <= 12
    assert flagged[-1]["index"] == summary["base_layers"] - 1
    assert summary["image_size"] == 32
    extraction = model.layer_preview_summary(config.with_changes(mode="feature_extraction"), 3)
    assert extraction["trainable_base_layers"] == 0 and len(extraction["phases"]) == 1


def test_layer_preview_summary_rejects_invalid_sizes():
    from core.errors import BackboneError

    with pytest.raises(BackboneError):
        model.layer_preview_summary(TINY.with_changes(image_size=16), 2)


def test_progress_summary_while_the_feature_cache_is_computed():
    stage = {"stage": "features", "done": 50, "total": 200, "images_per_s": 25.0, "eta_s": 6.0}
    p = dashboard.progress_summary(_result(stage=stage), [])
    assert p["fraction"] == 0.25 and p["eta_s"] == 6.0 and p["images_per_s"] == 25.0
    assert "50/200" in p["text"] and p["phase_label"] == "computing features"
    # once batches flow, the stage record no longer drives the summary
    later = dashboard.progress_summary(_result(stage={**stage, "done": 200}), _batches(3))
    assert later["phase_label"] == "training the head"
    # fine-tuning on cached activations says what runs once
    cut = dashboard.progress_summary(_result(stage={**stage, "activations": [7, 7, 192]}), [])
    assert "frozen layers" in cut["text"] and "50/200" in cut["text"]


def test_backbone_label_is_short_and_its_help_says_it_all(tmp_path, monkeypatch):
    from core.models.backbones import REGISTRY

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing cached
    assert dashboard.backbone_label("vgg16").endswith(" · needs network")
    assert dashboard.backbone_label("teachable_machine").endswith(" · needs import")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"")
    assert dashboard.backbone_label("vgg16").endswith(" · offline")

    label = dashboard.backbone_label("efficientnet_lite0")
    assert label.startswith("EfficientNet-Lite0") and "224 px" in label and "3.4M" in label
    assert "download" not in label  # bundled: works offline
    assert label.count("offline") == 1  # the name says it already
    assert "ImageNet weights bundled" in dashboard.backbone_help("efficientnet_lite0")
    # a 1280-px page's select box shows about 50 characters
    assert max(len(dashboard.backbone_label(name)) for name in REGISTRY) <= 49


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "–"), (0, "0"), (950, "950"), (328_707, "328.7k"), (1_207_747, "1.21M")],
)
def test_format_count(n, text):
    assert dashboard.format_count(n) == text


@pytest.mark.parametrize(
    ("stage", "words", "label", "fraction"),
    [
        ({"stage": "scan", "done": 50, "total": 200}, "checking images 50/200", "checking", 0.25),
        ({"stage": "build", "converting": True}, "converting the backbone's weights", "convert", 0),
        ({"stage": "build", "converting": False}, "building the model", "building", 0),
        ({"stage": "runtime"}, "fast runtime", "converting the backbone", 0),
        (
            {"stage": "features", "done": 100, "total": 400, "views": 4},
            "100/400 images (each training image and 3 augmented views",
            "computing features",
            0.25,
        ),
        ({}, "Preparing", "preparing", 0),
    ],
)
def test_preparing_says_what_it_is_doing_with_one_label(stage, words, label, fraction):
    p = dashboard.progress_summary(_result(stage=stage), [])
    assert words in p["text"] and p["phase_label"].startswith(label)
    assert p["fraction"] == fraction
    assert "training the head" not in p["phase_label"]  # not before the first batch


def test_a_stopped_run_says_where_it_stopped_in_one_wording():
    batches = _batches(25)  # epoch 3, step 5 of 10
    p = dashboard.progress_summary(_result(status="stopped", epochs_done=2), batches)
    assert p["text"] == "stopped after epoch 3, step 5/10" == dashboard.stopped_text(3, 5, 10)
    assert (p["epoch"], p["step"]) == (3, 5)


@pytest.mark.parametrize("status", ["running", "completed", "stopped"])
@pytest.mark.parametrize("fine_steps", [0, 7, 30, 120])
def test_progress_summary_needs_only_the_first_and_the_recent_batches(status, fine_steps):
    """What a followed run reads each poll (``RunStore.batch_sample(run_id, 1, ETA_WINDOW)``)
    gives the same progress, speed and ETA as every batch: the ETA's recent window is exact."""
    head = _batches(150, seconds_per_step=0.1)
    fine = [
        {**b, "global_step": b["global_step"] + 150, "epoch": b["epoch"] + 15, "t": 2000.0 + i}
        for i, b in enumerate(_batches(fine_steps, phase="fine_tune"))
    ]
    rows = head + fine
    sample = [rows[0], *rows[-dashboard.ETA_WINDOW :]]
    result = _result(status=status, planned=30, duration_s=None if status == "running" else 99.0)
    full = dashboard.progress_summary(result, rows, now=3000.0)
    assert dashboard.progress_summary(result, sample, now=3000.0) == full
    if status == "running":
        assert full["eta_s"] is not None


# --------------------------------------------------------------------------- one truth for progress


def test_a_resumed_run_says_resuming_until_its_first_new_batch():
    """After Resume the previous attempt's "Epoch 4/4 · step 1/2 · ETA 13s" is not shown while
    the model rebuilds: the badge and the text both say resuming, with no step and no ETA."""
    old = _batches(31)  # epoch 4, step 1 of 10: where the earlier attempt stopped
    result = _result(epochs_done=3, started_at=5000.0, stage={"stage": "build"})
    p = dashboard.progress_summary(result, old, now=5010.0)
    assert p["phase_label"] == "resuming: building the model"
    assert p["text"] == "Resuming after epoch 3/4: preparing · building the model"
    assert (p["epoch"], p["step"]) == (0, 0) and p["eta_s"] is None
    assert p["images_per_s"] is None and p["fraction"] == pytest.approx(3 / 4)
    # the first batch of the new attempt: a normal running summary from then on
    new = [{**b, "t": 5020.0 + i} for i, b in enumerate(_batches(32)[-1:])]
    q = dashboard.progress_summary(result, old + new, now=5021.0)
    assert q["phase_label"] == "training the head" and (q["epoch"], q["step"]) == (4, 2)


def test_a_stage_of_an_earlier_attempt_is_not_shown():
    finished = {"stage": "features", "done": 200, "total": 200, "t": 900.0}  # before started_at
    p = dashboard.progress_summary(_result(stage=finished), [])
    assert p["text"].startswith("Preparing: loading data") and p["phase_label"] == "preparing"
    fresh = {**finished, "done": 20, "t": 1001.0}
    assert dashboard.progress_summary(_result(stage=fresh), [])["fraction"] == 0.1


def test_a_pass_between_phases_is_shown_as_preparing_not_as_a_stale_step():
    """Fine-tuning's one-off pass over the frozen layers runs after the head's batches."""
    head = _batches(20)
    stage = {"stage": "features", "done": 30, "total": 120, "activations": [7, 7, 192]}
    p = dashboard.progress_summary(_result(stage={**stage, "t": head[-1]["t"] + 1}), head)
    assert p["phase_label"] == "computing features" and "frozen layers" in p["text"]
    assert p["preparing"]  # the monitor shows no step while no batch trains
    assert "30/120" in p["text"] and p["fraction"] == pytest.approx(20 / 40)  # not reset
    done = dashboard.progress_summary(_result(stage={**stage, "done": 120}), head)
    assert done["phase_label"] == "training the head" and not done["preparing"]


def test_speed_and_eta_are_smoothed_over_a_window_not_one_batch():
    first = _batches(1, seconds_per_step=30.0)  # the first batch: compiling, 30 s
    assert dashboard.progress_summary(_result(), first)["images_per_s"] is None  # not "0"
    rows = _batches(40, seconds_per_step=0.5)
    rows[-1] = {**rows[-1], "images_per_s": 1.0, "t": rows[-1]["t"] + 2.0}  # one slow batch
    p = dashboard.progress_summary(_result(planned=8), rows)
    steady = 8 / 0.5
    assert p["images_per_s"] == pytest.approx(steady * 39 * 0.5 / (39 * 0.5 + 2.0))
    assert p["images_per_s"] > 0.9 * steady  # one slow batch barely moves it
    assert p["eta_s"] == pytest.approx(40 * (39 * 0.5 + 2.0) / 39)


def test_a_stopped_run_never_shows_a_running_step():
    p = dashboard.progress_summary(_result(status="stopped", epochs_done=3), _batches(31))
    assert p["text"] == "stopped after epoch 4, step 1/10" and p["eta_s"] == 0.0
    assert p["phase_label"] == "training the head"  # the monitor shows it only while active


def test_stopping_shows_at_once_and_only_while_the_run_is_active():
    p = dashboard.progress_summary(_result(), _batches(15), now=1010.0, stopping=True)
    assert p["stopping"] and p["phase_label"] == "stopping…"  # the badge: running · stopping…
    assert p["text"].startswith("Stopping:")
    done = dashboard.progress_summary(_result(status="stopped"), _batches(15), stopping=True)
    assert not done["stopping"] and done["phase_label"] != "stopping…"


def test_preparing_shows_its_step_images_rate_and_eta_not_dashes():
    """A first run's silent stretches: every preparation step says n/N, and a step with
    nothing to count (building, converting, compiling) shows the time it has taken."""
    features = {"stage": "features", "done": 96, "total": 408, "images_per_s": 12.0,
                "eta_s": 26.0, "step": 3, "steps": 3, "started": 1001.0, "t": 1008.0}  # fmt: skip
    p = dashboard.progress_summary(_result(stage=features), [], now=1009.0)
    metrics = dashboard.monitor_metrics(p)
    assert [tuple(m) for m in metrics] == [
        ("Preparing", "step 3/3"), ("Images", "96/408"), ("Images/s", "12"), ("ETA", "26s"),
    ]  # fmt: skip
    runtime = {"stage": "runtime", "done": 0, "total": 8, "step": 3, "steps": 3,
               "started": 1001.0, "t": 1001.0}  # fmt: skip
    p = dashboard.progress_summary(_result(stage=runtime), [], now=1013.0)
    assert [tuple(m) for m in dashboard.monitor_metrics(p)] == [
        ("Preparing", "step 3/3"), ("Step", "–"), ("Images/s", "–"), ("Elapsed", "12s"),
    ]  # fmt: skip
    scan = {"stage": "scan", "done": 40, "total": 120, "images_per_s": 80.0, "eta_s": 1.0,
            "step": 1, "steps": 3, "started": 1000.5, "t": 1001.0}  # fmt: skip
    p = dashboard.progress_summary(_result(stage=scan), [], now=1001.5)
    assert [m.value for m in dashboard.monitor_metrics(p)] == ["step 1/3", "40/120", "80", "1s"]
    running = dashboard.progress_summary(_result(), _batches(15), now=1010.0)
    assert [m.label for m in dashboard.monitor_metrics(running)] == [
        "Epoch", "Step", "Images/s", "ETA",
    ]  # fmt: skip


def test_the_switch_to_fine_tuning_says_unfreezing_and_compiling():
    from core.training.trainer import UNFREEZE_STAGE

    assert dashboard.UNFREEZE_STAGE == UNFREEZE_STAGE  # one name, written and read
    head = _batches(20)
    stage = {"stage": UNFREEZE_STAGE, "started": head[-1]["t"] + 0.5, "t": head[-1]["t"] + 0.5}
    p = dashboard.progress_summary(_result(stage=stage), head, now=head[-1]["t"] + 10.5)
    assert p["phase_label"] == "unfreezing and compiling the model" and p["preparing"]
    assert "Unfreezing and compiling" in p["text"]
    metrics = {m.label: m.value for m in dashboard.monitor_metrics(p)}
    assert metrics["Epoch"] == "2/4" and metrics["Step"] == "–"
    # the fine-tuning phase's first batch: back to epochs and steps
    tuned = {**head[-1], "global_step": 21, "step": 1, "epoch": 3, "phase": "fine_tune",
             "t": head[-1]["t"] + 12.0}  # fmt: skip
    q = dashboard.progress_summary(_result(stage=stage), [*head, tuned])
    assert q["phase_label"] == "fine-tuning" and not q["preparing"]


def test_a_resumed_run_reports_the_speed_of_its_last_attempt_not_across_the_pause():
    """Stopped for an hour, resumed, completed: the rate is not the images over the hour."""
    first = _batches(20, seconds_per_step=0.5)  # t 1000.5 … 1010
    later = [{**b, "global_step": 20 + b["global_step"], "t": 5000.0 + b["t"] - 1000.0}
             for b in _batches(20, seconds_per_step=0.5)]  # fmt: skip
    result = _result(status="completed", started_at=5000.0, duration_s=3.0)
    p = dashboard.progress_summary(result, [*first, *later])
    assert p["images_per_s"] == pytest.approx(8 / 0.5)
    stopped = _result(status="stopped", started_at=5000.0)
    assert dashboard.progress_summary(stopped, [*first, *later])["images_per_s"] == pytest.approx(
        8 / 0.5
    )


# --------------------------------------------------------------------------- the Train form


def test_train_form_values_cover_every_field_and_stay_in_range():
    values = dashboard.train_form_values(RunConfig())
    assert set(values) == set(dashboard.FORM_FIELDS)
    assert values["mode"] == "feature_extraction" and values["cache"] is True
    odd = RunConfig(lr=2e-3, fine_tune_lr=7e-6, weights="/w.h5", unfreeze=50_000, val_split=0.01)
    values = dashboard.train_form_values(odd)
    assert values["lr"] == 3e-3 and values["ft_lr"] == 1e-5  # the nearest slider stops
    assert values["weights"] == "imagenet" and values["unfreeze"] is None
    assert values["val_split"] == 0.05


def test_every_lint_finding_has_a_section_of_the_form():
    import re
    from pathlib import Path

    source = Path(dashboard.__file__).parents[2].joinpath("core", "lint.py").read_text()
    codes = set(re.findall(r'"([a-z_]+)",\n', source)) & set(re.findall(r"[a-z]+_[a-z_]+", source))
    assert codes >= {"fine_tune_lr_high", "image_size_below_default"}
    assert codes <= set(dashboard.LINT_SECTIONS)
    assert dashboard.lint_section("a_new_check") == "schedule"  # just above Launch


@pytest.mark.parametrize(
    ("mode", "augment", "applies"),
    [("feature_extraction", True, True), ("feature_extraction", False, True),
     ("fine_tuning", False, True), ("fine_tuning", True, False),
     ("full_fine_tuning", False, False), ("scratch", False, False)],
)  # fmt: skip
def test_the_feature_cache_toggle_applies_only_when_the_run_can_use_it(mode, augment, applies):
    from core.training.sources import input_path

    path = input_path(RunConfig(mode=mode, augment=augment))
    usable, why = dashboard.cache_control(path.kind, path.reason, path.blocker)
    assert usable is applies and (why is None) is applies
    off = input_path(RunConfig(mode=mode, augment=augment, feature_cache="off"))
    assert dashboard.cache_control(off.kind, off.reason, off.blocker)[0] is True  # user's choice


def test_layer_counts_come_from_one_function():
    """The preview's "N of M base layers train" is the Run page's phase count; BN layers in the
    unfrozen range do not count; a from-scratch run has nothing frozen."""
    config = TINY.with_changes(mode="fine_tuning", unfreeze=12)
    summary = model.layer_preview_summary(config, num_classes=3)
    fine = summary["phases"][-1]
    assert summary["trainable_base_layers"] == fine["trainable_layers"]
    assert fine["trainable_layers"] < fine["unfrozen_layers"] == 12  # its BN layers stay frozen
    assert fine["trainable_layers"] == sum(r["trainable_in_fine_tune"] for r in summary["layers"])
    scratch = model.layer_preview_summary(config.with_changes(mode="scratch"), 3)["phases"][0]
    assert scratch["frozen_params"] == 0 < scratch["non_trainable_params"]  # BN statistics
    assert scratch["trainable_layers"] == scratch["base_layers"]
    head = summary["phases"][0]
    assert head["trainable_layers"] == 0 and head["frozen_params"] > 0


def test_format_bytes_and_sparkline():
    assert [dashboard.format_bytes(n) for n in (None, 512, 3_400_000, 1_210_000_000)] == [
        "–", "512 B", "3.4 MB", "1.21 GB",
    ]  # fmt: skip
    figure = dashboard.sparkline([{**b, "loss": 1.0, "accuracy": 1.0} for b in _batches(5)])
    assert [t.name for t in figure.data] == ["loss", "accuracy"]
    assert figure.layout.yaxis2.range[1] > 1.0  # accuracy 1.0 is not cut at the edge
    assert figure.layout.height <= 120


def test_core_sentences_name_modes_in_words() -> None:
    said = modes_in_words(
        "augmentation is on and mode fine_tuning trains part of the base (augmented views are "
        "stored only in feature_extraction); mode full_fine_tuning_x is not a mode"
    )
    assert said.startswith("augmentation is on and the fine-tuning mode trains part")
    assert said.count("feature extraction") == 1 and "feature_extraction" not in said
    assert "full_fine_tuning_x" in said  # only whole words are keys
