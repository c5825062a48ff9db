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
