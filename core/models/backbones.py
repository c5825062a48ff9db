"""Typed backbone registry, in the spirit of timm's pretrained configs.

Each entry knows its Keras constructor, input sizes, preprocessing family, feature width, parameter
count, where its last block starts (the default fine-tuning depth) and where its ImageNet
weights come from. ``tests/core/models/test_backbones.py`` checks this metadata against a real
forward pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import BackboneError, WeightsUnavailableError

__all__ = [
    "AVAILABLE_IMPORTED",
    "AVAILABLE_NEEDS_IMPORT",
    "AVAILABLE_NEEDS_NETWORK",
    "AVAILABLE_OFFLINE",
    "DEFAULT_BACKBONE",
    "KERAS_WEIGHTS_BASE",
    "OFFLINE_STATUSES",
    "REGISTRY",
    "SOURCE_BUNDLED",
    "SOURCE_IMPORTED",
    "SOURCE_KERAS",
    "STATUS_BUNDLED",
    "STATUS_CACHED",
    "STATUS_IMPORTED",
    "STATUS_NEEDS_NETWORK",
    "STATUS_NOT_IMPORTED",
    "TEACHABLE_MACHINE",
    "TEACHABLE_MACHINE_ALPHA",
    "BackboneSpec",
    "build_base",
    "check_image_size",
    "default_unfreeze",
    "get_backbone",
    "imported_pretrained",
    "keras_models_dir",
    "last_block_start",
    "list_backbones",
    "weights_identity",
]

# Where ImageNet weights come from.
SOURCE_KERAS = "keras"  # keras.applications downloads them into ~/.keras/models on first use
SOURCE_BUNDLED = "bundled"  # shipped inside an installed Python package: works offline
SOURCE_IMPORTED = "imported"  # only what the user imported (a Teachable Machine project's trunk)

# What `weights_status` answers.
STATUS_BUNDLED = "bundled"
STATUS_CACHED = "cached"
STATUS_NEEDS_NETWORK = "needs network"
STATUS_IMPORTED = "imported"  # SOURCE_IMPORTED backbones, once something was imported
STATUS_NOT_IMPORTED = "not imported"

# What the user is told about a backbone's weights (``availability``).
AVAILABLE_OFFLINE = "offline"  # bundled, or in Keras' cache
AVAILABLE_IMPORTED = "imported"  # weights someone imported (``weights import``) are here
AVAILABLE_NEEDS_NETWORK = "needs network"
AVAILABLE_NEEDS_IMPORT = "needs import"  # a SOURCE_IMPORTED backbone with nothing imported yet
OFFLINE_STATUSES = (STATUS_BUNDLED, STATUS_CACHED, STATUS_IMPORTED)

TEACHABLE_MACHINE = "teachable_machine"
TEACHABLE_MACHINE_ALPHA = 0.35  # the MobileNetV2 width Teachable Machine's image projects use

KERAS_WEIGHTS_BASE = "https://storage.googleapis.com/"  # host keras.applications downloads from


def _keras_app(name: str) -> Callable[..., Any]:
    """Resolve ``keras.applications.<name>`` lazily, so importing the registry stays cheap."""

    def construct(**kwargs: Any) -> Any:
        import keras

        return getattr(keras.applications, name)(**kwargs)

    construct.__name__ = name
    construct.__qualname__ = f"keras.applications.{name}"
    return construct


def _lite(variant: str) -> Callable[..., Any]:
    """The EfficientNet-Lite ``variant``'s constructor, imported lazily like ``_keras_app``."""

    def construct(**kwargs: Any) -> Any:
        from core.models.efficientnet_lite import EfficientNetLite

        return EfficientNetLite(variant, **kwargs)

    construct.__name__ = construct.__qualname__ = f"EfficientNetLite[{variant}]"
    return construct


def _teachable_machine(**kwargs: Any) -> Any:
    """MobileNetV2 at Teachable Machine's width (an ``alpha`` argument overrides it)."""
    import keras

    kwargs.setdefault("alpha", TEACHABLE_MACHINE_ALPHA)
    return keras.applications.MobileNetV2(**kwargs)


