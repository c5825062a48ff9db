"""A 200-class run's evaluation, confusion matrix and embedding map: small files, same numbers.

The evaluations here are written by ``core.runs.evaluate.write_evaluation`` (the worker's own
writer) from seeded probabilities, so no model is trained.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.views import review as review_views
from app.views import run_page as run_views
from core.config import RunConfig
from core.runs import evaluate
from core.runs.store import COMPLETED, RUNNING
from core.training.review import stratified_sample
from tests.helpers import ROOT, fake_studio, write_pngs

APP = str(ROOT / "streamlit_app.py")
CLASSES = 200
VAL_IMAGES = 10_000  # the validation fifth of 200 classes x 250 images


def _probabilities(
    classes: int, images: int, seed: int = 0, lean: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(probabilities, true labels)``: softmax of logits leaning to the true class."""
    rng = np.random.default_rng(seed)
    truth = np.arange(images) % classes
    logits = rng.normal(0.0, 1.0, (images, classes))
    logits[np.arange(images), truth] += lean
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32), truth


def _result(
    names: list[str], probs: np.ndarray, truth: np.ndarray, run_id: str, root: str = "/data"
) -> dict:
    """An evaluation result as ``evaluate_run`` builds it (metrics left simple)."""
    pred = probs.argmax(axis=1)
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(matrix, (truth, pred), 1)
    return {
        "run_id": run_id,
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "class_names": names,
        "confusion_matrix": matrix.tolist(),
        "per_class": [
            {
                "class": n,
                "precision": 0.5,
                "recall": 0.5,
                "f1": 0.5,
                "support": int(matrix[i].sum()),
            }
            for i, n in enumerate(names)
        ],
        "macro_avg": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
        "val_images": int(matrix.sum()),
        "images": [
            evaluate.image_entry(f"{root}/{i:05d}.png", names, int(t), row)
            for i, (t, row) in enumerate(zip(truth, probs, strict=True))
        ],
        "duration_s": 0.1,
        "evaluated_at": time.time(),
    }


