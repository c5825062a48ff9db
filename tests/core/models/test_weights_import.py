"""``weights import`` / ``weights list``: files carried in by hand, checked, then used offline."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from core.errors import BackboneError, ConfigError
from core.models import imported_weights, weights_store
from core.models.backbones import get_backbone, weights_identity
from tests.helpers import cli, last_json, offline_env

VGG16_NOTOP = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
MOBILENET_V2_NOTOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process and the CLI's subprocesses share one new home and one empty Keras cache."""
    for key, value in offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_a_file_keras_does_not_download_needs_its_backbone(home: Path) -> None:
    path = home / "mine.weights.h5"
    path.write_bytes(b"not read")
    with pytest.raises(ConfigError, match="Choose the backbone") as info:
        weights_store.import_weights(path)
    assert info.value.settings == ("backbone",)
    with pytest.raises(ConfigError, match="not found"):
        weights_store.import_weights(home / "absent.h5", backbone="mobilenet_v2")


def test_keras_names_are_recognised_with_their_backbone() -> None:
    spec, top = weights_store.recognise_keras_file(VGG16_NOTOP) or (None, None)
    assert spec is not None and (spec.name, top) == ("vgg16", False)
    spec, top = weights_store.recognise_keras_file("efficientnetb1.h5") or (None, None)
    assert spec is not None and (spec.name, top) == ("efficientnet_b1", True)
    assert weights_store.recognise_keras_file("my_vgg16.h5") is None


@pytest.mark.slow
def test_pins_are_read_from_keras_own_code() -> None:
    from keras.src.applications import mobilenet_v2, resnet, vgg16

    pin = weights_store.keras_pin(get_backbone("vgg16"), VGG16_NOTOP, include_top=False)
    assert pin.file_hash and pin.file_hash in inspect.getsource(vgg16)
    assert pin.url.endswith("/" + VGG16_NOTOP)
    name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    pin = weights_store.keras_pin(get_backbone("resnet50"), name, include_top=False)
    assert pin.file_hash and pin.file_hash in inspect.getsource(resnet)
    pin = weights_store.keras_pin(get_backbone("mobilenet_v2"), MOBILENET_V2_NOTOP, False)
    assert pin.file_hash is None and "file_hash" not in inspect.getsource(mobilenet_v2)


@pytest.mark.slow
def test_a_vgg16_file_with_other_bytes_is_refused_in_one_line(home: Path) -> None:
    import keras

    path = home / VGG16_NOTOP
    keras.applications.VGG16(include_top=False, weights=None).save_weights(home / "vgg.weights.h5")
    (home / "vgg.weights.h5").rename(path)  # random weights under Keras' pinned ImageNet name
    proc = cli("weights", "import", str(path), check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not the genuine Keras VGG16 ImageNet file" in lines[0] and "MD5" in lines[0]
    assert "6d6bbae143d832006294945121d1f1fc" in lines[0]  # the hash vgg16.py pins
    assert not (home / "keras" / "models" / VGG16_NOTOP).exists()


@pytest.mark.slow
def test_a_file_for_another_architecture_names_the_first_mismatch(home: Path) -> None:
    import keras

    path = home / "mobile.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None).save_weights(path)
    with pytest.raises(BackboneError) as info:
        weights_store.import_weights(path, backbone="vgg16")
    assert "does not load into VGG16" in str(info.value)
    assert "layer 'block1_conv1'" in str(info.value) and "(3, 3, 3, 64)" in str(info.value)
    assert imported_weights.list_imported() == []


@pytest.mark.slow
def test_an_unpinned_keras_file_is_load_checked_placed_and_marked_unverified(home: Path) -> None:
    tf_keras = pytest.importorskip("tf_keras")  # requirements-dev-nodeps.txt

    path = home / MOBILENET_V2_NOTOP
    model = tf_keras.applications.MobileNetV2(include_top=False, weights=None)
    model.save_weights(str(path))  # Keras 2's legacy .h5, as keras.applications serves it
    item = weights_store.import_weights(path)
    assert (item.backbone, item.kind, item.verified) == ("mobilenet_v2", "imagenet", False)
    assert "unverified" in item.note
    assert Path(item.path) == home / "keras" / "models" / MOBILENET_V2_NOTOP
    spec = get_backbone("mobilenet_v2")
    assert spec.weights_status() == "cached" and spec.availability() == "imported"
    rows = {r["name"]: r for r in weights_store.available_weights()}
    assert "(unverified)" in rows[MOBILENET_V2_NOTOP]["origin"]


@pytest.mark.slow
def test_imported_weights_train_offline_by_path_and_by_name(home: Path) -> None:
    import keras

    path = home / "mine.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None).save_weights(path)
    item = last_json(cli("weights", "import", str(path), "--backbone", "mobilenet_v2", "--json"))
    assert (item["name"], item["backbone"], item["verified"]) == ("mine", "mobilenet_v2", False)
    # The name and the original path are the same weights: the embedding cache keys agree.
    assert weights_identity("mobilenet_v2", "mine") == weights_identity("mobilenet_v2", str(path))
    assert weights_identity("mobilenet_v2", "mine") == "file:" + item["sha256"]
    listed = last_json(cli("weights", "list", "--json"))
    assert {(r["backbone"], r["name"]) for r in listed} >= {("mobilenet_v2", "mine")}
    backbones = {b["name"]: b for b in last_json(cli("backbones", "--json"))}
    assert backbones["mobilenet_v2"]["availability"] == "imported"
    assert backbones["vgg16"]["availability"] == "needs network"
    assert backbones["efficientnet_lite2"]["availability"] == "offline"

    train = ["train", "--data", "builtin:textures", "--backbone", "mobilenet_v2",
             "--image-size", "32", "--epochs", "1", "--no-augment", "--json"]  # fmt: skip
    for weights in (str(path), "mine"):
        result = last_json(cli(*train, "--weights", weights))
        assert result["status"] == "completed" and result["config"]["weights"] == weights


def test_an_upload_keeps_its_own_file_name_only(home: Path) -> None:
    with pytest.raises(ConfigError, match="Expected a file name"):
        weights_store.import_upload("../evil.h5", b"x", backbone="vgg16")
    assert weights_store.wanted_file("efficientnet_lite1") is None  # bundled: nothing to carry


@pytest.mark.slow
def test_an_offline_failure_names_the_file_to_import(home: Path) -> None:
    from core.errors import WeightsUnavailableError
    from core.models.backbones import build_base

    with pytest.raises(WeightsUnavailableError) as info:
        build_base(get_backbone("vgg16"), "imagenet", 32)  # nothing cached, no network
    text = str(info.value)
    assert f"import that file ({VGG16_NOTOP})" in text and "storage.googleapis.com" in text
    pin = weights_store.wanted_file("vgg16", 32)
    assert pin is not None and pin.file_name == VGG16_NOTOP and pin.url in text
