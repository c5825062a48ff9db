"""The converted LiteRT runtime of the feature pass: cached, checked against Keras, never trusted
blindly (a disagreeing or broken runtime falls back to Keras with a reason)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.config import RunConfig
from core.errors import ConfigError
from core.training import litert
from core.training.embeddings import feature_extractor
from core.training.model import build_model

SIZE = 64
IDENTITY: dict[str, object] = {"test": "random-lite0", "image_size": SIZE}


@pytest.fixture(scope="module")
def extractor_model():
    built = build_model(
        RunConfig(backbone="efficientnet_lite0", weights="none", image_size=SIZE), num_classes=2
    )
    return feature_extractor(built)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    rng = np.random.default_rng(0)
    # Smooth images (a gradient plus noise), closer to photos than pure noise.
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    base = ramp[None, :, None, None] * rng.uniform(0.2, 1.0, (6, 1, 1, 3)).astype(np.float32)
    noise = rng.normal(0, 20, (6, SIZE, SIZE, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.float32)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    monkeypatch.delenv(litert.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(litert, "_verdicts", {})  # a fresh process
    return tmp_path


@pytest.fixture(scope="module")
def first_use(extractor_model, sample, tmp_path_factory: pytest.TempPathFactory):
    """The first ``runtime_extractor`` call in a fresh home: the module's one real conversion."""
    home = tmp_path_factory.mktemp("home")
    stages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFER_STUDIO_HOME", str(home))
        mp.delenv(litert.RUNTIME_ENV, raising=False)
        mp.setattr(litert, "_verdicts", {})
        extractor, info = litert.runtime_extractor(extractor_model, IDENTITY, sample, stages.append)
        listing = _cached(litert.runtime_dir())
    return home, extractor, info, stages, listing


@pytest.fixture(scope="module")
def converted_file(first_use) -> Path:
    """The converted file of ``first_use``, for tests that only need some converted file."""
    home = first_use[0]
    return home / "cache" / "runtimes" / f"{litert.runtime_key(IDENTITY)}.tflite"


def _seed(converted_file: Path, identity: dict[str, object] = IDENTITY) -> Path:
    """Put ``converted_file`` where the cache looks for ``identity``'s runtime."""
    path = litert.runtime_dir() / f"{litert.runtime_key(identity)}.tflite"
    shutil.copyfile(converted_file, path)
    return path


