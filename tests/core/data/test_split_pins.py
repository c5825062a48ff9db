"""Split pins of a managed dataset: an image pinned to a side stays there in every run's split
(``stratified_split``, ``load_dataset``, hence the split a run records), as an undoable edit."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.cli as cli
from core.data.datasets import create, open_dataset
from core.data.index import load_dataset, stratified_split
from core.errors import DataError
from tests.helpers import cropped_twin, smooth_picture


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(folder))
    return folder


def test_a_pinned_image_never_lands_in_validation() -> None:
    labels = [0] * 10 + [1] * 10
    keys = [f"{i:02d}.png" for i in range(20)]
    for seed in range(20):
        train0, val0 = stratified_split(labels, 0.3, seed, keys)
        assert stratified_split(labels, 0.3, seed, keys, {}) == (train0, val0)  # no pins
        pins = {i: "train" for i in val0[:2]} | {train0[0]: "val"}
        train, val = stratified_split(labels, 0.3, seed, keys, pins)
        assert not set(val) & {i for i, s in pins.items() if s == "train"}
        assert train0[0] in val
        assert Counter(labels[i] for i in val) == Counter(labels[i] for i in val0)  # stratified
        assert sorted(train + val) == list(range(20))
        assert stratified_split(labels, 0.3, seed, keys, pins) == (train, val)  # deterministic


def _pictures(folder: Path, seeds: range) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in seeds:
        Image.fromarray(smooth_picture(s)).save(folder / f"{s}.png")
        out.append(folder / f"{s}.png")
    return out


def test_a_pin_survives_reload_is_counted_and_undone(tmp_path: Path) -> None:
    with create("pets") as ds:
        ds.add_images("cats", _pictures(tmp_path / "a", range(5)), create_class=True)
        ds.add_images("dogs", _pictures(tmp_path / "b", range(10, 15)), create_class=True)
        first, second = (i.id for i in ds.images()[:2])
        assert ds.pin([first, second], "train") == [first, second]
        assert ds.pin([first], "train") == []  # already there: nothing to record
    with open_dataset("pets") as ds:  # another connection: stored in the index
        assert ds.pins() == {first: "train", second: "train"}
        shown = ds.show()
        assert shown["pinned"] == {"train": 2, "val": 0}
        assert shown["edits"][-1]["summary"] == "pinned 2 images to training"
        ds.pin([first], None)
        assert ds.pins() == {second: "train"}
        assert ds.undo()["summary"] == "unpinned 1 image"
        assert ds.pins() == {first: "train", second: "train"}
        assert ds.undo()["summary"] == "pinned 2 images to training"
        assert ds.pins() == {}
        with pytest.raises(DataError, match="Unknown split 'test'"):
            ds.pin([first], "test")


def test_the_loaders_split_honours_pins(tmp_path: Path) -> None:
    with create("pets") as ds:
        ds.add_images("cats", _pictures(tmp_path / "a", range(8)), create_class=True)
        ds.add_images("dogs", _pictures(tmp_path / "b", range(10, 18)), create_class=True)
    before = load_dataset("dataset:pets", val_split=0.25, seed=3)
    moved = before.val_paths[0]
    with open_dataset("pets") as ds:
        ds.pin([ds.image_id(moved)], "train")
    after = load_dataset("dataset:pets", val_split=0.25, seed=3)
    assert moved in after.train_paths and moved not in after.val_paths
    assert len(after.val_paths) == len(before.val_paths)  # one other image validates instead
    assert len(set(after.val_paths) - set(before.val_paths)) == 1


def test_the_cli_pins_by_path_and_show_counts_them(tmp_path: Path, capsys) -> None:
    with create("pets") as ds:
        ds.add_images("cats", _pictures(tmp_path / "a", range(3)), create_class=True)
        ds.add_images("dogs", _pictures(tmp_path / "b", range(10, 13)), create_class=True)
        path, other = (i.path for i in ds.images()[:2])
        other_id = ds.images()[1].id
    assert cli.main(["dataset", "pin", "pets", "--train", path, other_id]) == 0
    assert "pinned 2 images to training" in capsys.readouterr().out
    assert cli.main(["dataset", "show", "pets"]) == 0
    assert "2 pinned to training, 0 to validation" in capsys.readouterr().out
    assert cli.main(["dataset", "pin", "pets", "--unpin", other]) == 0
    assert "unpinned 1 image" in capsys.readouterr().out
    assert cli.main(["dataset", "show", "pets", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pinned"] == {"train": 1, "val": 0}
    assert cli.main(["dataset", "pin", "pets", "--val", "nope-nope"]) == 1
    assert "nope-nope" in capsys.readouterr().err


def test_a_moved_twin_leaves_the_next_check(tmp_path: Path) -> None:
    """A planted near-copy across the split is found; pinned (both copies) to training, the
    next split puts them on one side and the check finds no pair of theirs."""
    from core.config import RunConfig
    from core.files import sha256_file
    from core.training.feature_cache import embedding_cache_dir, source_features_key
    from core.training.source_leakage import leakage_before_training

    with create("bugs") as ds:
        ds.add_images("ants", _pictures(tmp_path / "a", range(10)), create_class=True)
        ds.add_images("bees", _pictures(tmp_path / "b", range(100, 110)), create_class=True)
        twins = [(f"twin-{s}.jpg", cropped_twin(smooth_picture(s))) for s in range(10)]
        ds.add_images("ants", twins)  # a twin of every ant: some land across the split
    config = RunConfig(data="dataset:bugs", backbone="efficientnet_lite0", image_size=32)

    def check() -> tuple[object, set[frozenset[str]]]:
        data = load_dataset("dataset:bugs", val_split=0.3, seed=1)
        paths = [*data.train_paths, *data.val_paths]
        key = source_features_key(config, 32, [sha256_file(p) for p in paths])
        features = np.random.default_rng(0).normal(size=(len(paths), 8)).astype(np.float32)
        np.save(embedding_cache_dir() / f"{key}.npy", features)
        found = leakage_before_training(config, data)
        assert found.leakage is not None
        return data, {frozenset((p["val"], p["train"])) for p in found.leakage["pairs"]}

    _data, pairs = check()
    assert pairs
    pair = sorted(pairs, key=sorted)[0]
    with open_dataset("bugs") as ds:
        ids = [Path(rel).stem for rel in pair]
        assert ds.pin(ids, "train") == ids  # "Move to training": both copies
    data, after = check()
    assert pair not in after
    assert set(ids) <= {Path(p).stem for p in data.train_paths}
    assert not {rel for p in after for rel in p} & set(pair)  # neither copy in a pair now
