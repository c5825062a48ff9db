"""Grad-CAM on a studio model: shapes, value range, a real (non-uniform) heatmap, the overlay."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import RunConfig
from core.errors import StudioError
from core.models.gradcam import gradcam, jet_colormap

SIZE = 96  # EfficientNet-Lite0 downsamples 32x: a 3 x 3 feature map, enough to localise


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An offline-pretrained model, saved and reloaded safely as the studio's pages load runs."""
    import keras

    import core.models.layers  # noqa: F401  registers PixelNormalize
    from core.training.model import build_model

    keras.utils.set_random_seed(0)  # the head is random: keep the test deterministic
    config = RunConfig(backbone="efficientnet_lite0", weights="imagenet", image_size=SIZE)
    path = tmp_path_factory.mktemp("gradcam") / "model.keras"
    build_model(config, 3).model.save(path)
    return keras.saving.load_model(path, safe_mode=True)


@pytest.fixture(scope="module")
def photo():
    from skimage import data  # ships with the package: a real photo, no download

    return data.chelsea()  # 300 x 451 RGB cat


@pytest.mark.slow
def test_heatmap_at_input_size_in_unit_range_and_not_constant(model, photo):
    from PIL import Image

    image = np.asarray(Image.fromarray(photo).resize((SIZE, SIZE)))
    result = gradcam(model, image)
    heatmap = result["heatmap"]
    assert heatmap.shape == (SIZE, SIZE)
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert heatmap.max() == pytest.approx(1.0, abs=1e-3)  # normalised to its peak
    assert heatmap.std() > 0.05  # it points somewhere
    assert result["feature_map_size"] == (3, 3)
    probs = np.asarray(model(image[None].astype(np.float32), training=False))[0]
    assert result["class_index"] == int(probs.argmax())
    assert result["probability"] == pytest.approx(float(probs.max()), abs=1e-4)
    assert result["overlay"].shape == (SIZE, SIZE, 3) and result["overlay"].dtype == np.uint8


@pytest.mark.slow
def test_any_image_size_gives_maps_at_that_size(model, photo):
    result = gradcam(model, photo, class_index=2)
    assert result["class_index"] == 2
    assert result["heatmap"].shape == photo.shape[:2]
    assert result["overlay"].shape == photo.shape
    gray = gradcam(model, photo.mean(axis=2).astype(np.uint8))
    assert gray["overlay"].shape == photo.shape


@pytest.mark.slow
def test_overlay_blends_colormap_over_the_image(model, photo):
    image = photo[:SIZE, :SIZE]
    untouched = gradcam(model, image, alpha=0.0)
    np.testing.assert_array_equal(untouched["overlay"], image)
    full = gradcam(model, image, alpha=1.0)
    np.testing.assert_array_equal(full["overlay"], jet_colormap(full["heatmap"]))


def test_jet_colormap_runs_blue_to_red():
    colours = jet_colormap(np.array([0.0, 0.5, 1.0]))
    assert colours.shape == (3, 3) and colours.dtype == np.uint8
    low, mid, high = colours.astype(int)
    assert low[2] > 100 and low[0] == 0 and low[1] == 0  # dark blue
    assert mid[1] == 255  # green in the middle
    assert high[0] > 100 and high[1] == 0 and high[2] == 0  # dark red


@pytest.mark.slow
def test_bad_inputs(model, photo):
    with pytest.raises(StudioError, match="out of range"):
        gradcam(model, photo, class_index=3)
    with pytest.raises(StudioError, match="HxWx3"):
        gradcam(model, np.zeros((4, 4, 4, 3), dtype=np.uint8))