def _cached(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_converts_once_then_reuses_with_matching_features(
    first_use, home, extractor_model, sample, converted_file
):
    first_home, extractor, info, stages, listing = first_use
    assert extractor is not None, info
    assert info["runtime"] == "litert" and info["converted"] is True and info["convert_s"] > 0
    assert info["min_cosine"] >= litert.MIN_COSINE
    assert stages == ["converting"]
    assert converted_file.parent == first_home / "cache" / "runtimes"
    assert listing == [converted_file.name]  # one file, no temporaries left

    features = extractor(sample)
    expected = np.asarray(extractor_model([sample], training=False))
    assert features.shape == expected.shape and features.dtype == np.float32
    assert litert.min_cosine(expected, features) >= litert.MIN_COSINE
    # Batch sizes change (resize), batches over RUN_BATCH are split: same features per image.
    np.testing.assert_allclose(extractor(sample[:1]), features[:1], rtol=1e-4, atol=1e-4)
    big = np.concatenate([sample] * 6)  # 36 images: batches of RUN_BATCH, then a shorter one
    np.testing.assert_allclose(extractor(big)[-6:], features, rtol=1e-4, atol=1e-4)

    # A second call (another process: the file is checked) and a third (same process: the
    # verdict is kept) reuse the file: no conversion.
    _seed(converted_file)
    stages = []
    for _ in range(2):
        again, info2 = litert.runtime_extractor(extractor_model, IDENTITY, sample, stages.append)
        assert again is not None and info2["converted"] is False and stages == []
        assert info2["min_cosine"] >= litert.MIN_COSINE
    assert _cached(litert.runtime_dir()) == [converted_file.name]
    # Another identity is another file.
    assert litert.runtime_key({**IDENTITY, "image_size": 96}) != litert.runtime_key(IDENTITY)


def test_a_disagreeing_runtime_is_rejected_and_remembered(
    home, extractor_model, sample, converted_file, monkeypatch
):
    _seed(converted_file)
    real_call = litert.LiteRTExtractor.__call__

    def wrong(self, batch):
        out = real_call(self, batch)
        return out[::-1].copy()  # right shape, wrong image order

    monkeypatch.setattr(litert.LiteRTExtractor, "__call__", wrong)
    monkeypatch.setattr(
        litert, "convert", lambda model, target: shutil.copyfile(converted_file, target)
    )
    extractor, info = litert.runtime_extractor(extractor_model, IDENTITY, sample)
    assert extractor is None
    assert info["runtime"] == "keras" and "differ" in info["reason"]
    assert info["min_cosine"] < litert.MIN_COSINE
    key = litert.runtime_key(IDENTITY)
    # The cached file was converted afresh once, then rejected: the record stays, the file goes.
    assert _cached(litert.runtime_dir()) == [f"{key}.rejected.json"]

    # A later process falls back at once: no conversion, same reason.
    litert._verdicts.clear()

    def no_conversion(model, target):
        raise AssertionError("reconverted a rejected runtime")

    monkeypatch.setattr(litert, "convert", no_conversion)
    stages: list[str] = []
    extractor, again = litert.runtime_extractor(extractor_model, IDENTITY, sample, stages.append)
    assert extractor is None and again["reason"] == info["reason"] and stages == []


def test_conversion_failure_falls_back_with_a_reason(home, extractor_model, sample, monkeypatch):
    from core.errors import StudioError

    def failing(model, target):
        raise StudioError("TFLite conversion failed (ConverterError: unsupported op)")

    monkeypatch.setattr(litert, "convert", failing)
    extractor, info = litert.runtime_extractor(extractor_model, IDENTITY, sample)
    assert extractor is None and "unsupported op" in info["reason"]
    assert (litert.runtime_dir() / f"{litert.runtime_key(IDENTITY)}.rejected.json").is_file()


def test_keras_choice_never_converts(home, extractor_model, sample, monkeypatch):
    monkeypatch.setenv(litert.RUNTIME_ENV, "keras")
    monkeypatch.setattr(litert, "convert", lambda *a: pytest.fail("converted"))
    assert litert.runtime_choice() == "keras"
    extractor, info = litert.runtime_extractor(extractor_model, IDENTITY, sample)
    assert extractor is None and info["runtime"] == "keras" and "keras" in info["reason"]
    assert not (home / "cache" / "runtimes").exists() or _cached(litert.runtime_dir()) == []
    monkeypatch.setenv(litert.RUNTIME_ENV, "fastest")
    with pytest.raises(ConfigError, match="auto"):
        litert.runtime_choice()
    monkeypatch.setenv(litert.RUNTIME_ENV, " Auto ")
    assert litert.runtime_choice() == "auto"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_cached_file_is_replaced(
    home, extractor_model, sample, converted_file, monkeypatch, damage
):
    path = _seed(converted_file)
    data = path.read_bytes()
    path.write_bytes(b"not a flatbuffer" if damage == "garbage" else data[: len(data) // 2])
    monkeypatch.setattr(
        litert, "convert", lambda model, target: shutil.copyfile(converted_file, target)
    )
    stages: list[str] = []
    extractor, info = litert.runtime_extractor(extractor_model, IDENTITY, sample, stages.append)
    assert extractor is not None, info
    assert info["converted"] is True and stages == ["converting"]
    assert path.read_bytes() == data


def test_measure_rates_reports_both_runtimes(home, extractor_model, sample, converted_file):
    extractor = litert.LiteRTExtractor(converted_file, num_threads=1)
    rates = litert.measure_rates(extractor_model, sample, reps=1, extractor=extractor)
    assert rates["images"] == len(sample)
    assert rates["keras_images_per_s"] > 0 and rates["litert_images_per_s"] > 0
    assert rates["ratio"] == pytest.approx(
        rates["litert_images_per_s"] / rates["keras_images_per_s"], rel=0.01
    )
    assert rates["min_cosine"] >= litert.MIN_COSINE