def _seed_run(store: Any, names: list[str], probs: np.ndarray, truth: np.ndarray) -> str:
    """A completed run (junk model file: nothing loads it) with its evaluation written; its
    validation images are links to one tiny picture (the gallery shows thumbnails)."""
    config = RunConfig(backbone="mobilenet_v2", weights="none", data="builtin:textures",
                       image_size=32, epochs=1)  # fmt: skip
    run_id = store.create_run(config, status=RUNNING)
    model = store.run_dir(run_id) / "model.keras"
    model.write_bytes(b"not a model")
    store.add_epoch(run_id, {"epoch": 1, "phase": "head", "phase_epoch": 1, "loss": 0.9,
                             "accuracy": 0.6, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 1e-3,
                             "images_per_s": 100.0, "duration_s": 1.0})  # fmt: skip
    now = time.time()
    store.update(run_id, class_names=names, train_images=4 * len(truth), val_images=len(truth),
                 model_path=str(model), model_bytes=11, started_at=now - 2, finished_at=now,
                 duration_s=2.0, status=COMPLETED)  # fmt: skip
    images = store.run_dir(run_id) / "images"
    write_pngs(images, 1, side=8)
    picture = next(images.glob("*.png"))
    for i in range(len(truth)):
        (images / f"{i:05d}.png").symlink_to(picture)
    result = _result(names, probs, truth, run_id, root=str(images))
    result["cache_key"] = evaluate._model_fingerprint(model)
    evaluate.write_evaluation(store.run_dir(run_id), result, probs)
    return run_id


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A studio with one completed 200-class run of 10,000 validation images."""
    names = [f"species {i:03d}" for i in range(CLASSES)]
    probs, truth = _probabilities(CLASSES, VAL_IMAGES)
    with fake_studio(tmp_path_factory.mktemp("scale-home")) as store:
        yield store, _seed_run(store, names, probs, truth), names, probs, truth


# --------------------------------------------------------------------------- evaluation file


def test_200_class_evaluation_json_stays_under_10_mb_and_keeps_every_probability(big_run):
    store, run_id, names, probs, truth = big_run
    folder = store.run_dir(run_id)
    size = (folder / evaluate.EVALUATION_FILE).stat().st_size
    assert size <= 10_000_000, size  # every probability inline was about 20 MB
    on_disk = json.loads((folder / evaluate.EVALUATION_FILE).read_text())
    assert on_disk["probabilities_file"] == evaluate.PROBABILITIES_FILE
    assert evaluate.MATRIX_KEY not in on_disk
    first = on_disk["images"][0]
    assert "probabilities" not in first  # 200 classes: top-k only
    assert len(first["top"]) == evaluate.TOP_K
    assert first["top"][0]["label"] == first["predicted"]
    ev = evaluate.evaluate_run(store, run_id)
    assert ev["from_cache"] is True
    np.testing.assert_allclose(evaluate.probability_matrix(ev), probs, atol=0)


def test_readers_get_the_same_numbers_as_from_the_full_matrix(big_run):
    store, run_id, names, probs, truth = big_run
    ev = evaluate.evaluate_run(store, run_id)
    pred = probs.argmax(axis=1)
    for i in (0, 1, 4321, VAL_IMAGES - 1):
        image = ev["images"][i]
        assert image["predicted"] == names[pred[i]] and image["true"] == names[truth[i]]
        for cls in (int(pred[i]), int(truth[i])):
            assert evaluate.class_probability(ev, image, names[cls]) == pytest.approx(
                float(probs[i, cls]), abs=1e-6
            )
    # A confused cell: the gallery's order and captions, from the full matrix.
    wrong = int(np.flatnonzero(truth != pred)[0])
    t, p = int(truth[wrong]), int(pred[wrong])
    rows = np.flatnonzero((truth == t) & (pred == p))
    expected = sorted(rows, key=lambda r: -probs[r, p])
    cell = evaluate.misclassified(ev, names[t], names[p])
    assert [img["path"] for img in cell] == [ev["images"][r]["path"] for r in expected]
    items, total = run_views.gallery(ev, names[t], names[p])
    assert total == len(rows)
    assert items[0]["predicted_p"] == pytest.approx(float(probs[expected[0], p]), abs=1e-6)
    assert items[0]["true_p"] == pytest.approx(float(probs[expected[0], t]), abs=1e-6)


def test_an_array_file_of_other_images_is_not_used(tmp_path):
    names = ["a", "b", "c"]
    probs, truth = _probabilities(3, 12)
    result = {**_result(names, probs, truth, "r"), "cache_key": {"model": 1}}
    evaluate.write_evaluation(tmp_path, result, probs)
    path = tmp_path / evaluate.EVALUATION_FILE
    data = json.loads(path.read_text())
    assert data["images"][0]["probabilities"] == pytest.approx(probs[0].tolist(), abs=1e-6)
    cached = evaluate._read_cache(path, {"model": 1})
    assert cached is not None
    np.testing.assert_array_equal(evaluate.probability_matrix(cached), probs)
    np.save(tmp_path / evaluate.PROBABILITIES_FILE, probs[:5])  # another evaluation's array
    # The fingerprint matches, the array does not: the cache is refused (recomputed).
    assert evaluate._read_cache(path, {"model": 1}) is None


def test_an_older_evaluation_with_inline_probabilities_is_still_read(tmp_path):
    """Files written before the array file: every probability inline, no top-k keys."""
    names = ["cat", "dog", "fox"]
    probs, truth = _probabilities(3, 9, seed=3, lean=0.0)
    pred = probs.argmax(axis=1)
    old = {
        "class_names": names,
        "images": [
            {"path": f"/d/{i}.png", "true": names[t], "predicted": names[p],
             "probabilities": [round(float(v), 6) for v in row]}
            for i, (t, p, row) in enumerate(zip(truth, pred, probs, strict=True))
        ],
    }  # fmt: skip
    np.testing.assert_allclose(evaluate.probability_matrix(old), probs, atol=1e-6)
    i = int(np.flatnonzero(truth != pred)[0])
    t, p = names[truth[i]], names[pred[i]]
    items, _total = run_views.gallery(old, t, p)
    assert items[0]["true_p"] == pytest.approx(float(probs[i, truth[i]]), abs=1e-6)
    assert items[0]["caption"].startswith(f"{p} ")


def test_a_top_k_evaluation_without_its_array_file_says_how_to_get_it_back():
    ev = {"run_id": "r9", "class_names": ["a"] * 20, "images": [{"path": "x", "top": []}]}
    with pytest.raises(evaluate.StudioError, match="evaluate it again"):
        evaluate.probability_matrix(ev)


# --------------------------------------------------------------------------- confusion matrix


def test_overview_heatmap_at_200_classes_has_no_cell_text_and_stays_small(big_run):
    store, run_id, names, probs, truth = big_run
    ev = evaluate.evaluate_run(store, run_id)
    view = run_views.matrix_view(ev)
    assert view["kind"] == "pairs" and view["figure"] is None
    heat = view["overview"].data[0]
    assert heat.type == "heatmap" and heat.text is None and heat.texttemplate is None
    assert np.asarray(heat.z).shape == (CLASSES, CLASSES)
    assert len(view["overview"].to_json()) < 1_500_000
    big = [str(i) for i in range(run_views.OVERVIEW_MAX_CLASSES + 1)]
    assert run_views.matrix_view({"class_names": big, "confusion_matrix": np.eye(len(big))})[
        "overview"
    ] is None  # fmt: skip


def test_filter_class_rows_finds_classes_by_part_of_their_name():
    rows = [{"class": "Red Fox"}, {"class": "fox terrier"}, {"class": "cat"}, {"class": "macro"}]
    assert [r["class"] for r in run_views.filter_class_rows(rows, " FOX ")] == [
        "Red Fox",
        "fox terrier",
    ]
    assert run_views.filter_class_rows(rows, "") == rows
    assert run_views.filter_class_rows(rows, "zebra") == []


# --------------------------------------------------------------------------- embedding map


def test_stratified_sample_keeps_every_class_in_proportion():
    labels = np.repeat(np.arange(200), 250)  # 50,000 images
    labels[:249] = 0  # class 0 even
    sample = stratified_sample(labels, 5000, seed=1)
    assert len(sample) == 5000 and len(np.unique(sample)) == 5000
    assert np.all(np.diff(sample) > 0)
    counts = np.bincount(labels[sample], minlength=200)
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # 25 each, give or take one
    skewed = np.array([0] * 9990 + list(range(1, 11)))  # one big class, ten of one image
    picked = stratified_sample(skewed, 100, seed=1)
    assert len(picked) == 100 and set(skewed[picked]) == set(range(11))
    assert np.array_equal(stratified_sample(skewed, 100, seed=1), picked)  # deterministic
    assert np.array_equal(stratified_sample([1, 0, 1], 5000, seed=1), [0, 1, 2])


def test_map_sample_text_says_what_the_map_shows():
    assert review_views.map_sample_text(5000, 50000, 200) == (
        "Showing 5,000 of 50,000 images (a stratified sample: every one of the 200 classes "
        "represented)."
    )
    assert review_views.map_sample_text(120, 120, 3) == ""


# --------------------------------------------------------------------------- the Run page


def test_run_page_at_200_classes_overview_search_pairs_and_gallery(big_run):
    store, run_id, names, probs, truth = big_run
    started = time.perf_counter()
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/run.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    elapsed = time.perf_counter() - started
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    overview = [spec for spec in charts if '"heatmap"' in spec]
    assert len(overview) == 1 and '"texttemplate"' not in overview[0]
    per_class = next(d.value for d in at.dataframe if "recall" in d.value.columns)
    assert len(per_class) == CLASSES + 1  # and the macro average
    at.text_input(key=f"class_search_{run_id}").input("species 19").run()
    per_class = next(d.value for d in at.dataframe if "recall" in d.value.columns)
    assert list(per_class["class"]) == [f"species {i}" for i in range(190, 200)]
    pairs = next(d.value for d in at.dataframe if "predicted" in d.value.columns)
    top = pairs.iloc[0]
    t, p = names.index(top["true"]), names.index(top["predicted"])
    assert at.selectbox(key=f"true_{run_id}").value == top["true"]
    pred = probs.argmax(axis=1)
    assert top["count"] == int(np.sum((truth == t) & (pred == p)))
    assert any(f"{top['count']} validation images of" in m.value for m in at.markdown)
    assert elapsed < 30, elapsed
