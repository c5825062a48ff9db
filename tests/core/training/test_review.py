"""Review (core.training.review, ``python -m core review``): likely label mistakes of a run.

Most tests use a stand-in run: a completed run record whose saved model is a tiny Keras model
with the studio's layer names (pooled colour → head), on small single-colour pictures where a
swapped label is obvious. One slow test trains for real end to end.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.cli as cli
from core.config import RunConfig
from core.data import datasets
from core.errors import StudioError
from core.files import sha256_file
from core.runs.store import COMPLETED, RunStore
from core.training import review as rv
from tests.helpers import fake_run as recorded_run

CLASSES = {"blue": (20, 20, 220), "green": (20, 200, 20), "red": (220, 20, 20)}
SIZE = 32


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own studio home: its own datasets and runs."""
    folder = tmp_path / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(folder))
    return folder


def _picture(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 12, (24, 24, 3))
    pixels = np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_pictures(root: Path, per_class: int = 10, swapped: int = 1) -> dict[str, str]:
    """Class folders of noisy single-colour pictures; the first ``swapped`` of each class are
    filed under the next class. Returns ``{image id: true class}`` of the swapped ones."""
    names = list(CLASSES)
    wrong: dict[str, str] = {}
    for c, (name, colour) in enumerate(CLASSES.items()):
        for i in range(per_class):
            folder = names[(c + 1) % len(names)] if i < swapped else name
            path = root / folder / f"{name}_{i:02d}.png"
            _picture(path, colour, seed=100 * c + i)
            if i < swapped:
                wrong[sha256_file(path)[:12]] = name
    return wrong


def _colour_model(class_names: list[str]) -> object:
    """Mean colour → class: the studio's layer names (avg_pool, head_*), weights set by hand."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.0, name="head_dropout")(pooled)
    dense = keras.layers.Dense(3, activation="relu", name="head_dense")
    x = dense(x)
    predictions = keras.layers.Dense(len(class_names), activation="softmax", name="predictions")
    outputs = predictions(x)
    model = keras.Model(inputs, outputs)
    dense.set_weights([np.eye(3, dtype=np.float32) * 10, np.zeros(3, np.float32)])
    channel = {"red": 0, "green": 1, "blue": 2}
    w = np.zeros((3, len(class_names)), np.float32)
    for j, name in enumerate(class_names):
        w[channel[name], j] = 1.0
    predictions.set_weights([w, np.zeros(len(class_names), np.float32)])
    return model


def fake_run(store: RunStore, data: str, status: str = COMPLETED) -> str:
    """A run of ``data`` recorded as the trainer records one, with a hand-made model."""
    config = RunConfig(data=data, image_size=SIZE, epochs=1, augment=False)
    return recorded_run(store, data, status, config, model=_colour_model)


@pytest.fixture
def store(home: Path) -> RunStore:
    return RunStore(home / "runs")


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Dataset 'colours' (3 classes x 10, one swapped picture per class): (name, swapped)."""
    wrong = make_pictures(tmp_path / "pics")
    with datasets.create("colours", str(tmp_path / "pics")):
        pass
    yield "colours", wrong


# --------------------------------------------------------------------------- ranking


def test_swapped_labels_rank_first(store: RunStore, managed: tuple[str, dict[str, str]]) -> None:
    name, wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    review = rv.review_run(store, run_id)
    top = review.suspects[: len(wrong)]
    assert {s.image for s in top} == set(wrong)
    for s in top:
        assert s.predicted == wrong[s.image] and s.label != s.predicted
        assert s.loss > 1.0 and 0 < s.confidence <= 1
    assert len(review.suspects) == 30  # top=None: every scored image
    losses = [s.loss for s in review.suspects]
    assert losses == sorted(losses, reverse=True)
    assert review.dataset == name and review.new_images == [] and review.gone_images == []
    assert "out-of-fold" in review.method and "Note" not in review.method
    assert {s.split for s in review.suspects} == {"train", "val"}
    assert [s.image for s in rv.review_run(store, run_id, top=2).suspects] == [
        s.image for s in review.suspects[:2]
    ]
    by_class = rv.suspects_by_class(review, 2)
    assert all(len(v) <= 2 for v in by_class.values()) and set(by_class) == set(CLASSES)


