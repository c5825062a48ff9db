"""Perceptual hashes of images: 64 bits that survive re-encoding, resizing and small crops.

The classic DCT hash (pHash): the picture in grey at 32x32, its 2-D DCT, the 8x8 lowest
frequencies without the constant term, one bit per coefficient (above or below their median).
Two copies of one photo differ in a few bits; two different photos in about half of them.

A crop of a few pixels rescales the content and moves the hash by 6-22 bits (as far as some
distinct pictures are); so each picture is also hashed with ``CROPS`` of its border removed, and
two pictures' distance is the smallest between one's full hash and the other's crops
(``crop_distance``): a twin cropped by up to a tenth of a side is then 0-4 bits away.

The hash is of the picture in grey without its mean brightness, so two flat pictures of
different colours hash alike; each picture's mean colour (``Color``) is kept beside its hashes
(``signature_file``) for the leakage check to tell those apart.

Signatures depend only on a file's content: ``cached_signatures`` keeps them in
``<home>/cache/phash.sqlite`` by content hash (SHA-256), so checking the same images again
(the Data page's leakage check on every visit) decodes nothing it decoded before. The cache is
an optimisation only: safe to delete, and when SQLite fails the pictures are simply hashed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from core.data.images import load_rgb
from core.data.scan_cache import cache_db, select_in

__all__ = [
    "CROPS",
    "Color",
    "SIGNATURE_VERSION",
    "cached_signatures",
    "uncached_count",
    "Hashes",
    "Signature",
    "HASH_SIDE",
    "LOW",
    "crop_distance",
    "hamming",
    "phash_crops",
    "phash_file",
    "phash_files",
    "phash_pixels",
    "color_distance",
    "color_distance_pairs",
    "signature_file",
    "signature_files",
]

HASH_SIDE = 32  # the picture is hashed at this size
LOW = 8  # the LOW x LOW lowest frequencies give the bits
CROPS = (0.0, 0.025, 0.05, 0.075, 0.1)  # share of each side removed before hashing
Hashes = tuple[int, ...]  # one hash per crop of CROPS, the full picture first
Color = tuple[float, float, float]  # mean R, G, B (0-255)
Signature = tuple[Hashes, Color]
# What a stored signature was computed with: a change of the hash's recipe stores anew.
SIGNATURE_VERSION = f"1:{HASH_SIDE}:{LOW}:{','.join(map(str, CROPS))}"
PROGRESS_EVERY = 25  # pictures hashed between progress calls


def phash_pixels(rgb: np.ndarray) -> int:
    """The 64-bit perceptual hash of an HxWx3 uint8 picture."""
    from scipy.fft import dctn

    grey = Image.fromarray(np.asarray(rgb, np.uint8)).convert("L")
    small = np.asarray(grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), np.float64)
    freq = dctn(small, norm="ortho")[:LOW, :LOW].flatten()[1:]  # drop the mean brightness
    bits = np.append(freq > np.median(freq), False)  # 63 coefficients, 64th bit always 0
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def phash_crops(rgb: np.ndarray) -> Hashes:
    """The hashes of a picture and of its ``CROPS`` (border removed on every side).

    ``phash_pixels`` of each crop, bit for bit, with the picture made grey once and the five
    DCTs, medians and bit packings done together (0.38 ms a picture down to 0.26: the leakage
    check hashes every picture of a run).
    """
    from scipy.fft import dctn

    h, w = rgb.shape[:2]
    grey = Image.fromarray(np.asarray(rgb, np.uint8)).convert("L")  # per pixel: crop after
    side, resample = (HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS
    boxes = [(round(w * s), round(h * s)) for s in CROPS]
    small = np.stack(
        [np.asarray(grey.crop((dx, dy, w - dx, h - dy)).resize(side, resample)) for dx, dy in boxes]
    ).astype(np.float64)
    freq = dctn(small, axes=(1, 2), norm="ortho")[:, :LOW, :LOW].reshape(len(CROPS), -1)[:, 1:]
    bits = np.zeros((len(CROPS), LOW * LOW), np.uint8)  # the 64th bit always 0
    bits[:, :-1] = freq > np.median(freq, axis=1, keepdims=True)
    return tuple(int(x) for x in np.packbits(bits, axis=1).view(">u8")[:, 0])


def phash_file(path: str | os.PathLike[str]) -> Hashes | None:
    """The crop hashes of an image file; ``None`` when it cannot be read (the caller skips it)."""
    try:
        return phash_crops(load_rgb(path))
    except Exception:  # an unreadable file has no twin: the leakage check goes on without it
        return None


def phash_files(paths: list[str]) -> list[Hashes | None]:
    """Hashes of many files (a few threads: decoding releases the GIL)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(phash_file, paths))


def signature_file(path: str | os.PathLike[str]) -> Signature | None:
    """A file's crop hashes and mean colour (one decode); ``None`` when it cannot be read."""
    try:
        rgb = load_rgb(path)
    except Exception:  # an unreadable file has no twin: the leakage check goes on without it
        return None
    mean = rgb.reshape(-1, 3).mean(axis=0)
    return phash_crops(rgb), (float(mean[0]), float(mean[1]), float(mean[2]))


