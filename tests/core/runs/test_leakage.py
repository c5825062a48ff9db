"""The leakage check's parts on planted twins: perceptual hashes and the pair finder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.data.phash import CROPS, crop_distance, hamming, phash_crops, phash_pixels
from core.runs.leakage import SplitImages, describe, find_twins, leakage_summary, relative
from tests.helpers import cropped_twin, smooth_picture


def _picture(seed: int) -> np.ndarray:
    return smooth_picture(seed)


def _twin(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(cropped_twin(rgb))).convert("RGB"))


def test_hash_tells_twins_from_other_pictures() -> None:
    originals = [_picture(i) for i in range(40)]
    a = np.asarray([phash_pixels(x) for x in originals], np.uint64)
    b = np.asarray([phash_pixels(_twin(x)) for x in originals], np.uint64)
    others = hamming(a, a)[~np.eye(40, dtype=bool)]
    # One hash per picture: a 2-px crop moves many bits, as many as some distinct pictures.
    assert np.max(np.diag(hamming(a, b))) > 6
    # With the crops' hashes the twins are a few bits apart, distinct pictures far more.
    ca = np.asarray([phash_crops(x) for x in originals], np.uint64)
    cb = np.asarray([phash_crops(_twin(x)) for x in originals], np.uint64)
    assert ca.shape == (40, len(CROPS))
    assert np.max(np.diag(crop_distance(ca, cb))) <= 6
    assert np.min(crop_distance(ca, ca)[~np.eye(40, dtype=bool)]) > 6
    assert np.median(others) > 20
    # Symmetric: which side is the cropped one does not matter.
    assert (crop_distance(ca, cb) == crop_distance(cb, ca).T).all()


@pytest.mark.parametrize("shape", [(64, 64), (24, 24), (7, 300), (5, 5), (97, 61)])
def test_crop_hashes_are_each_crops_own_hash(shape: tuple[int, int]) -> None:
    """``phash_crops`` hashes its crops together; each must be the crop's ``phash_pixels``, bit
    for bit (stored signatures stay valid), on photos, noise and a flat picture."""
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    pictures = [
        np.asarray(Image.fromarray(_picture(shape[0])).resize(shape[::-1])),
        rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
        np.full((*shape, 3), (30, 60, 90), np.uint8),
    ]
    h, w = shape
    for rgb in pictures:
        borders = [(round(h * c), round(w * c)) for c in CROPS]
        crops = [rgb[dy : h - dy, dx : w - dx] for dy, dx in borders]
        assert phash_crops(rgb) == tuple(phash_pixels(crop) for crop in crops)


def test_hamming_counts_bits() -> None:
    got = hamming(np.array([0, 3, 2**64 - 1], np.uint64), np.array([0, 1], np.uint64))
    assert got.tolist() == [[0, 1], [2, 1], [64, 63]]


def _side(names: list[str], labels: list[int], hashes: list[int | None], feats) -> SplitImages:
    """One side of a split; each hash stands for all the picture's crop hashes."""
    crops = [None if h is None else (h,) * len(CROPS) for h in hashes]
    return SplitImages([f"/data/{n}" for n in names], labels, [f"sha-{n}" for n in names], crops,
                       None if feats is None else np.asarray(feats, np.float32))  # fmt: skip


def test_pairs_exact_near_and_relabelled() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 16))
    train = _side(["a/0.png", "a/1.png", "b/2.png", "b/3.png"], [0, 0, 1, 1],
                  [0, 0xFFFFFFFF, 0xFFFFFFFF00000000, 0xFFFF00000000FFFF], base[:4])  # fmt: skip
    # v0: the same file as a/0 (sha); v1: a/1's embedding, hash 16 bits off (too far for the
    # hash alone); v2: b/2's hash under label a, embedding unrelated; v3: nothing.
    hashes = [0x5555555555555555, 0x00000000FFFF0000, 0xFFFFFFFF00000000, 0x0F0F0F0F0F0F0F0F]
    feats = [base[0], base[1] * 1.01, base[4], base[5]]
    val = _side(["a/9.png", "a/8.png", "a/7.png", "b/6.png"], [0, 0, 0, 1], hashes, feats)
    val.shas[0] = "sha-a/0.png"
    pairs = find_twins(val, train, ["a", "b"], "/data")
    by_val = {p["val"]: p for p in pairs}
    assert set(by_val) == {"a/9.png", "a/8.png", "a/7.png"}
    assert by_val["a/9.png"]["train"] == "a/0.png" and by_val["a/9.png"]["exact"]
    assert by_val["a/9.png"]["similarity"] == 1.0
    assert by_val["a/8.png"]["train"] == "a/1.png" and by_val["a/8.png"]["similarity"] > 0.99
    assert by_val["a/7.png"]["train"] == "b/2.png" and by_val["a/7.png"]["same_label"] is False
    assert by_val["a/7.png"]["hash_distance"] == 0
    # The same embedding but hashes 32 bits apart: two different pictures a weak network maps
    # alike, not twins.
    val.hashes[1] = (0x3333333333333333,) * len(CROPS)
    assert "a/8.png" not in {p["val"] for p in find_twins(val, train, ["a", "b"], "/data")}

    correct = [True, True, False, False]
    summary = leakage_summary(pairs, val.paths, correct, "/data")
    assert summary["val_images_with_train_twin"] == 3
    assert summary["accuracy"] == 0.5
    assert summary["accuracy_without_twins"] == 0.0  # only b/6 is left, predicted wrong
    assert summary["different_labels"] == 1 and summary["exact_duplicates"] == 1
    text = describe(summary)
    assert text.startswith("3 of 4 validation images have a near-copy in training")
    assert "0.00, not 0.50" in text and "labelled twice" in text


