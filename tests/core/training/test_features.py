"""Feature cache: when it applies, what its key depends on, bounds, results equal to no cache."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import RunConfig
from core.data.scan_cache import content_hashes
from core.runs.store import COMPLETED
from core.training import embeddings as features
from core.training.jobs import JobQueue
from core.training.sources import FEATURES, input_path
from tests.helpers import write_pngs

LITE = RunConfig(data="builtin:faces", image_size=64, epochs=2, augment=False)


def test_cache_applies_to_feature_extraction_with_or_without_augmentation() -> None:
    # The rule is core.training.sources.input_path's (the feature cache's own reason is gone).
    assert input_path(LITE).kind == FEATURES
    augmented = input_path(LITE.with_changes(augment=True))
    assert augmented.kind == FEATURES and "augmented copies" in augmented.reason
    fine = input_path(LITE.with_changes(mode="fine_tuning"))
    assert fine.kind != FEATURES and "fine_tuning" in fine.reason
    off = input_path(LITE.with_changes(feature_cache="off"))
    assert off.kind != FEATURES and "feature cache is off" in off.reason and "--" not in off.reason


def test_key_covers_everything_that_changes_features(tmp_path: Path) -> None:
    paths = write_pngs(tmp_path, 3, side=16)
    key = features.cache_key(LITE, 64, paths)
    assert key is not None
    # The head, learning rate and epochs do not change features: same key.
    assert features.cache_key(LITE.with_changes(lr=0.1, dense_units=8, epochs=9), 64, paths) == key
    # Everything else does.
    assert features.cache_key(LITE, 96, paths) != key
    assert features.cache_key(LITE.with_changes(backbone="mobilenet_v2"), 64, paths) != key
    assert features.cache_key(LITE, 64, paths[:2]) != key
    assert features.cache_key(LITE, 64, paths[::-1]) != key
    Image.new("RGB", (16, 16), "white").save(paths[0])  # same name, new content
    assert features.cache_key(LITE, 64, paths) != key
    # Random weights have nothing to reuse; a weights file is identified by its content.
    assert features.cache_key(LITE.with_changes(weights="none"), 64, paths) is None
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"one")
    one = features.cache_key(LITE.with_changes(weights=str(weights)), 64, paths)
    weights.write_bytes(b"two")
    assert features.cache_key(LITE.with_changes(weights=str(weights)), 64, paths) != one


def test_store_load_and_size_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.ones((10, 4), np.float32)
    features.store_cached("a" * 32, a)
    np.testing.assert_array_equal(features.load_cached("a" * 32), a)
    assert features.load_cached("b" * 32) is None
    size = (features.embedding_cache_dir() / ("a" * 32 + ".npy")).stat().st_size
    monkeypatch.setattr(features, "MAX_CACHE_BYTES", int(size * 1.5))
    features.store_cached("c" * 32, a)  # over the bound: the least recently used entry goes
    assert features.load_cached("a" * 32) is None
    np.testing.assert_array_equal(features.load_cached("c" * 32), a)


def test_a_later_store_is_written_once_waited_for_and_a_failed_one_only_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    gate = threading.Event()
    real = features.store_cached

    def held(key: str, values: np.ndarray) -> None:
        gate.wait(10)  # the caller goes on while the write waits
        real(key, values)

    monkeypatch.setattr(features, "store_cached", held)
    features.store_cached_later("d" * 32, a)
    assert features.load_cached("d" * 32) is None  # not written yet: the caller was not held up
    gate.set()
    features.wait_for_stores()
    np.testing.assert_array_equal(features.load_cached("d" * 32), a)

    def full(key: str, values: np.ndarray) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features, "store_cached", full)
    features.store_cached_later("e" * 32, a)
    features.wait_for_stores()  # does not raise: the cache only saves time
    assert features.load_cached("e" * 32) is None
    assert "features were not cached" in capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # Start from an empty embedding cache so the first cached run really is cold.
    for entry in features.embedding_cache_dir().glob("*.npy"):
        entry.unlink()
    queue = JobQueue(tmp_path_factory.mktemp("feature-runs"))
    ids = {
        "off": queue.submit(LITE.with_changes(feature_cache="off")),
        "cold": queue.submit(LITE),
        "warm": queue.submit(LITE.with_changes(lr=3e-3, dense_units=64)),
    }
    results = {}
    for name, run_id in ids.items():
        assert queue.wait(run_id, timeout=600) == COMPLETED
        results[name] = queue.store.result(run_id)
    return {"queue": queue, **results}


@pytest.mark.slow
def test_cached_training_matches_the_uncached_path(runs: dict) -> None:
    off, cold = runs["off"], runs["cold"]
    assert off["phases"][0]["feature_cache"] is False
    assert cold["phases"][0]["feature_cache"] is True
    # Same architecture and parameter counts, comparable accuracy.
    assert cold["phases"][0]["trainable_params"] == off["phases"][0]["trainable_params"]
    assert cold["phases"][0]["non_trainable_params"] == off["phases"][0]["non_trainable_params"]
    assert cold["best_val_accuracy"] >= 0.9 and off["best_val_accuracy"] >= 0.9
    assert abs(cold["best_val_accuracy"] - off["best_val_accuracy"]) <= 0.1
    assert len(cold["history"]["val_accuracy"]) == 2


@pytest.mark.slow
def test_second_run_reuses_the_embeddings(runs: dict) -> None:
    assert runs["cold"]["stage"]["cached"] is False
    assert runs["warm"]["stage"]["cached"] is True
    assert runs["warm"]["stage"]["done"] == runs["warm"]["stage"]["total"] == 200


@pytest.mark.slow
def test_a_run_keys_its_features_by_its_recorded_split_as_the_files_digests_would(
    runs: dict,
) -> None:
    """The run hands its split's digests to the cache key (no ``stat`` per file): the entry is
    under the key anyone computes from the files (review, the leakage check, the CLI)."""
    from core.data import load_dataset

    data = load_dataset(LITE.data, val_split=LITE.val_split, seed=LITE.seed)
    paths = [*data.train_paths, *data.val_paths]
    split = runs["queue"].store.split(runs["cold"]["run_id"])
    assert split is not None and split.digests() == content_hashes(paths)
    assert features.load_cached(features.cache_key(LITE, 64, paths)) is not None


@pytest.mark.slow
def test_saved_model_of_a_cached_run_takes_images(runs: dict) -> None:
    from core.runs.predict import load_run
    from core.runs.store import RunStore

    result = runs["cold"]
    store = RunStore(Path(result["run_dir"]).parents[1])
    model = load_run(store, result["run_id"]).model
    root = Path(result["dataset"]["root"])
    images = [root / "face" / name for name in sorted((root / "face").iterdir())[:4]]
    from core.data.images import load_rgb

    batch = np.stack([load_rgb(p, 64) for p in images]).astype(np.float32)
    probs = np.asarray(model(batch, training=False))
    assert probs.shape == (4, 2)
    # The classifier on images equals the trained head on the cached features of those images.
    pooled = np.asarray(
        __import__("keras").Model(model.inputs, model.get_layer("avg_pool").output)(batch)
    )
    head = [model.get_layer(n) for n in ("head_dropout", "head_dense", "predictions")]
    x = pooled
    for layer in head:
        x = layer(x, training=False)
    np.testing.assert_allclose(np.asarray(x), probs, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cached_head_reports_one_batch_record_per_epoch_covering_every_step(runs: dict) -> None:
    cold = runs["cold"]
    steps = -(-cold["train_images"] // LITE.batch_size)
    batches = runs["queue"].store.batches(cold["run_id"])
    assert [b["step"] for b in batches] == [steps, steps]
    assert [b["global_step"] for b in batches] == [steps, 2 * steps]
    assert all(b["images_per_s"] > 0 for b in batches)


@pytest.mark.slow  # builds a Keras model
def test_a_runtime_pass_reads_the_same_pixels_as_the_keras_pass(tmp_path: Path) -> None:
    import keras

    from core.errors import DataError

    paths = write_pngs(tmp_path, 37, side=20)  # one batch of 32 and one of 5
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    seen: list[tuple[int, ...]] = []

    def runtime(batch: np.ndarray) -> np.ndarray:  # the same function as the Keras model
        seen.append(batch.shape)
        assert batch.dtype == np.float32
        return batch.mean(axis=(1, 2))

    progress: list[tuple[int, int]] = []
    got = features.forward_once(
        model, paths, 16, stage=lambda d, t: progress.append((d, t)), pick=lambda _b: runtime
    )
    keras_side = features.forward_once(model, paths, 16)  # tf.data and Keras
    np.testing.assert_allclose(got, keras_side, rtol=1e-5)
    assert seen == [(32, 16, 16, 3), (5, 16, 16, 3)] and progress[-1] == (37, 37)

    asked: list[int] = []  # a pick that declines is asked once; Keras runs the pass
    declined = features.forward_once(model, paths, 16, pick=lambda _b: asked.append(1))
    np.testing.assert_allclose(declined, keras_side, rtol=1e-6)
    assert asked == [1]

    Path(paths[35]).unlink()  # gone since the scan: said so, in the second batch
    with pytest.raises(DataError, match="disappeared after the dataset scan"):
        features.forward_once(model, paths, 16, pick=lambda _b: runtime)
