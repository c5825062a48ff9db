"""The Data page's leakage check without TensorFlow: the embedding cache entry read with numpy,
perceptual hashes cached by content, the result stored until the data changes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, cropped_twin, smooth_picture


def _planted(folder: Path) -> str:
    """Two classes of ten distinct pictures; ``ants/9.png`` is a cropped, re-encoded twin of
    ``ants/0.png`` (seed 2 and a 0.5 split put them on both sides)."""
    for c, name in enumerate(("ants", "bees")):
        (folder / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(smooth_picture(100 * c + i)).save(folder / name / f"{i}.png")
    twin = Image.open(io.BytesIO(cropped_twin(smooth_picture(0))))
    twin.convert("RGB").save(folder / "ants" / "9.png")
    return str(folder)


def _cache_features(config, data) -> None:
    """Fill the embedding cache entry of ``data``'s split as a run would (random features)."""
    from core.files import sha256_file
    from core.training.feature_cache import embedding_cache_dir, source_features_key

    paths = [*data.train_paths, *data.val_paths]
    key = source_features_key(config, 32, [sha256_file(p) for p in paths])
    features = np.random.default_rng(0).normal(size=(len(paths), 8)).astype(np.float32)
    np.save(embedding_cache_dir() / f"{key}.npy", features)


def test_a_second_check_decodes_nothing(tmp_path, monkeypatch) -> None:
    """The first check hashes every picture and finds the planted twin; the result is stored;
    forced again it finds the same pairs without decoding a single picture."""
    from core.config import RunConfig
    from core.data import load_dataset, phash
    from core.training import source_leakage as check

    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    data = load_dataset(_planted(tmp_path / "data"), val_split=0.5, seed=2)
    config = RunConfig(data=data.source, backbone="efficientnet_lite0", image_size=32)
    plan = check.plan_check(config, data)
    assert check.finished_check(plan) is not None  # skipped: nothing cached yet
    assert "no cached efficientnet_lite0 features" in check.finished_check(plan).reason
    _cache_features(config, data)

    decoded: list[str] = []
    real = phash.signature_file
    monkeypatch.setattr(phash, "signature_file", lambda p: decoded.append(str(p)) or real(p))
    plan = check.plan_check(config, data)
    assert plan.to_hash == 20 and check.finished_check(plan) is None  # still to run
    first = check.run_check(plan)
    assert len(decoded) == 20 and first.leakage is not None
    pairs = {frozenset((p["val"], p["train"])) for p in first.leakage["pairs"]}
    assert frozenset({"ants/0.png", "ants/9.png"}) in pairs

    decoded.clear()
    again = check.leakage_before_training(config, data)  # the stored result
    assert again.leakage == first.leakage and decoded == []
    plan = check.plan_check(config, data)
    assert plan.to_hash == 0
    check.forget_check(plan)
    assert check.finished_check(plan) is None
    assert check.run_check(plan).leakage == first.leakage and decoded == []


def test_the_stored_result_follows_the_data(tmp_path, monkeypatch) -> None:
    """A file changed since the check is another result key (and another feature entry)."""
    from core.config import RunConfig
    from core.data import load_dataset
    from core.training import source_leakage as check

    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    root = _planted(tmp_path / "data")
    config = RunConfig(data=root, backbone="efficientnet_lite0", image_size=32)
    data = load_dataset(root, val_split=0.5, seed=2)
    before = check.plan_check(config, data)
    Image.fromarray(smooth_picture(77)).save(Path(root) / "bees" / "3.png")
    after = check.plan_check(config, data)
    assert after.result_key != before.result_key and after.feature_key != before.feature_key
    assert after.to_hash == 20


def test_the_background_task_stores_the_result_the_page_reads(tmp_path, monkeypatch) -> None:
    """The task kind (run here in-process) reports progress and leaves the result for the
    page's next look."""
    from core.config import RunConfig
    from core.data import load_dataset
    from core.training import source_leakage as check

    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    root = _planted(tmp_path / "data")
    config = RunConfig(data=root, backbone="efficientnet_lite0", image_size=32)
    data = load_dataset(root, val_split=0.5, seed=2)
    _cache_features(config, data)
    updates: list[dict] = []
    initial = {"source": root, "val_split": 0.5, "seed": 2, "backbone": config.backbone,
               "weights": config.weights, "image_size": 32}  # fmt: skip
    final = check.check_task(initial)(updates.append, lambda: False)
    plan = check.plan_check(config, data)
    assert final["result_key"] == plan.result_key and final["pairs"] >= 1
    assert updates[-1] == {"done": 20, "total": 20}
    found = check.finished_check(plan)
    assert found is not None and found.leakage is not None
    assert found.leakage["val_images_with_train_twin"] >= 1


@pytest.mark.slow  # a Python process of its own
def test_the_check_imports_no_tensorflow(tmp_path) -> None:
    """Run as the server runs it: planted twin found, and neither TensorFlow nor Keras in
    ``sys.modules`` afterwards."""
    root = _planted(tmp_path / "data")
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from core.config import RunConfig
        from core.data import load_dataset
        from core.files import sha256_file
        from core.training.feature_cache import embedding_cache_dir, source_features_key
        from core.training.source_leakage import leakage_before_training

        data = load_dataset({root!r}, val_split=0.5, seed=2)
        config = RunConfig(data=data.source, backbone="efficientnet_lite0", image_size=32)
        paths = [*data.train_paths, *data.val_paths]
        key = source_features_key(config, 32, [sha256_file(p) for p in paths])
        np.save(embedding_cache_dir() / f"{{key}}.npy", np.eye(len(paths), 8, dtype=np.float32))
        found = leakage_before_training(config, data)
        print(json.dumps({{
            "pairs": [[p["val"], p["train"]] for p in found.leakage["pairs"]],
            "loaded": [m for m in ("tensorflow", "keras") if m in sys.modules],
        }}))
        """
    )
    env = {**os.environ, "TRANSFER_STUDIO_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert {frozenset(p) for p in out["pairs"]} >= {frozenset({"ants/0.png", "ants/9.png"})}