def test_heads_see_at_most_head_dims_principal_components(
    store: RunStore, managed: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wide features are cut to their widest directions before the k-fold heads (the heads'
    cost grows with the width); the likely mistakes still rank first."""
    from sklearn.linear_model import LogisticRegression

    name, wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    monkeypatch.setattr(rv, "HEAD_DIMS", 2)  # the stand-in's features are 3 wide
    widths: list[int] = []
    fit = LogisticRegression.fit

    def spy(self: LogisticRegression, x: np.ndarray, *a: object, **k: object) -> object:
        widths.append(x.shape[1])
        return fit(self, x, *a, **k)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    review = rv.review_run(store, run_id)
    assert widths and set(widths) == {2}
    assert {s.image for s in review.suspects[: len(wrong)]} == set(wrong)
    assert "at most 2 principal components" in review.method


def test_head_inputs_are_standardised_on_the_training_images() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(5.0, 3.0, (40, 3)).astype(np.float32)
    train = np.arange(40) < 30
    x = rv._head_inputs(features, train, seed=0)
    assert x.shape == (40, 3)
    np.testing.assert_allclose(x[train].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x[train].std(axis=0), 1.0, atol=1e-4)


def test_second_review_is_served_from_the_cache(
    store: RunStore, managed: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = fake_run(store, f"dataset:{managed[0]}")
    first = rv.review_run(store, run_id)
    assert (store.run_dir(run_id) / rv.SCORES_FILE).is_file()

    def no_model(*_a: object) -> object:
        raise AssertionError("the model was loaded for a cached review")

    monkeypatch.setattr(rv, "_load_model", no_model)
    monkeypatch.setattr(rv, "_compute_scores", no_model)
    assert rv.review_run(store, run_id) == first
    assert len(rv.embedding_map(store, run_id).points) == 30


def test_a_cached_review_reads_the_features_only_for_a_map(
    store: RunStore, managed: tuple[str, dict[str, str]]
) -> None:
    """A review never needs the features (most of the score file at 1,280 wide): read lazily."""
    run_id = fake_run(store, f"dataset:{managed[0]}")
    rv.review_run(store, run_id)
    cached = rv._scores(store, run_id)
    assert cached.features is None
    assert cached.feature_matrix().shape == (30, 3) and cached.features is not None
    assert len(rv.embedding_map(store, run_id, "pca").points) == 30


def test_a_score_file_is_read_once_until_it_changes(
    store: RunStore, managed: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's review and map on every rerun: one read of the file, not one each."""
    run_id = fake_run(store, f"dataset:{managed[0]}")
    first = rv.review_run(store, run_id)
    reads: list[Path] = []
    real = rv._read_scores_file
    monkeypatch.setattr(rv, "_read_scores_file", lambda p, f: reads.append(p) or real(p, f))
    assert rv.review_run(store, run_id) == first  # read once (the first call computed it)
    rv.embedding_map(store, run_id, "pca")
    assert rv.review_run(store, run_id) == first
    assert len(reads) == 1  # then served from memory
    (store.run_dir(run_id) / rv.SCORES_FILE).touch()  # another file now (its mtime)
    rv.review_run(store, run_id)
    assert len(reads) == 2


def test_a_folder_is_read_for_new_files_once_while_it_is_unchanged(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's review and map on every rerun: the 50,000-file folder is scanned only when
    something in it changed, and not at all while every image file in it was scored."""
    pics = tmp_path / "pics"
    make_pictures(pics, swapped=0)
    run_id = fake_run(store, str(pics))
    monkeypatch.setattr(rv, "_SETTLED_NS", 0)  # the pictures were written just now
    reads: list[str] = []
    real = rv._read_new_in_folder
    monkeypatch.setattr(rv, "_read_new_in_folder", lambda s: reads.append(s.source) or real(s))
    first = rv.review_run(store, run_id)
    rv.embedding_map(store, run_id, "pca")
    assert rv.review_run(store, run_id) == first and first.new_images == []
    assert reads == []  # every image file there was scored: not scanned at all
    added = pics / "red" / "red_new.png"
    _picture(added, CLASSES["red"], seed=998)
    assert rv.review_run(store, run_id).new_images == [sha256_file(added)[:12]]
    rv.embedding_map(store, run_id, "pca")
    assert rv.review_run(store, run_id).new_images == [sha256_file(added)[:12]]
    assert reads == [str(pics)]  # scanned once for the new file, then remembered


def test_a_folder_changed_just_now_is_read_on_every_look(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pics = tmp_path / "pics"
    make_pictures(pics, swapped=0)
    run_id = fake_run(store, str(pics))
    monkeypatch.setattr(rv, "_SETTLED_NS", 10**15)  # everything changed "just now"
    reads: list[str] = []
    real = rv._read_new_in_folder
    monkeypatch.setattr(rv, "_read_new_in_folder", lambda s: reads.append(s.source) or real(s))
    rv.review_run(store, run_id)
    rv.review_run(store, run_id)
    assert len(reads) == 2


def test_edits_change_the_review(store: RunStore, managed: tuple[str, dict[str, str]]) -> None:
    name, wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    first, second, third = rv.review_run(store, run_id).suspects[:3]
    with datasets.open_dataset(name) as ds:
        ds.relabel([first.image], first.predicted)  # fixed: drops out
        ds.exclude([second.image])  # set aside: drops out, reported gone
        ds.mark_reviewed([third.image])  # kept as labelled: listed last
    review = rv.review_run(store, run_id)
    ids = [s.image for s in review.suspects]
    assert first.image not in ids and second.image not in ids
    assert review.gone_images == [second.image]
    assert ids[-1] == third.image and review.suspects[-1].reviewed
    assert not any(s.reviewed for s in review.suspects[:-1])
    # Relabelled to something the model does not predict: still listed, as reviewed, last.
    with datasets.open_dataset(name) as ds:
        ds.undo()
        ds.undo()
        ds.undo()
        other = next(c for c in CLASSES if c not in (first.predicted, first.label))
        ds.relabel([first.image], other)
    review = rv.review_run(store, run_id)
    assert review.suspects[-1].image == first.image and review.suspects[-1].label == other
    with datasets.open_dataset(name) as ds:
        ds.undo()
    assert [s.image for s in rv.review_run(store, run_id).suspects[:3]] == [
        first.image,
        second.image,
        third.image,
    ]


def test_new_and_gone_images_after_the_dataset_changed(
    store: RunStore, managed: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Changed before the first review: the run's own images are still the ones scored."""
    name, wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    extra = tmp_path / "extra" / "blue_new.png"
    _picture(extra, CLASSES["blue"], seed=999)
    with datasets.open_dataset(name) as ds:
        added = ds.add_images("blue", [extra]).added
        victim = next(i.id for i in ds.images() if i.id not in wrong)
        ds.exclude([victim])
        ds.relabel([next(iter(wrong))], wrong[next(iter(wrong))])
    review = rv.review_run(store, run_id)
    assert review.new_images == added and review.gone_images == [victim]
    assert "Note" not in review.method  # the run's images and split were rebuilt exactly
    ids = {s.image for s in review.suspects}
    assert len(ids) == 28 and added[0] not in ids and victim not in ids
    # Changed after the first review: the cached scores are joined with the new state.
    with datasets.open_dataset(name) as ds:
        ds.restore([victim])
    assert rv.review_run(store, run_id).gone_images == []


def test_a_deleted_class_shows_as_gone_and_the_run_stays_usable(
    store: RunStore, managed: tuple[str, dict[str, str]]
) -> None:
    name, _wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    with datasets.open_dataset(name) as ds:
        in_red = {i.id for i in ds.images() if i.label == "red"}
        assert ds.delete_class("red") == len(in_red)
    review = rv.review_run(store, run_id)
    assert set(review.gone_images) == in_red
    assert not {s.image for s in review.suspects} & in_red
    assert len(review.suspects) == 30 - len(in_red)
    assert Path(store.get_run(run_id)["model_path"] or "").is_file()
    config = rv.retrain_config(store, run_id)
    assert config.data == f"dataset:{name}"


# --------------------------------------------------------------------------- unmanaged sources


def test_an_unmanaged_source_is_edited_through_one_managed_copy(
    store: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = make_pictures(tmp_path / "shots")
    source = str(tmp_path / "shots")
    run_id = fake_run(store, source)
    review = rv.review_run(store, run_id)
    assert review.dataset is None and review.source == source
    assert cli.main(["review", "--run", run_id, "--top", "2", "--runs-dir", str(store.root)]) == 0
    assert f"review --run {run_id} --edit-target" in capsys.readouterr().out
    assert datasets.dataset_names() == []  # reviewing copies nothing
    assert {s.image for s in review.suspects[:3]} == set(wrong)
    assert review.suspects[0].path.startswith(source)

    assert rv.edit_target(store, run_id) == ("shots", True)
    assert rv.edit_target(store, run_id) == ("shots", False)
    other_run = fake_run(store, source + "/")  # the same folder, typed differently
    assert rv.edit_target(store, other_run) == ("shots", False)
    assert datasets.dataset_names() == ["shots"]

    again = rv.review_run(store, run_id)
    assert again.dataset == "shots"
    assert [s.image for s in again.suspects] == [s.image for s in review.suspects]
    assert again.suspects[0].path.startswith(str(datasets.dataset_path("shots")))
    # The ids review printed are the copy's: the dataset CLI takes them.
    image = review.suspects[0].image
    assert cli.main(["dataset", "relabel", "shots", image, "--to", wrong[image]]) == 0
    assert image not in {s.image for s in rv.review_run(store, run_id).suspects}

    config = rv.retrain_config(store, run_id)
    assert config.data == "dataset:shots"
    assert config.name.endswith(" · fixed") and config.epochs == 1
    assert config.with_changes(data=source, name="") == store.config(run_id).with_changes(name="")


def test_a_file_gone_from_an_unmanaged_folder_is_reported(store: RunStore, tmp_path: Path) -> None:
    make_pictures(tmp_path / "shots", per_class=5, swapped=0)
    run_id = fake_run(store, str(tmp_path / "shots"))
    rv.review_run(store, run_id)  # scored while every file is there
    victim = tmp_path / "shots" / "red" / "red_00.png"
    image = sha256_file(victim)[:12]
    victim.unlink()
    review = rv.review_run(store, run_id)
    assert review.gone_images == [image] and len(review.suspects) == 14


def test_a_taken_name_gives_the_copy_another(store: RunStore, tmp_path: Path) -> None:
    make_pictures(tmp_path / "shots", per_class=4, swapped=0)
    datasets.create("shots").close()
    run_id = fake_run(store, str(tmp_path / "shots"))
    assert rv.edit_target(store, run_id) == ("shots 2", True)
    with datasets.open_dataset("shots 2") as ds:
        assert ds.meta(datasets.COPIED_FROM) == str(tmp_path / "shots")
        assert len(ds.images()) == 12


# --------------------------------------------------------------------------- map, CLI, errors


@pytest.mark.parametrize("tsne", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_embedding_map_has_one_finite_point_per_image(
    store: RunStore, managed: tuple[str, dict[str, str]], tsne: bool
) -> None:
    name, wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    for method in ("pca", "tsne") if tsne else ("pca",):
        emap = rv.embedding_map(store, run_id, method)
        assert emap.method == method and len(emap.points) == 30
        assert len({p.image for p in emap.points}) == 30
        assert all(math.isfinite(p.x) and math.isfinite(p.y) for p in emap.points)
        assert {p.image for p in emap.points if not p.correct} >= set(wrong)
        assert json.loads(json.dumps(emap.to_json()))["points"][0]["image"]
    with pytest.raises(StudioError, match="Unknown map method 'umap'"):
        rv.embedding_map(store, run_id, "umap")


def test_cli_map_prints_json_and_its_progress_on_stderr(
    store: RunStore,
    managed: tuple[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.cli.review import MAP_METHODS

    assert MAP_METHODS == rv.MAP_METHODS
    monkeypatch.setenv("TRANSFER_STUDIO_PROGRESS_AFTER_S", "0")  # every stage shows
    run_id = fake_run(store, f"dataset:{managed[0]}")
    runs = ["--runs-dir", str(store.root)]
    assert cli.main(["review", "--run", run_id, "--map", "pca", "--json", *runs]) == 0
    out = capsys.readouterr()
    emap = json.loads(out.out)  # stdout: only the JSON
    assert emap["method"] == "pca" and len(emap["points"]) == emap["drawn"] == 30
    assert {"image", "label", "predicted", "split", "x", "y"} <= set(emap["points"][0])
    err = out.err.splitlines()
    assert any(line.startswith("review: fitting logistic-regression heads 5/5") for line in err)
    assert err[-1].startswith("embedding map: pca layout 1/1 (100%)")
    assert cli.main(["review", "--run", run_id, "--map", "pca", *runs]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"embedding map (pca) of run {run_id}: all 30 images"
    assert len(text) == 2 + 30  # the header line, the table's header, one row per image


@pytest.mark.slow
def test_tsne_reports_its_iterations(store: RunStore, managed: tuple[str, dict[str, str]]) -> None:
    run_id = fake_run(store, f"dataset:{managed[0]}")
    rv.review_run(store, run_id)
    steps: list[tuple[str, int, int]] = []
    emap = rv.embedding_map(store, run_id, "tsne", progress=lambda *a: steps.append(a))
    total = sum(rv.TSNE_ITERATIONS)
    assert steps[0] == ("layout", 0, total) and steps[-1] == ("layout", total, total)
    assert len(steps) == 1 + total // rv.TSNE_EVERY
    assert len(emap.points) == 30


def test_review_reports_the_feature_pass_and_each_head_once(
    store: RunStore, managed: tuple[str, dict[str, str]]
) -> None:
    name, _wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    calls: list[tuple[str, int, int]] = []
    rv.review_run(
        store, run_id, progress=lambda step, done, total: calls.append((step, done, total))
    )
    features = [c for c in calls if c[0] == "features"]
    heads = [c for c in calls if c[0] == "heads"]
    assert features and features[-1][1:] == (30, 30)
    assert calls.index(features[-1]) < calls.index(heads[0])  # the pass, then the heads
    # Five folds over the training images; their mean scores the validation images.
    assert [(d, t) for _, d, t in heads] == [(k, 5) for k in range(1, 6)]
    calls.clear()
    rv.review_run(store, run_id, progress=lambda *a: calls.append(a))
    assert calls == []  # cached: nothing to follow


def test_embedding_map_past_its_cap_draws_a_stratified_sample(
    store: RunStore, managed: tuple[str, dict[str, str]]
) -> None:
    name, _wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    emap = rv.embedding_map(store, run_id, "pca", max_points=6)
    assert (emap.scored, emap.drawn, emap.classes, emap.sampled) == (30, 6, 3, True)
    assert len(emap.points) == 6
    trained = {p.image: p.label for p in rv.embedding_map(store, run_id, "pca").points}
    assert (
        sorted(trained[p.image] for p in emap.points) == ["blue"] * 2 + ["green"] * 2 + ["red"] * 2
    )  # every class, two each
    again = rv.embedding_map(store, run_id, "pca", max_points=6)
    assert [(p.image, p.x, p.y) for p in again.points] == [(p.image, p.x, p.y) for p in emap.points]
    full = rv.embedding_map(store, run_id, "pca")
    assert not full.sampled and len(full.points) == full.drawn == 30
    assert json.loads(json.dumps(emap.to_json()))["drawn"] == 6


def test_cli_json_contract_and_ids_the_dataset_commands_take(
    store: RunStore,
    managed: tuple[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, wrong = managed
    run_id = fake_run(store, f"dataset:{name}")
    runs = ["--runs-dir", str(store.root)]
    assert cli.main(["review", "--run", run_id, "--top", "5", "--json", *runs]) == 0
    out = capsys.readouterr()
    suspects = json.loads(out.out)
    assert isinstance(suspects, list) and len(suspects) == 5 and out.err == ""
    keys = {"image", "path", "label", "predicted", "confidence", "loss", "split", "reviewed"}
    assert all(set(s) == keys for s in suspects)
    assert [s["loss"] for s in suspects] == sorted((s["loss"] for s in suspects), reverse=True)
    assert {s["image"] for s in suspects[:3]} == set(wrong)
    first, second = suspects[0], suspects[1]
    assert cli.main(["dataset", "relabel", name, first["image"], "--to", first["predicted"]]) == 0
    assert cli.main(["dataset", "exclude", name, second["image"]]) == 0
    capsys.readouterr()
    assert cli.main(["review", "--run", run_id, "--json", *runs]) == 0
    out = capsys.readouterr()
    ids = [s["image"] for s in json.loads(out.out)]
    assert first["image"] not in ids and second["image"] not in ids
    assert out.err.strip() == (
        f"warning: 1 image the run trained on are no longer in use (excluded or removed): "
        f"{second['image']}"
    )
    assert cli.main(["review", "--run", run_id, "--top", "3", *runs]) == 0
    text = capsys.readouterr().out
    assert f"edits go to dataset {name!r}" in text and "method:" in text
    assert text.count("\n") >= 5 and wrong and suspects[2]["image"] in text
    assert cli.main(["review", "--run", run_id, "--edit-target", *runs]) == 0
    assert capsys.readouterr().out.startswith(f"{name}\t")
    assert cli.main(["dataset", "keep", name, suspects[2]["image"]]) == 0
    capsys.readouterr()
    assert cli.main(["review", "--run", run_id, "--json", *runs]) == 0
    last = json.loads(capsys.readouterr().out)[-1]
    assert last["image"] == suspects[2]["image"] and last["reviewed"] is True


def test_errors_unknown_run_unfinished_run_bad_top(
    store: RunStore, managed: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    runs = ["--runs-dir", str(store.root)]
    assert cli.main(["review", "--run", "nope", *runs]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No run 'nope'") and err.count("\n") == 1
    stopped = fake_run(store, f"dataset:{managed[0]}", status="stopped")
    assert cli.main(["review", "--run", stopped, *runs]) == 1
    err = capsys.readouterr().err
    assert "is stopped, not completed" in err and err.count("\n") == 1
    assert f"python -m core resume {stopped}" in err
    queued = store.create_run(RunConfig(data=f"dataset:{managed[0]}"))
    with pytest.raises(StudioError, match="is queued, not completed") as info:
        rv.review_run(store, queued)
    assert "python -m core" not in str(info.value)  # core speaks the dashboard's words
    assert cli.main(["review", "--run", queued, *runs]) == 1
    err = capsys.readouterr().err
    assert f"python -m core show {queued}" in err and "core wait" not in err
    failed = fake_run(store, f"dataset:{managed[0]}", status="failed")
    assert cli.main(["review", "--run", failed, *runs]) == 1
    err = capsys.readouterr().err
    assert f"its error: python -m core show {failed}" in err and "core wait" not in err
    done = fake_run(store, f"dataset:{managed[0]}")
    assert cli.main(["review", "--run", done, "--top", "0", *runs]) == 1
    assert "--top must be at least 1, got 0" in capsys.readouterr().err
    Path(store.get_run(done)["model_path"] or "").unlink()
    with pytest.raises(StudioError, match="has no saved model"):
        rv.review_run(store, done)


def test_dataset_gone_since_the_run_is_a_clear_error(
    store: RunStore, managed: tuple[str, dict[str, str]]
) -> None:
    run_id = fake_run(store, f"dataset:{managed[0]}")
    shutil.rmtree(datasets.dataset_path(managed[0]))
    with pytest.raises(StudioError, match="colours"):
        rv.review_run(store, run_id)


# --------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_a_real_run_end_to_end(store: RunStore, tmp_path: Path) -> None:
    """Train (Lite0, 32 px), review, relabel what it found, retrain with retrain_config."""
    from core.training.jobs import JobQueue

    wrong = make_pictures(tmp_path / "shots", per_class=12)
    jobs = JobQueue(store.root)
    config = RunConfig(
        data=str(tmp_path / "shots"), image_size=32, epochs=3, augment=False, batch_size=16
    )
    run_id = jobs.submit(config)
    assert jobs.wait(run_id, timeout=300) == "completed"
    review = rv.review_run(store, run_id, top=2 * len(wrong))
    found = [s.image for s in review.suspects if s.image in wrong]
    assert len(found) >= 0.8 * len(wrong)
    assert "embedding cache" in review.method
    name, made = rv.edit_target(store, run_id)
    assert made
    with datasets.open_dataset(name) as ds:
        for image in found:
            ds.relabel([image], wrong[image])
    fixed = jobs.submit(rv.retrain_config(store, run_id))
    assert jobs.wait(fixed, timeout=300) == "completed"
    assert store.result(fixed)["config"]["data"] == f"dataset:{name}"
    left = {s.image for s in rv.review_run(store, fixed).suspects[: len(wrong)]}
    assert not left & set(found)


@pytest.mark.slow
def test_review_of_a_fine_tuned_run_uses_the_saved_model_features(
    store: RunStore, managed: tuple[str, dict[str, str]]
) -> None:
    from core.training.jobs import JobQueue

    jobs = JobQueue(store.root)
    config = RunConfig(
        data=f"dataset:{managed[0]}", mode="fine_tuning", image_size=32, epochs=1,
        fine_tune_epochs=1, augment=False, batch_size=16,
    )  # fmt: skip
    run_id = jobs.submit(config)
    assert jobs.wait(run_id, timeout=300) == "completed"
    review = rv.review_run(store, run_id)
    assert "saved model's base" in review.method and len(review.suspects) == 30


@pytest.mark.slow
def test_the_acceptance_figure_quick(tmp_path: Path) -> None:
    """Figure 11 on a small photo set: swapped labels found, numbers reported."""
    from core.bench import run as bench

    result = bench.run_bench(out_dir=tmp_path / "bench", quick=True, figures=[11])
    figure = result["figures"]["review"]
    assert figure["swapped"] >= 1 and figure["top"] == 2 * figure["swapped"]
    assert figure["recall"] >= 0.8 and figure["met"] in (True, False)
    assert figure["before_best_val_accuracy"] is not None
    assert figure["second_review_s"] < figure["review_s"]
    assert "11. review:" in bench.format_bench(result)
    assert not [n for n in datasets.dataset_names() if n.startswith("bench-review")]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_review_flags_files_changed_or_added_since_the_run(
    store: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder edited after training: a replaced training file is scored as it is now and
    flagged ``changed``; a file added since is listed as new, not scored as a training image."""
    pics = tmp_path / "pics"
    make_pictures(pics, swapped=0)
    run_id = fake_run(store, str(pics))
    split = store.split(run_id)
    assert split is not None
    replaced = split.absolute(split.train[0])
    _picture(Path(replaced), CLASSES[split.train[0].label], seed=999)  # other content
    added = pics / "red" / "red_new.png"
    _picture(added, CLASSES["red"], seed=998)

    review = rv.review_run(store, run_id)
    by_path = {s.path: s for s in review.suspects}
    assert str(added) not in by_path and str(added.resolve()) not in by_path
    assert review.new_images == [sha256_file(added)[:12]]
    assert by_path[replaced].changed and by_path[replaced].split == "train"
    assert review.changed_images == [by_path[replaced].image]
    assert [s.path for s in review.suspects if s.changed] == [replaced]
    assert len(review.suspects) == 30  # what the run trained on, no more
    assert by_path[replaced].to_json()["changed"] is True

    runs = ["--runs-dir", str(store.root)]
    assert cli.main(["review", "--run", run_id, *runs]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("warning: 1 image new since the run trained") for line in err)
    assert any(line.startswith("warning: 1 image changed since the run trained") for line in err)


def test_review_prints_invisible_characters_in_names_and_paths_escaped(
    store: RunStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = str(tmp_path / "sh\u202eots")
    make_pictures(Path(source))
    run_id = fake_run(store, source)
    assert cli.main(["review", "--run", run_id, "--top", "3", "--runs-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "\u202e" not in out and "sh\\u202eots" in out
    assert (
        cli.main(["review", "--run", run_id, "--edit-target", "--runs-dir", str(store.root)]) == 0
    )
    out = capsys.readouterr().out
    assert "\u202e" not in out and out.startswith("shots\t")  # the copy's name drops it