def signature_files(paths: list[str]) -> list[Signature | None]:
    """Signatures of many files (a few threads: decoding releases the GIL)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(signature_file, paths))


def color_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The largest per-channel difference of mean colours, ``a`` (m, 3) against ``b`` (n, 3)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a[:, None, :] - b[None, :, :]).max(axis=-1)


def color_distance_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``color_distance`` of pairs: row ``i`` of ``a`` (m, 3) against row ``i`` of ``b`` (m, 3)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a - b).max(axis=-1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between every hash of ``a`` (m,) and of ``b`` (n,): an (m, n) int array."""
    x = np.asarray(a, np.uint64)[:, None] ^ np.asarray(b, np.uint64)[None, :]
    return np.bitwise_count(x).astype(np.int64)


def crop_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between pictures given their crop hashes, ``a`` (m, k) and ``b`` (n, k): for
    each pair the fewest bits between one's full picture and any crop of the other; an (m, n)
    uint8 array (at most 64 bits: a byte a cell is an eighth of ``hamming``'s memory traffic,
    and this runs on 10,000 x 40,000 pairs at a 50,000-image run's leakage check)."""
    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)

    def bits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.bitwise_count(x[:, None] ^ y[None, :])  # uint8

    best = bits(a[:, 0], b[:, 0])
    for k in range(1, a.shape[1]):
        np.minimum(best, bits(a[:, 0], b[:, k]), out=best)
        np.minimum(best, bits(a[:, k], b[:, 0]), out=best)
    return best


def _connect() -> contextlib.AbstractContextManager[sqlite3.Connection]:
    """The signature cache in one transaction (committed on success), always closed."""
    return cache_db(
        "phash.sqlite",
        "CREATE TABLE IF NOT EXISTS signatures (sha256 TEXT, version TEXT, "
        "hashes TEXT NOT NULL, color TEXT NOT NULL, PRIMARY KEY (sha256, version))",
    )


def _rows(columns: str, shas: Sequence[str]) -> list[tuple]:
    """``columns`` of the stored signatures (this version) of the distinct ``shas``; raises
    what reading the cache raises."""
    with _connect() as conn:
        query = f"SELECT {columns} FROM signatures WHERE version = ? AND sha256 IN"
        return list(select_in(conn, query, sorted(set(shas)), [SIGNATURE_VERSION]))


def _stored(shas: Sequence[str]) -> dict[str, Signature]:
    """The cached signatures of ``shas`` (an unusable cache holds none)."""
    found: dict[str, Signature] = {}
    try:
        for sha, hashes, color in _rows("sha256, hashes, color", shas):
            h, c = json.loads(hashes), json.loads(color)
            found[sha] = (tuple(int(x) for x in h), (float(c[0]), float(c[1]), float(c[2])))
    except (sqlite3.Error, OSError, ValueError, TypeError, IndexError):
        return {}
    return found


def uncached_count(shas: Sequence[str]) -> int:
    """How many distinct pictures among ``shas`` ``cached_signatures`` would still decode.

    Reads only which are stored, not the signatures: the Data page counts them for 50,000
    files on every first visit, where decoding every stored signature took 0.6 s."""
    try:
        stored = len(_rows("sha256", shas))
    except (sqlite3.Error, OSError):
        stored = 0
    return len(set(shas)) - stored


def cached_signatures(
    paths: Sequence[str],
    shas: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> list[Signature | None]:
    """``signature_file`` of every path (``shas[i]``: the SHA-256 of ``paths[i]``), decoding only
    the contents not in the cache and storing theirs. ``progress(done, total)``: pictures
    decoded so far of those to decode. ``None`` for a file that cannot be read (not stored: it
    may be readable next time)."""
    known = _stored(shas)
    todo: dict[str, str] = {}
    for path, sha in zip(paths, shas, strict=True):
        if sha not in known:
            todo.setdefault(sha, path)
    fresh: dict[str, Signature] = {}
    if todo:
        items = list(todo.items())
        with ThreadPoolExecutor(max_workers=2) as pool:
            for n, ((sha, _path), sig) in enumerate(
                zip(items, pool.map(signature_file, [p for _, p in items]), strict=True), 1
            ):
                if sig is not None:
                    fresh[sha] = sig
                if progress is not None and (n % PROGRESS_EVERY == 0 or n == len(items)):
                    progress(n, len(items))
        try:
            with _connect() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO signatures (sha256, version, hashes, color) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (sha, SIGNATURE_VERSION, json.dumps(list(h)), json.dumps(list(c)))
                        for sha, (h, c) in fresh.items()
                    ],
                )
        except (sqlite3.Error, OSError):
            pass  # the cache is an optimisation: the next check hashes them again
    return [known.get(sha) or fresh.get(sha) for sha in shas]
