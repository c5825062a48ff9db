"""Augmented views in the feature cache: their pass, their key, one view per image per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import RunConfig
from core.errors import ConfigError
from core.runs.store import COMPLETED
from core.training import embeddings
from core.training.head_fit import epoch_rows, fit_head
from core.training.jobs import JobQueue
from core.training.model import compile_model
from tests.helpers import blobs as _blobs
from tests.helpers import small_head as _head
from tests.helpers import write_pngs

AUGMENTED = RunConfig(data="builtin:faces", image_size=64, epochs=2, augment=True)


def test_the_key_of_views_grows_by_the_augmentations_the_views_and_the_seed(tmp_path: Path) -> None:
    paths = write_pngs(tmp_path, 3, side=16)
    plain = embeddings.cache_key(AUGMENTED, 64, paths)
    views = embeddings.cache_key(AUGMENTED, 64, paths, views=4)
    assert None not in (plain, views) and plain != views
    # Without views the augmentation settings change nothing: the clean pass is shared.
    assert embeddings.cache_key(AUGMENTED.with_changes(augment=False), 64, paths) == plain
    for changes in ({"seed": 7}, {"augmentations": ("flip",)}, {"augment_views": 8}):
        changed = AUGMENTED.with_changes(**changes)
        key = embeddings.cache_key(changed, 64, paths, views=changed.augment_views)
        assert key != views, changes
    # The head and schedule do not change the views.
    other_head = AUGMENTED.with_changes(lr=0.1, dense_units=8, epochs=9)
    assert embeddings.cache_key(other_head, 64, paths, views=4) == views


def test_augment_views_is_validated() -> None:
    for bad in (1, 65, "4", True):
        with pytest.raises(ConfigError, match="Augmented views"):
            RunConfig(augment_views=bad).validate()  # type: ignore[arg-type]


def test_views_line_up_with_their_images(tmp_path: Path) -> None:
    from core.data.pipeline import views_dataset

    # Left half dark, right half bright, a distinct level per image: a flip is recognisable.
    paths = []
    for i in range(5):
        pixels = np.zeros((8, 8, 3), np.uint8)
        pixels[:, :4], pixels[:, 4:] = 10 * i, 200 + 10 * i
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    batches = list(views_dataset(paths, 8, 4, augmentations=("flip",), views=6, seed=3))
    rows = np.concatenate([b.numpy() for b in batches])
    assert rows.shape == (30, 8, 8, 3)
    flipped = 0
    for row_index, row in enumerate(rows):
        i = row_index % len(paths)  # row v * n + i is a view of image i
        left, right = row[:, :4].mean(), row[:, 4:].mean()
        assert {round(left), round(right)} == {10 * i, 200 + 10 * i}
        flipped += left > right
    assert 0 < flipped < 30, "some views flipped, some not"


def test_each_epoch_trains_every_image_once_as_one_of_its_views() -> None:
    n, views = 50, 4
    seen = np.zeros((views, n), int)
    for epoch in range(40):
        rows = epoch_rows(42, epoch, n, views)
        assert sorted(rows % n) == list(range(n))  # every image once
        seen[rows // n, rows % n] += 1
        np.testing.assert_array_equal(rows, epoch_rows(42, epoch, n, views))  # seeded
    assert (seen.sum(axis=0) == 40).all() and (seen > 0).mean() > 0.95  # views drawn at random
    # One view: the order alone, as before views existed.
    order = np.random.default_rng([42, 3]).permutation(n)
    np.testing.assert_array_equal(epoch_rows(42, 3, n), order)


def test_identical_views_train_exactly_like_plain_features() -> None:
    x, y = _blobs(60, 1)
    xv, yv = _blobs(20, 2)
    histories = []
    for train in (x, np.stack([x, x, x])):
        import keras

        keras.utils.set_random_seed(0)
        head = _head()
        compile_model(head, 1e-2)
        histories.append(fit_head(head, (train, y), (xv, yv), batch_size=16, epochs=3, seed=5))
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="rows per view"):
        fit_head(head, (np.stack([x, x])[:, :10], y), (xv, yv), batch_size=16, epochs=1)


def test_a_default_run_trains_on_cached_views_and_a_second_run_reuses_them(
    tmp_path: Path,
) -> None:
    queue = JobQueue(tmp_path / "runs")
    first = queue.submit(AUGMENTED)
    assert queue.wait(first, timeout=600) == COMPLETED
    again = queue.submit(AUGMENTED.with_changes(lr=3e-3, dense_units=64))
    assert queue.wait(again, timeout=600) == COMPLETED
    other_seed = queue.submit(AUGMENTED.with_changes(seed=7))
    assert queue.wait(other_seed, timeout=600) == COMPLETED
    cold, warm, reseeded = (queue.store.result(r) for r in (first, again, other_seed))
    n_train, n_all = cold["train_images"], cold["train_images"] + cold["val_images"]
    # The image itself plus 3 augmented views of each training image, and each validation image.
    assert cold["stage"]["total"] == n_all + 3 * n_train and cold["stage"]["views"] == 4
    assert cold["stage"]["done"] == cold["stage"]["total"]
    assert cold["phases"][0]["feature_cache"] is True
    assert (cold["stage"]["cached"], warm["stage"]["cached"]) == (False, True)
    assert reseeded["stage"]["cached"] is False  # another seed: other views
    assert cold["best_val_accuracy"] >= 0.8
    assert "features" in cold["timings"]


@pytest.mark.slow
def test_the_feature_pass_converts_the_runtime_once_and_then_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.training import litert

    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(litert.RUNTIME_ENV, "auto")
    queue = JobQueue(tmp_path / "runs")
    small = AUGMENTED.with_changes(augment=False, image_size=48)
    # Too few images to pay for a conversion: Keras, and nothing converted.
    monkeypatch.setattr(embeddings, "CONVERT_MIN_ROWS", 10_000)
    first = queue.submit(small)
    assert queue.wait(first, timeout=600) == COMPLETED
    assert queue.store.result(first)["stage"]["runtime"] == "keras"
    assert not list(litert.runtime_dir().glob("*.tflite"))
    # Enough images: converted once (its seconds recorded), checked, used.
    monkeypatch.setattr(embeddings, "CONVERT_MIN_ROWS", 0)
    second = queue.submit(small.with_changes(seed=1))
    assert queue.wait(second, timeout=600) == COMPLETED
    result = queue.store.result(second)
    assert result["stage"]["runtime"] == "litert" and result["timings"]["convert_runtime"] > 0
    assert len(list(litert.runtime_dir().glob("*.tflite"))) == 1
    # Already converted: any run at that size uses it, however small, without converting.
    monkeypatch.setattr(embeddings, "CONVERT_MIN_ROWS", 10_000)
    third = queue.submit(small.with_changes(seed=2, augment=True))
    assert queue.wait(third, timeout=600) == COMPLETED
    again = queue.store.result(third)
    assert again["stage"]["runtime"] == "litert" and "convert_runtime" not in again["timings"]
    assert again["best_val_accuracy"] >= 0.8
