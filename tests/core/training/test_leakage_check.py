"""The leakage check before training (the Data page's): only from cached features."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.runs.leakage import relative
from tests.helpers import cropped_twin, smooth_picture


@pytest.mark.slow  # imports TensorFlow (the embedding cache's key)
def test_data_page_check_runs_only_on_cached_features(tmp_path) -> None:
    """Before any run the check is skipped (a feature pass would be training's cost); once the
    features of the split's files are cached it finds the planted twin across the split."""
    from core.config import RunConfig
    from core.data import load_dataset
    from core.training.embeddings import cache_key, store_cached
    from core.training.leakage import leakage_before_training

    for c, name in enumerate(("ants", "bees")):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(10):
            Image.fromarray(smooth_picture(100 * c + i)).save(folder / f"{i}.png")
    twin = Image.open(io.BytesIO(cropped_twin(smooth_picture(0))))  # ants/0.png's twin
    twin.convert("RGB").save(tmp_path / "ants" / "9.png")
    config = RunConfig(data=str(tmp_path), backbone="efficientnet_lite0", image_size=32)
    data = load_dataset(str(tmp_path), val_split=0.5, seed=2)
    found = leakage_before_training(config, data)
    assert found.leakage is None and "no cached efficientnet_lite0 features" in found.reason

    paths = [*data.train_paths, *data.val_paths]
    # The server's key (no Keras imported) is the trainer's.
    from core.files import sha256_file
    from core.training.feature_cache import source_features_key

    shas = [sha256_file(p) for p in paths]
    assert source_features_key(config, 32, shas) == cache_key(config, 32, paths)
    features = np.random.default_rng(0).normal(size=(len(paths), 8)).astype(np.float32)
    store_cached(cache_key(config, 32, paths), features)
    found = leakage_before_training(config, data)
    assert found.leakage is not None and "cached efficientnet_lite0 features" in found.reason
    across = {"ants/0.png", "ants/9.png"}
    split_of = {relative(p, data.root): "val" for p in data.val_paths}
    assert len({split_of.get(p, "train") for p in across}) == 2  # seed 2 puts them apart
    pairs = {frozenset((p["val"], p["train"])) for p in found.leakage["pairs"]}
    assert frozenset(across) in pairs


@pytest.mark.slow
def test_a_completed_feature_run_is_evaluated_from_its_features_and_decoded_once(
    tmp_path, monkeypatch
) -> None:
    """As a feature-extraction run completes, its evaluation reads no image (the head on the
    pass's features: the run's own last validation accuracy), and its leakage check keeps the
    pictures' signatures by content, so checking again decodes none."""
    import core.data.phash
    import core.runs.evaluate
    from core.config import RunConfig
    from core.data import load_dataset
    from core.runs.evaluate import EVALUATION_FILE, evaluate_run
    from core.runs.leakage import LEAKAGE_FILE
    from core.training.jobs import JobQueue
    from core.training.leakage import check_leakage

    def no_images(*_args, **_kwargs):
        raise AssertionError("the evaluation read the validation images again")

    monkeypatch.setattr(core.runs.evaluate, "predict_paths", no_images)
    config = RunConfig(data="builtin:textures", backbone="efficientnet_lite0", image_size=32,
                       epochs=2, augment=False)  # fmt: skip
    queue = JobQueue(tmp_path / "runs")
    run_id = queue.submit(config)
    assert queue.wait(run_id, timeout=300) == "completed"
    store, folder = queue.store, queue.store.run_dir(run_id)
    assert (folder / EVALUATION_FILE).is_file() and (folder / LEAKAGE_FILE).is_file()
    evaluation = evaluate_run(store, run_id)
    assert evaluation["from_cache"] is True
    last = store.result(run_id)["history"]["val_accuracy"][-1]
    assert evaluation["accuracy"] == pytest.approx(last, abs=0.5 / evaluation["val_images"])

    data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    with pytest.raises(ValueError, match="probabilities of shape"):
        evaluate_run(store, run_id, force=True, data=data, probabilities=np.zeros((1, 1)))

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("a picture was decoded again")

    monkeypatch.setattr(core.data.phash, "signature_file", no_decoding)
    again = check_leakage(store, run_id, force=True)
    assert again["val_images"] == evaluation["val_images"]
