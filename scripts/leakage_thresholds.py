"""Measure the leakage check's thresholds on planted twins (numbers in docs/leakage.md).

Distinct pictures: scikit-image's LFW faces (200), the built-in textures (120) and smooth random
colour fields (200). Each gets twins the way near-copies happen: a crop of a few pixels, a JPEG
re-encoding, a resize, and a crop re-encoded. For each kind of twin the script prints the
perceptual-hash distance (``crop_distance``: hashes of the picture and of its crops) and the
centred embedding cosine to its original; for distinct pictures
the smallest hash distance and the largest cosine between any two of them (the false pairs a
threshold would make). Embeddings: EfficientNet-Lite0 (bundled ImageNet weights, 224 px) and the
same network with random weights at 32 px (what the tests train).

    .venv/bin/python scripts/leakage_thresholds.py
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.phash import color_distance, crop_distance, phash_crops


def smooth_field(rng: np.random.Generator, side: int = 96) -> np.ndarray:
    """A distinct picture: random low-frequency colour blobs."""
    small = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC))


def crop(rgb: np.ndarray, px: int) -> np.ndarray:
    im = Image.fromarray(rgb)
    w, h = im.size
    return np.asarray(im.crop((px, px, w - px, h - px)).resize((w, h)))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def resize(rgb: np.ndarray, factor: float) -> np.ndarray:
    im = Image.fromarray(rgb)
    return np.asarray(im.resize((max(8, int(im.width * factor)), max(8, int(im.height * factor)))))


TWINS = {
    "crop 2 px": lambda x: crop(x, 2),
    "crop 4 px": lambda x: crop(x, 4),
    "jpeg q70": lambda x: jpeg(x, 70),
    "resize 0.6": lambda x: resize(x, 0.6),
    "crop 3 px + jpeg q80": lambda x: jpeg(crop(x, 3), 80),
}


def pictures() -> list[np.ndarray]:
    from skimage.data import lfw_subset

    from core.data.builtin import builtin_path
    from core.data.images import load_rgb

    faces = [np.repeat((f * 255).astype(np.uint8)[..., None], 3, axis=2) for f in lfw_subset()]
    faces = [np.asarray(Image.fromarray(f).resize((64, 64))) for f in faces]
    textures = [load_rgb(p) for p in sorted(builtin_path("textures").rglob("*.png"))]
    rng = np.random.default_rng(0)
    return faces + textures + [smooth_field(rng) for _ in range(200)]


def embed(images: list[np.ndarray], weights: str, size: int) -> np.ndarray:
    """Pooled EfficientNet-Lite0 features of ``images`` (kept in the temp folder: a second run
    of the script, to try other thresholds, skips the passes)."""
    cache = Path(tempfile.gettempdir()) / f"leakage-thresholds-{weights}-{size}-{len(images)}.npy"
    if cache.is_file():
        return np.load(cache)
    features = _embed(images, weights, size)
    np.save(cache, features)
    return features


def _embed(images: list[np.ndarray], weights: str, size: int) -> np.ndarray:
    from core.config import RunConfig
    from core.training.embeddings import forward_once
    from core.training.model import build_model, resolve_backbone

    config = RunConfig(backbone="efficientnet_lite0", weights=weights, image_size=size)
    built = build_model(config, 2, resolve_backbone(config))
    import keras

    extractor = keras.Model(built.model.inputs, built.model.get_layer("avg_pool").output)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, im in enumerate(images):
            path = Path(tmp) / f"{i}.png"
            Image.fromarray(im).save(path)
            paths.append(str(path))
        return forward_once(extractor, paths, size)


def centred_unit(f: np.ndarray) -> np.ndarray:
    f = f - f.mean(axis=0)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def rates(bits_twin, cos_twin, bits_distinct, cos_distinct, rule) -> tuple[list[float], int]:
    """Recall per twin kind and false pairs among distinct pictures under ``rule``."""
    recall = [float(rule(b, c).mean()) for b, c in zip(bits_twin, cos_twin, strict=True)]
    upper = np.triu(np.ones_like(bits_distinct, bool), 1)
    return recall, int((rule(bits_distinct, cos_distinct) & upper).sum())


def main() -> None:
    from core.runs.leakage import (
        COLOR_TOLERANCE,
        COSINE,
        COSINE_MAX_BITS,
        COSINE_WITH_HASH,
        HASH_BITS,
        HASH_BITS_WITH_COSINE,
    )

    originals = pictures()
    n = len(originals)
    twins = {name: [make(x) for x in originals] for name, make in TWINS.items()}
    hashes = np.asarray([phash_crops(x) for x in originals], np.uint64)
    distinct_bits = crop_distance(hashes, hashes) + np.eye(n, dtype=np.int64) * 64
    twin_bits = [
        np.diag(crop_distance(hashes, np.asarray([phash_crops(x) for x in ims], np.uint64)))
        for ims in twins.values()
    ]
    colors = np.asarray([x.reshape(-1, 3).mean(axis=0) for x in originals], np.float32)
    distinct_colors = color_distance(colors, colors) + np.eye(n, dtype=np.float32) * 255
    twin_colors = [
        np.diag(color_distance(colors, np.asarray([x.reshape(-1, 3).mean(axis=0) for x in ims])))
        for ims in twins.values()
    ]
    print(f"{n} distinct pictures, {len(twins)} kinds of twin: {', '.join(twins)}")
    for name, diff in zip(twins, twin_colors, strict=True):
        print(f"mean colour difference, twin {name:<22} 95th {np.percentile(diff, 95):.1f}, "
              f"max {diff.max():.1f} (of 255)")  # fmt: skip
    print(
        f"hash bits, distinct pairs: min {distinct_bits.min()}, "
        f"1st percentile {np.percentile(distinct_bits, 1):.0f}"
    )
    for name, bits in zip(twins, twin_bits, strict=True):
        print(
            f"hash bits, twin {name:<22} median {np.median(bits):.0f}, 95th "
            f"{np.percentile(bits, 95):.0f}, max {bits.max()}"
        )
    for weights, size in (("imagenet", 224), ("none", 32)):
        everything = originals + [im for images in twins.values() for im in images]
        unit = centred_unit(embed(everything, weights, size))
        base = unit[:n]
        sims = base @ base.T - np.eye(n) * 2
        twin_cos = [(base * unit[n * (k + 1) : n * (k + 2)]).sum(axis=1) for k in range(len(twins))]
        print(
            f"[{weights} {size}px] cosine, distinct pairs: max {sims.max():.3f}, "
            f"99th percentile {np.percentile(sims, 99):.3f}"
        )
        for name, cos in zip(twins, twin_cos, strict=True):
            print(
                f"[{weights} {size}px] cosine, twin {name:<22} 5th {np.percentile(cos, 5):.3f}, "
                f"median {np.median(cos):.3f}"
            )
        grid = []
        for strict_bits in (4, 6):
            for loose_bits in (10, 12):
                for strict_cos in (0.97, 0.99):
                    for loose_cos in (0.7, 0.8):
                        for cap in (16, 20, 64):

                            def rule(b, c, sb=strict_bits, lb=loose_bits, sc=strict_cos,
                                     lc=loose_cos, cap=cap):  # fmt: skip
                                return (
                                    (b <= sb) | ((c >= sc) & (b <= cap)) | ((b <= lb) & (c >= lc))
                                )

                            recall, false = rates(twin_bits, twin_cos, distinct_bits, sims, rule)
                            grid.append((false, -min(recall), strict_bits, loose_bits,
                                         strict_cos, loose_cos, cap, recall))  # fmt: skip
        for false, _, sb, lb, sc, lc, cap, recall in sorted(grid)[:6]:
            print(
                f"[{weights} {size}px] bits<={sb} | (cos>={sc} & bits<={cap}) | "
                f"(bits<={lb} & cos>={lc}): false pairs {false}, recall "
                + ", ".join(f"{r:.2f}" for r in recall)
            )

        def chosen(b, c, colours=None):
            near = (
                (b <= HASH_BITS)
                | ((c >= COSINE) & (b <= COSINE_MAX_BITS))
                | ((b <= HASH_BITS_WITH_COSINE) & (c >= COSINE_WITH_HASH))
            )
            return near if colours is None else near & (colours <= COLOR_TOLERANCE)

        recall = [
            float(chosen(b, c, d).mean())
            for b, c, d in zip(twin_bits, twin_cos, twin_colors, strict=True)
        ]
        upper = np.triu(np.ones((n, n), bool), 1)
        false = int((chosen(distinct_bits, sims, distinct_colors) & upper).sum())
        without = int((chosen(distinct_bits, sims) & upper).sum())
        print(f"[{weights} {size}px] CHOSEN without the colour gate: false pairs {without}")
        flagged = chosen(distinct_bits, sims, distinct_colors) & upper
        groups = {"faces": slice(0, 200), "textures": slice(200, 320), "fields": slice(320, n)}
        within = {g: int(flagged[s, s].sum()) for g, s in groups.items()}
        print(f"[{weights} {size}px] CHOSEN false pairs within each group: {within}")
        print(
            f"[{weights} {size}px] CHOSEN: false pairs {false} of {n * (n - 1) // 2}, recall "
            + ", ".join(f"{k} {r:.2f}" for k, r in zip(twins, recall, strict=True))
        )


if __name__ == "__main__":
    main()