@dataclass(frozen=True)
class BackboneSpec:
    """Metadata of one backbone; ``constructor`` follows keras.applications' signature."""

    name: str
    display_name: str
    family: str
    constructor: Callable[..., Any] = field(repr=False, compare=False)
    default_size: int
    min_size: int
    preprocessing: str  # a core.models.layers.PixelNormalize mode
    feature_width: int
    params_millions: float  # of the headless base
    last_block: str  # "prefix:NAME" (first layer named NAME...) or "after:NAME" (layers after NAME)
    imagenet_source: str = SOURCE_KERAS
    imagenet_files: tuple[str, ...] = ()  # file names keras.applications caches (headless)
    description: str = ""

    def weights_status(self) -> str:
        """Whether ImageNet weights are available right now: bundled, cached or needs network.

        A ``SOURCE_IMPORTED`` backbone's pretrained weights are the latest imported file for it:
        imported or not imported.
        """
        if self.imagenet_source == SOURCE_IMPORTED:
            return STATUS_IMPORTED if imported_pretrained(self) is not None else STATUS_NOT_IMPORTED
        if self.imagenet_source == SOURCE_BUNDLED:
            from core.models.efficientnet_lite import is_available

            # Bundled means "shipped by an installed package" (or already converted here).
            if is_available(self.name):
                return STATUS_BUNDLED
            return STATUS_NEEDS_NETWORK
        models = keras_models_dir()
        if any((models / f).is_file() for f in self.imagenet_files):
            return STATUS_CACHED
        return STATUS_NEEDS_NETWORK

    def works_offline(self) -> bool:
        """Whether ``weights="imagenet"`` (its pretrained weights) needs no network."""
        return self.weights_status() in OFFLINE_STATUSES

    def availability(self) -> str:
        """What works without a network: offline (bundled/cached), imported or needs network."""
        status = self.weights_status()
        if status == STATUS_BUNDLED:
            return AVAILABLE_OFFLINE
        if status == STATUS_NOT_IMPORTED:
            return AVAILABLE_NEEDS_IMPORT
        from core.models.imported_weights import imported_for

        if imported_for(self.name):
            return AVAILABLE_IMPORTED
        return AVAILABLE_OFFLINE if status == STATUS_CACHED else AVAILABLE_NEEDS_NETWORK

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, as printed by ``python -m core backbones --json``."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "family": self.family,
            "default_size": self.default_size,
            "min_size": self.min_size,
            "preprocessing": self.preprocessing,
            "feature_width": self.feature_width,
            "params_millions": self.params_millions,
            "imagenet_source": self.imagenet_source,
            "weights_status": self.weights_status(),
            "offline": self.works_offline(),
            "availability": self.availability(),
            "description": self.description,
        }