def test_no_features_still_finds_hash_twins_and_no_data_no_pairs() -> None:
    train = _side(["a/0.png"], [0], [5], None)
    val = _side(["a/1.png", "a/2.png"], [0, 0], [5, None], None)
    pairs = find_twins(val, train, ["a"], "/data")
    assert [(p["val"], p["similarity"]) for p in pairs] == [("a/1.png", None)]
    assert find_twins(_side([], [], [], None), train, ["a"], "/data") == []
    clean = leakage_summary([], val.paths, [True, False], "/data")
    assert describe(clean).startswith("None of the 2 validation images")
    before_training = leakage_summary(pairs, val.paths, None, "/data")  # the Data page's
    assert before_training["accuracy"] is None
    assert describe(before_training) == (
        "1 of 2 validation images have a near-copy in training: a validation score on them "
        "would measure memory, not learning."
    )
    everyone = leakage_summary(pairs, val.paths[:1], [True], "/data")
    assert "every validation image has one" in describe(everyone)


def test_paths_are_relative_to_the_data_root() -> None:
    assert relative("/data/cats/1.png", "/data") == "cats/1.png"
    assert relative("/elsewhere/1.png", "/data") == "/elsewhere/1.png"


def test_relative_paths_by_prefix_agree_with_relpath(monkeypatch: pytest.MonkeyPatch) -> None:
    """50,000 files under the root on the Data page: a prefix each, not ``os.path.relpath``."""
    import os

    cases = [
        ("/data/cats/1.png", "/data"),
        ("/data/cats/1.png", "/data/"),
        ("/data/a/../b.png", "/data"),
        ("/database/1.png", "/data"),
        ("/data", "/data"),
        ("/data/b", "/"),
        ("x/y.png", "x"),
        ("/data//cats/1.png", "/data"),
    ]
    for path, root in cases:
        rel = os.path.relpath(path, root)
        assert relative(path, root) == (path if rel.startswith("..") else rel), (path, root)
    calls: list[str] = []
    real = os.path.relpath
    monkeypatch.setattr(os.path, "relpath", lambda p, r: calls.append(p) or real(p, r))
    assert [relative(f"/data/c/{i}.png", "/data") for i in range(3)] == [
        "c/0.png",
        "c/1.png",
        "c/2.png",
    ]
    assert calls == []


def test_flat_pictures_of_two_colours_are_not_twins(tmp_path) -> None:
    """Solid colours all hash to 0 (no detail): their mean colours tell them apart; a re-saved
    copy of one is still its twin."""
    from core.data.phash import signature_file

    paths = []
    for i, colour in enumerate([(30, 60, 90), (60, 60, 90), (30, 60, 90)]):
        path = tmp_path / f"{i}.{'jpg' if i == 2 else 'png'}"
        Image.new("RGB", (24, 24), colour).save(path)
        paths.append(str(path))
    signatures = [signature_file(p) for p in paths]
    assert all(s is not None for s in signatures)
    hashes = [s[0] for s in signatures if s]
    assert hashes[0] == hashes[1] == hashes[2]  # no detail, no bits
    colors = [s[1] for s in signatures if s]
    train = SplitImages(paths[:2], [0, 0], ["s0", "s1"], hashes[:2], None, colors[:2])
    val = SplitImages(paths[2:], [0], ["s2"], hashes[2:], None, colors[2:])
    pairs = find_twins(val, train, ["a"], str(tmp_path))
    assert [(p["val"], p["train"]) for p in pairs] == [("2.jpg", "0.png")]
