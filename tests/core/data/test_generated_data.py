"""Generated benchmark data (N classes x M images): layout, reuse, determinism, learnability."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from core.data import generated, load_dataset
from core.errors import DataError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_generated_folder_has_every_class_and_image_and_is_reused(home: Path) -> None:
    calls: list[tuple[int, int]] = []
    folder = generated.generated_path(3, 4, size=32, progress=lambda d, t: calls.append((d, t)))
    assert folder.is_relative_to(home) and folder.name == "3x4-32px"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "class 000",
        "class 001",
        "class 002",
    ]
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 12
    with Image.open(files[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    assert calls[-1] == (12, 12)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = generated.generated_path(3, 4, size=32, progress=lambda d, t: calls.append((d, t)))
    assert again == folder and calls[-1] == (12, 12) and len(calls) == 1  # reused, not rebuilt
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    index = load_dataset(str(folder), val_split=0.25, seed=0)  # a source like any folder
    assert index.class_names == ["class 000", "class 001", "class 002"]
    assert len(index.train_paths) + len(index.val_paths) == 12


def test_images_are_deterministic_and_a_class_does_not_depend_on_the_count() -> None:
    first = list(generated.generated_items(2, 3, size=24))
    assert first == list(generated.generated_items(2, 3, size=24))
    more = list(generated.generated_items(5, 3, size=24))
    assert more[:6] == first  # classes 0 and 1 the same in a 5-class set
    assert len({data for *_, data in more}) == 15  # no two images alike
    assert generated.class_names(1000)[:2] == ["class 000", "class 001"]
    assert generated.class_names(1001)[-1] == "class 1000"


def test_classes_are_learnable_but_not_trivial() -> None:
    """A linear model on 8x8 thumbnails beats chance (5 %) by far on 20 classes, yet errs."""
    x, y = [], []
    for label, _name, data in generated.generated_items(20, 12, size=32):
        with Image.open(io.BytesIO(data)) as image:
            x.append(np.asarray(image.resize((8, 8)), dtype=np.float32).ravel() / 255.0)
        y.append(label)
    features, labels = np.asarray(x), np.asarray(y)
    train = np.arange(len(labels)) % 12 < 8
    model = LogisticRegression(max_iter=2000).fit(features[train], labels[train])
    accuracy = model.score(features[~train], labels[~train])
    assert 0.5 < accuracy < 1.0, accuracy


@pytest.mark.parametrize(("classes", "per_class", "size"), [(1, 5, 64), (3, 0, 64), (3, 5, 8)])
def test_impossible_sizes_are_refused(home: Path, classes: int, per_class: int, size: int) -> None:
    with pytest.raises(DataError, match="expected at least 2 classes"):
        generated.generated_path(classes, per_class, size)
    assert not (home / "cache").exists() or not any((home / "cache").rglob("*.jpg"))