def keras_models_dir() -> Path:
    """Where keras.applications caches weights: ``$KERAS_HOME/models``, else ~/.keras/models."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "models"


def _spec(**kwargs: Any) -> BackboneSpec:
    return BackboneSpec(**kwargs)


_MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)

_SPECS: tuple[BackboneSpec, ...] = (
    *(
        _spec(
            name=f"efficientnet_lite{n}",
            display_name=f"EfficientNet-Lite{n} (offline)",
            family="efficientnet_lite",
            constructor=_lite(f"efficientnet_lite{n}"),
            default_size=size,
            min_size=32,
            preprocessing="lite",
            feature_width=1280,
            params_millions=params,
            last_block="prefix:block7a_",
            imagenet_source=SOURCE_BUNDLED,
            description=f"EfficientNet-{scaled} layout without squeeze-excite, ReLU6; ImageNet "
            "weights ship with a pip package, so it works with no network.",
        )
        for n, size, params, scaled in (
            (0, 224, 3.41, "B0"),
            (1, 240, 4.19, "B1"),
            (2, 260, 4.87, "B2"),
        )
    ),
    _spec(
        name="vgg16",
        display_name="VGG16",
        family="vgg",
        constructor=_keras_app("VGG16"),
        default_size=224,
        min_size=32,
        preprocessing="caffe",
        feature_width=512,
        params_millions=14.71,
        last_block="prefix:block5_",
        imagenet_files=("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        description="The classic transfer-learning backbone: simple, large, slow on CPU.",
    ),
    _spec(
        name="vgg19",
        display_name="VGG19",
        family="vgg",
        constructor=_keras_app("VGG19"),
        default_size=224,
        min_size=32,
        preprocessing="caffe",
        feature_width=512,
        params_millions=20.02,
        last_block="prefix:block5_",
        imagenet_files=("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        description="VGG16 with three more conv layers.",
    ),
    *(
        _spec(
            name=f"resnet{depth}",
            display_name=f"ResNet{depth}",
            family="resnet",
            constructor=_keras_app(f"ResNet{depth}"),
            default_size=224,
            min_size=32,
            preprocessing="caffe",
            feature_width=2048,
            params_millions=params,
            last_block="prefix:conv5_block3_",
            imagenet_files=(f"resnet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5",),
            description=f"Residual network, {depth} layers deep.",
        )
        for depth, params in ((50, 23.59), (101, 42.66), (152, 58.37))
    ),
    _spec(
        name="inception_v3",
        display_name="InceptionV3",
        family="inception",
        constructor=_keras_app("InceptionV3"),
        default_size=299,
        min_size=75,
        preprocessing="tf",
        feature_width=2048,
        params_millions=21.80,
        last_block="after:mixed9",
        imagenet_files=("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        description="Multi-branch inception blocks; expects 299 px.",
    ),
    *(
        _spec(
            name=f"efficientnet_b{b}",
            display_name=f"EfficientNetB{b}",
            family="efficientnet",
            constructor=_keras_app(f"EfficientNetB{b}"),
            default_size=size,
            min_size=32,
            preprocessing="builtin",
            feature_width=width,
            params_millions=params,
            last_block="prefix:block7a_",
            imagenet_files=(f"efficientnetb{b}_notop.h5",),
            description="Compound-scaled; rescales 0-255 input itself.",
        )
        for b, size, width, params in (
            (0, 224, 1280, 4.05),
            (1, 240, 1280, 6.58),
            (2, 260, 1408, 7.77),
        )
    ),
    _spec(
        name="mobilenet_v2",
        display_name="MobileNetV2",
        family="mobilenet",
        constructor=_keras_app("MobileNetV2"),
        default_size=224,
        min_size=32,
        preprocessing="tf",
        feature_width=1280,
        params_millions=2.26,
        last_block="prefix:block_16_",
        imagenet_files=tuple(
            f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{r}_no_top.h5"
            for r in _MOBILENET_V2_ROWS
        ),
        description="Lightweight inverted-residual network for mobile.",
    ),
    _spec(
        name="mobilenet_v3_small",
        display_name="MobileNetV3 Small",
        family="mobilenet",
        constructor=_keras_app("MobileNetV3Small"),
        default_size=224,
        min_size=32,
        preprocessing="builtin",
        feature_width=576,
        params_millions=0.94,
        last_block="prefix:expanded_conv_10_",
        imagenet_files=("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",),
        description="Smallest and fastest; rescales 0-255 input itself.",
    ),
    _spec(
        name="mobilenet_v3_large",
        display_name="MobileNetV3 Large",
        family="mobilenet",
        constructor=_keras_app("MobileNetV3Large"),
        default_size=224,
        min_size=32,
        preprocessing="builtin",
        feature_width=960,
        params_millions=3.00,
        last_block="prefix:expanded_conv_14_",
        imagenet_files=("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",),
        description="Fast mobile network; rescales 0-255 input itself.",
    ),
    _spec(
        name=TEACHABLE_MACHINE,
        display_name="Teachable Machine",
        family="mobilenet",
        constructor=_teachable_machine,
        default_size=224,
        min_size=32,
        preprocessing="tf",
        feature_width=1280,
        params_millions=0.41,
        last_block="prefix:block_16_",
        imagenet_source=SOURCE_IMPORTED,
        description="The trunk of an imported Teachable Machine project (MobileNetV2, width "
        "0.35): its pretrained weights are the latest project imported.",
    ),
)

REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def imported_pretrained(spec: BackboneSpec) -> Path | None:
    """The latest imported weights file of a ``SOURCE_IMPORTED`` backbone, if any."""
    from core.models.imported_weights import imported_for

    found = imported_for(spec.name)
    return Path(found[-1].path) if found else None


DEFAULT_BACKBONE = "efficientnet_lite0"


def list_backbones() -> list[BackboneSpec]:
    """Every registered backbone, the offline default first."""
    return list(REGISTRY.values())


def get_backbone(name: str) -> BackboneSpec:
    """The spec called ``name``; a clear error listing the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise BackboneError(
            f"Unknown backbone {name!r}. Available: {', '.join(REGISTRY)}. "
            "List them with `python -m core backbones`."
        ) from None


def check_image_size(spec: BackboneSpec, image_size: int) -> None:
    """Refuse input sizes the backbone cannot take."""
    if image_size < spec.min_size:
        raise BackboneError(
            f"Image size {image_size} px is below {spec.name}'s minimum of {spec.min_size} px. "
            f"Use an image size of {spec.min_size} px or more (its default is "
            f"{spec.default_size}).",
            settings=("image_size",),
        )


