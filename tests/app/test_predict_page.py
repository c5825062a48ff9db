"""Predict's default model under AppTest, against fake finished runs (no training): the best run
(Compare's rule) on the data of the run just watched or the data in use, never simply the
newest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.runs.store import COMPLETED, RunStore

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120


def _fake_run(store: RunStore, data: str, mode: str, accuracy: float) -> str:
    """A completed run as the worker leaves it: one epoch and a model file (junk: the page only
    lists runs until an image is dropped, so nothing loads it)."""
    config = RunConfig(backbone="mobilenet_v2", weights="none", mode=mode, data=data, epochs=1)
    run_id = store.create_run(config)
    model = store.run_dir(run_id) / "model.keras"
    model.write_bytes(b"not a model")
    store.add_epoch(
        run_id,
        {"epoch": 1, "phase": "head", "phase_epoch": 1, "loss": 0.9, "accuracy": accuracy,
         "val_loss": 1.0, "val_accuracy": accuracy, "lr": 1e-3, "images_per_s": 100.0,
         "duration_s": 1.0},
    )  # fmt: skip
    store.update(run_id, model_path=str(model), model_bytes=11, class_names=["a", "b", "c"])
    store.update(run_id, status=COMPLETED)
    return run_id


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Any:
    """A studio home holding "Compare all modes" on textures (the scratch baseline newest) and
    an older run on photos; yields the run ids by name."""
    home = tmp_path_factory.mktemp("predict-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFER_STUDIO_HOME", str(home))
        store = RunStore(home)
        ids = {"photos": _fake_run(store, "builtin:photos", "feature_extraction", 0.97)}
        for mode, accuracy in (
            ("feature_extraction", 0.91),
            ("fine_tuning", 0.93),
            ("full_fine_tuning", 0.90),
            ("scratch", 0.33),
        ):
            ids[mode] = _fake_run(store, "builtin:textures", mode, accuracy)
        yield ids


def _predict(session: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.run()
    at.switch_page("pages/predict.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_predict_preselects_the_best_run_for_the_data_in_use(studio):
    at = _predict({"data_source": "builtin:textures"})
    # Not the newest (the 33 % scratch baseline): the best on the data in use.
    assert at.multiselect(key="models").value == [studio["fine_tuning"]]
    at = _predict({"data_source": "builtin:photos"})
    assert at.multiselect(key="models").value == [studio["photos"]]
    at = _predict()  # no data chosen: the best run overall
    assert at.multiselect(key="models").value == [studio["photos"]]


def test_predict_preselects_the_best_run_on_the_data_of_the_run_just_watched(studio):
    # The run just watched does not win over a better one: Compare names the best the same way.
    watched = {"data_source": "builtin:textures", "run_id": studio["feature_extraction"]}
    assert _predict(watched).multiselect(key="models").value == [studio["fine_tuning"]]
    watched["run_id"] = studio["scratch"]  # the monitor ended on the baseline: not that one
    assert _predict(watched).multiselect(key="models").value == [studio["fine_tuning"]]
    watched = {"data_source": "builtin:textures", "run_id": studio["photos"]}
    assert _predict(watched).multiselect(key="models").value == [studio["photos"]]
