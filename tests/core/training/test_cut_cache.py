"""Fine-tuning on activations cached at the freeze cut: same model, same maths, only faster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from core.config import RunConfig
from core.runs.store import COMPLETED
from core.training import cut as cut_cache
from core.training.jobs import JobQueue
from core.training.model import FINE_TUNE_PHASE, build_model, set_phase, unfreeze_count
from core.training.sources import ACTIVATIONS, input_path

MOBILE = RunConfig(
    backbone="mobilenet_v2", weights="none", mode="fine_tuning", data="builtin:textures",
    image_size=32, augment=False, epochs=1, fine_tune_epochs=1, batch_size=16,
)  # fmt: skip
LITE = RunConfig(
    mode="fine_tuning", data="builtin:faces", image_size=64, augment=False, epochs=2,
    fine_tune_epochs=2, batch_size=16, fine_tune_lr=1e-4,
)  # fmt: skip


def test_only_fine_tuning_without_augmentation_and_with_the_cache_on_qualifies() -> None:
    # The config's side of the rule is core.training.sources.input_path's.
    def refused(config: RunConfig) -> str:
        path = input_path(config)
        assert path.kind != ACTIVATIONS
        return path.reason

    assert input_path(MOBILE).kind == ACTIVATIONS
    assert "augmentation" in refused(MOBILE.with_changes(augment=True))
    assert "off" in refused(MOBILE.with_changes(feature_cache="off"))
    for mode in ("feature_extraction", "full_fine_tuning", "scratch"):
        assert mode in refused(MOBILE.with_changes(mode=mode))


@pytest.mark.slow
@pytest.mark.parametrize("config", [MOBILE, LITE], ids=["mobilenet_v2", "efficientnet_lite0"])
def test_the_split_model_computes_what_the_full_model_computes(config: RunConfig) -> None:
    built = build_model(config, 3)
    cut, reason = cut_cache.plan_cut(config, built, images=10)
    assert reason is None and cut is not None
    assert cut.index == len(built.base.layers) - unfreeze_count(config, built)
    x = np.random.default_rng(0).uniform(0, 255, (4, config.image_size, config.image_size, 3))
    x = x.astype(np.float32)
    acts = np.asarray(cut.prefix(x, training=False))
    assert acts.shape == (4, *cut.shape)
    np.testing.assert_allclose(
        np.asarray(cut.classifier(acts, training=False)),
        np.asarray(built.model(x, training=False)),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    # Phase 2 trains exactly what the image pipeline would train: the same weights, shared.
    set_phase(config, built, FINE_TUNE_PHASE)
    full = {id(w) for w in built.model.trainable_weights}
    assert {id(w) for w in cut.classifier.trainable_weights} == full
    assert not any(w.trainable for w in cut.prefix.weights)


@pytest.mark.slow
def test_a_cut_inside_a_residual_block_or_too_much_memory_falls_back(monkeypatch) -> None:
    built = build_model(MOBILE, 3)
    names = [layer.name for layer in built.base.layers]
    inside = len(names) - names.index("block_15_project_BN")  # block_15_add reads block_14_add
    cut, reason = cut_cache.plan_cut(MOBILE.with_changes(unfreeze=inside), built, images=10)
    assert cut is None and "single tensor" in reason
    monkeypatch.setattr(cut_cache, "MAX_ACTIVATION_BYTES", 1000)
    cut, reason = cut_cache.plan_cut(MOBILE, built, images=10)
    assert cut is None and "GiB" in reason


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    queue = JobQueue(tmp_path_factory.mktemp("cut-runs"))
    # Chunks of 16 images: the cut pass writes several.
    before = os.environ.get(cut_cache.CHUNK_ENV)
    os.environ[cut_cache.CHUNK_ENV] = "16"
    try:
        ids = {
            "cut": queue.submit(LITE),
            "images": queue.submit(LITE.with_changes(feature_cache="off")),
        }
        out: dict = {"queue": queue}
        for name, run_id in ids.items():
            assert queue.wait(run_id, timeout=600) == COMPLETED
            out[name] = queue.store.result(run_id)
    finally:
        if before is None:
            os.environ.pop(cut_cache.CHUNK_ENV, None)
        else:
            os.environ[cut_cache.CHUNK_ENV] = before
    yield out


@pytest.mark.slow
def test_the_run_records_where_it_read_from_and_its_activation_store(runs: dict) -> None:
    cut, images = runs["cut"], runs["images"]
    tune = cut["phases"][1]
    assert tune["input"] == "activations" and "augmentation is off" in tune["input_reason"]
    store = tune["activation_store"]
    assert store["memory_mapped"] and store["dtype"] == "float16"
    images_total = cut["train_images"] + cut["val_images"]
    assert store["chunks"] == -(-images_total // 16) and store["chunk_images"] == 16
    assert store["computed_images"] == images_total and store["reused_chunks"] == 0
    assert store["bytes"] > 0
    # Completed: the chunks are deleted (the saved model takes images; nothing reads them).
    assert not (Path(cut["run_dir"]) / cut_cache.ACTIVATION_DIR).exists()
    assert images["phases"][1]["input"] == "images"
    assert "off" in images["phases"][1]["input_reason"]
    assert "activation_store" not in images["phases"][1]


@pytest.mark.slow
def test_a_fine_tuning_run_on_cached_activations_matches_the_image_pipeline(runs: dict) -> None:
    cut, images = runs["cut"], runs["images"]
    assert [p["feature_cache"] for p in cut["phases"]] == [True, False]
    assert [p["activation_cache"] for p in cut["phases"]] == [False, True]
    assert not any(p["feature_cache"] or p["activation_cache"] for p in images["phases"])
    for a, b in zip(cut["phases"], images["phases"], strict=True):
        assert (a["trainable_params"], a["non_trainable_params"]) == (
            b["trainable_params"], b["non_trainable_params"],
        )  # fmt: skip
    assert len(cut["history"]["val_accuracy"]) == 4
    assert cut["best_val_accuracy"] >= 0.9 and images["best_val_accuracy"] >= 0.9
    # The cut pass ran whole during preparation: its timing is recorded once it is done (the
    # run's stage record has moved on since, to the switch to fine-tuning).
    assert cut["timings"] and cut["timings"]["activations"] > 0


@pytest.mark.slow
def test_the_saved_model_takes_images_and_kept_the_frozen_layers(runs: dict) -> None:
    from core.models.backbones import build_base, get_backbone
    from core.runs.predict import load_run
    from core.runs.store import RunStore

    result = runs["cut"]
    store = RunStore(Path(result["run_dir"]).parents[1])
    model = load_run(store, result["run_id"]).model
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    fresh = build_base(get_backbone(LITE.backbone), "imagenet", 64)
    index = len(base.layers) - result["phases"][1]["unfrozen_layers"]
    changed = [
        not all(np.array_equal(a, b) for a, b in zip(t.get_weights(), f.get_weights(), strict=True))
        for t, f in zip(base.layers, fresh.layers, strict=True)
    ]
    assert not any(changed[:index])  # frozen part: still the pretrained weights
    assert any(changed[index:])  # the unfrozen part trained
    root = Path(result["dataset"]["root"])
    from core.data.images import load_rgb

    batch = np.stack([load_rgb(p, 64) for p in sorted((root / "face").iterdir())[:3]])
    probs = np.asarray(model(batch.astype(np.float32), training=False))
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cut", "images"])
def test_batchnorm_keeps_its_imagenet_statistics_through_fine_tuning(runs: dict, name: str) -> None:
    # Keras 3 lets an outer training=True override the base's training=False node; what keeps
    # BN in inference mode is that set_phase leaves every BN layer non-trainable. Guard it.
    from core.models.backbones import build_base, get_backbone
    from core.runs.predict import load_run
    from core.runs.store import RunStore

    result = runs[name]
    store = RunStore(Path(result["run_dir"]).parents[1])
    model = load_run(store, result["run_id"]).model
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    fresh = build_base(get_backbone(LITE.backbone), "imagenet", 64)
    bn = [
        (t, f)
        for t, f in zip(base.layers, fresh.layers, strict=True)
        if isinstance(t, keras.layers.BatchNormalization)
    ]
    assert bn
    for trained, pretrained in bn:
        for a, b in zip(trained.get_weights(), pretrained.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=trained.name)