def _offline_message(spec: BackboneSpec, detail: str) -> str:
    url = re.search(r"https?://\S+?\.h5", detail)
    carry = (
        f", or download {url.group(0)} on a machine with internet and import that file "
        f"({url.group(0).rsplit('/', 1)[1]})"
        if url
        else ""
    )
    return (
        f"ImageNet weights for {spec.name} are not cached and could not be downloaded "
        f"(no network?): {detail}. Fix: connect to the internet once (Keras caches them in "
        f"{keras_models_dir()}){carry}, or set the weights to none (random init) or to a local "
        f"weights file, or use the offline backbone {DEFAULT_BACKBONE}."
    )


def build_base(spec: BackboneSpec, weights: str, image_size: int) -> Any:
    """The headless base (no preprocessing, no pooling) for raw-preprocessed input.

    ``weights`` is ``"imagenet"``, ``"none"``, a path to a local weights file or the name of
    imported weights (``core.models.weights_store``).
    """
    from core.models.imported_weights import resolve_weights

    check_image_size(spec, image_size)
    weights = resolve_weights(weights)
    if weights == "imagenet" and spec.imagenet_source == SOURCE_IMPORTED:
        pretrained = imported_pretrained(spec)
        if pretrained is None:
            raise WeightsUnavailableError(
                f"{spec.display_name} has no pretrained weights yet: they come from an imported "
                "Teachable Machine project. Import one (its keras_model.h5 and labels.txt), or "
                "choose another backbone.",
                settings=("weights", "backbone"),
            )
        weights = str(pretrained)
    if weights == "none":
        keras_weights: str | None = None
    elif weights == "imagenet":
        keras_weights = "imagenet"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(
                f"Weights file {weights!r} not found. Expected 'imagenet', 'none', the path of "
                "an existing .h5/.weights.h5 file for the chosen backbone or the name of "
                "imported weights."
            )
        keras_weights = str(path)
    try:
        return spec.constructor(
            include_top=False, weights=keras_weights, input_shape=(image_size, image_size, 3)
        )
    except BackboneError:
        raise
    except Exception as exc:  # keras raises bare Exception / OSError for fetch failures
        text = str(exc)
        if keras_weights == "imagenet" and (
            "URL fetch failure" in text or "urlopen" in text or isinstance(exc, OSError)
        ):
            raise WeightsUnavailableError(
                _offline_message(spec, text.splitlines()[0]), settings=("weights", "backbone")
            ) from exc
        if keras_weights not in (None, "imagenet"):
            raise BackboneError(
                f"Could not load weights file {weights!r} into {spec.name}: "
                f"{text.splitlines()[0]}. "
                f"Expected a headless (include_top=False) {spec.display_name} weights file."
            ) from exc
        raise


def last_block_start(spec: BackboneSpec, base: Any) -> int:
    """Index in ``base.layers`` where the backbone's last block starts."""
    kind, _, marker = spec.last_block.partition(":")
    names = [layer.name for layer in base.layers]
    for i, name in enumerate(names):
        if kind == "prefix" and name.startswith(marker):
            return i
        if kind == "after" and name == marker:
            return i + 1
    raise BackboneError(f"{spec.name}: no layer matches last_block {spec.last_block!r}")


def default_unfreeze(spec: BackboneSpec, base: Any) -> int:
    """How many trailing layers make up the last block (the default ``--unfreeze``)."""
    return len(base.layers) - last_block_start(spec, base)


def weights_identity(backbone: str, weights: str) -> str | None:
    """A stable id of a base's weights; ``None`` when they are random (nothing to reuse).

    Part of the embedding cache's and the frozen-trunk cache's keys: features computed with
    other weights must never be reused.
    """
    from core.files import sha256_file
    from core.models.imported_weights import resolve_weights

    spec = get_backbone(backbone)
    if weights == "none":
        return None
    if weights != "imagenet":
        return "file:" + sha256_file(resolve_weights(weights))
    if spec.imagenet_source == SOURCE_IMPORTED:
        pretrained = imported_pretrained(spec)
        return "file:" + sha256_file(pretrained) if pretrained is not None else None
    if spec.imagenet_source == SOURCE_BUNDLED:
        from core.models.efficientnet_lite import CONVERTER_VERSION, get_variant

        return f"bundled:{get_variant(spec.name).pth_sha256}:{CONVERTER_VERSION}"
    cached = [keras_models_dir() / f for f in spec.imagenet_files]
    sizes = [f"{p.name}:{p.stat().st_size}" for p in cached if p.is_file()]
    return "keras:" + ",".join(sizes)
