"""The Run page's "Can you trust these numbers?" section and Predict's prediction sets, under
AppTest against a studio seeded with one tiny finished run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.helpers import ROOT, TINY, seeded_studio

APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    with seeded_studio(tmp_path_factory.mktemp("trust-page-home"), TINY) as seeded:
        yield seeded


def _page(path: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    at = at.switch_page(path).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _png() -> bytes:
    pixels = np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.slow
def test_run_page_says_whether_to_trust_the_run(seeded) -> None:
    queue, run_id = seeded
    at = _page("pages/run.py")
    leakage = json.loads((queue.store.run_dir(run_id) / "leakage.json").read_text())
    said = [m.value for m in at.markdown if "near-copy in training" in m.value]
    assert len(said) == 1 and f"{leakage['val_images']} validation images" in said[0]
    twins = leakage["val_images_with_train_twin"]
    assert said[0].split("] ", 1)[1].startswith(f"{twins} of" if twins else "None of")
    assert len(at.get("plotly_chart")) == 2  # the confusion matrix and the reliability diagram
    assert any("calibration error" in c.value for c in at.caption)
    assert any(c.value.startswith("tensorboard --logdir ") for c in at.code)
    assert str(queue.store.run_dir(run_id) / "tensorboard") in at.code[0].value

    at.button(key=f"tta_{run_id}").click().run()
    assert any("without," in c.value and "per image" in c.value for c in at.caption)

    uri = (queue.store.root / "mlruns-page").as_uri()
    at.text_input(key="trust_mlflow_uri").set_value(uri).run()
    at.button(key=f"mlflow_{run_id}").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("Logged to experiment" in s.value for s in at.success)
    assert (queue.store.root / "mlruns-page").is_dir()


@pytest.mark.slow
def test_predict_page_shows_the_prediction_set(seeded) -> None:
    at = _page("pages/predict.py")
    at.file_uploader(key="images").set_value([("a.png", _png(), "image/png")]).run()
    assert not at.exception
    sets = [m.value for m in at.markdown if "prediction set" in m.value]
    assert len(sets) == 1 and sets[0].split("] ", 1)[1].startswith(("Sure: ", "Not sure: "))
    # Near-certain coverage: the set grows to hold more classes (never fewer).
    before = sets[0].count(" or ") + sets[0].count(", ")
    at.slider(key="predict_coverage").set_value(0.99).run()
    wider = [m.value for m in at.markdown if "prediction set" in m.value][0]
    assert wider.count(" or ") + wider.count(", ") >= before and "99%" in wider
    at.toggle(key="predict_tta").set_value(True).run()
    assert not at.exception and not at.error


@pytest.mark.slow
def test_one_click_excludes_the_validation_copies(seeded) -> None:
    """With a pair found, the page shows both pictures and one click sets the validation copy
    aside in the run's managed copy of its source (the original folder is never changed)."""
    from core.data.datasets import open_dataset
    from core.files import sha256_file
    from core.runs.leakage import LEAKAGE_FILE

    queue, run_id = seeded
    result = queue.store.result(run_id)
    root = Path(result["dataset"]["root"])
    folder = queue.store.run_dir(run_id)
    stored = json.loads((folder / LEAKAGE_FILE).read_text())
    val, train = sorted((root / "brick").iterdir())[:2]
    stored["pairs"] = [
        {"val": f"brick/{val.name}", "train": f"brick/{train.name}", "similarity": 0.995,
         "same_label": True, "exact": False, "hash_distance": 2, "val_label": "brick",
         "train_label": "brick"}
    ]  # fmt: skip
    stored["val_images_with_train_twin"] = 1
    (folder / LEAKAGE_FILE).write_text(json.dumps(stored))
    at = _page("pages/run.py")
    said = [m.value for m in at.markdown if "near-copy in training" in m.value]
    assert said[0].split("] ", 1)[1].startswith("1 of ")
    captions = [c for image in at.get("image") for c in image.proto.imgs[0].caption.split("\n")]
    assert f"validation · brick · brick/{val.name}" in captions
    at.button(key=f"exclude_twins_{run_id}").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("Excluded 1 validation image(s)" in s.value for s in at.success)
    with open_dataset("textures") as ds:
        excluded = {i.id for i in ds.images() if i.excluded}
    assert excluded == {sha256_file(val)[:12]}
    assert val.is_file()  # the source folder keeps its file


def test_run_page_offers_the_check_a_run_never_had(tmp_path) -> None:
    """A run without a stored check (from before it existed): the page says so and offers the
    check, instead of loading the model on its own."""
    from tests.helpers import fake_studio, stored_run

    names = ["brick", "grass"]
    with fake_studio(tmp_path / "home") as store:
        run_id = stored_run(store, TINY, names, matrix=[[3, 1], [0, 4]])
        at = _page("pages/run.py")
        assert any("Not checked yet" in c.value for c in at.caption)
        assert at.button(key=f"leakage_{run_id}").label == "Look for near-copies across the split"
        assert any(c.value.startswith("tensorboard --logdir ") for c in at.code)


@pytest.mark.slow
def test_one_click_moves_the_pair_to_training(seeded) -> None:
    """ "Move to training" pins both pictures of each pair to the training side of the run's
    dataset (its managed copy), as one edit the dataset's history undoes; the next split keeps
    them both in training."""
    from core.data.datasets import find_copy, open_dataset
    from core.data.index import load_dataset
    from core.files import sha256_file
    from core.runs.leakage import LEAKAGE_FILE

    queue, run_id = seeded
    result = queue.store.result(run_id)
    root = Path(result["dataset"]["root"])
    folder = queue.store.run_dir(run_id)
    stored = json.loads((folder / LEAKAGE_FILE).read_text())
    val, train = sorted((root / "grass").iterdir())[2:4]
    stored["pairs"] = [
        {"val": f"grass/{val.name}", "train": f"grass/{train.name}", "similarity": 0.995,
         "same_label": True, "exact": False, "hash_distance": 2, "val_label": "grass",
         "train_label": "grass"}
    ]  # fmt: skip
    stored["val_images_with_train_twin"] = 1
    (folder / LEAKAGE_FILE).write_text(json.dumps(stored))
    at = _page("pages/run.py")
    button = at.button(key=f"move_twins_{run_id}")
    assert button.label == "Move the 1 pair(s) to training"
    button.click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("Pinned 2 image(s) to training" in s.value for s in at.success)
    name = find_copy(queue.store.config(run_id).data)
    assert name is not None
    ids = {sha256_file(val)[:12], sha256_file(train)[:12]}
    with open_dataset(name) as ds:
        assert ds.pins() == dict.fromkeys(ids, "train")
        assert ds.edits()[-1]["summary"] == "pinned 2 images to training"
    data = load_dataset(f"dataset:{name}", val_split=0.2, seed=42)
    assert ids <= {Path(p).stem for p in data.train_paths}
    assert not ids & {Path(p).stem for p in data.val_paths}
    with open_dataset(name) as ds:  # the history undoes it, as any other edit
        assert ds.undo()["summary"] == "pinned 2 images to training"
        assert ds.pins() == {}
