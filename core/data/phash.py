"""Perceptual hashes of images: 64 bits that survive re-encoding, resizing and small crops.

The classic DCT hash (pHash): the picture in grey at 32x32, its 2-D DCT, the 8x8 lowest
frequencies without the constant term, one bit per coefficient (above or below their median).
Two copies of one photo differ in a few bits; two different photos in about half of them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from core.data.images import load_rgb

HASH_SIDE = 32  # the picture is hashed at this size
LOW = 8  # the LOW x LOW lowest frequencies give the bits


def phash_pixels(rgb: np.ndarray) -> int:
    """The 64-bit perceptual hash of an HxWx3 uint8 picture."""
    from scipy.fft import dctn

    grey = Image.fromarray(np.asarray(rgb, np.uint8)).convert("L")
    small = np.asarray(grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), np.float64)
    freq = dctn(small, norm="ortho")[:LOW, :LOW].flatten()[1:]  # drop the mean brightness
    bits = np.append(freq > np.median(freq), False)  # 63 coefficients, 64th bit always 0
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def phash_file(path: str | os.PathLike[str]) -> int | None:
    """The hash of an image file; ``None`` when it cannot be read (the caller skips it)."""
    try:
        return phash_pixels(load_rgb(path))
    except Exception:  # an unreadable file has no twin: the leakage check goes on without it
        return None


def phash_files(paths: list[str]) -> list[int | None]:
    """Hashes of many files (a few threads: decoding releases the GIL)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(phash_file, paths))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between every hash of ``a`` (m,) and of ``b`` (n,): an (m, n) int array."""
    x = np.asarray(a, np.uint64)[:, None] ^ np.asarray(b, np.uint64)[None, :]
    return np.bitwise_count(x).astype(np.int64)
