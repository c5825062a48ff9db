"""Tests for core.data.images: mode conversions, EXIF, animation and every skip reason."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import images
from core.data.images import IMAGE_EXTENSIONS, check_image, load_rgb
from core.errors import DataError


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """Write a tiny PNG whose IHDR claims ``width`` x ``height`` (1-bit gray): a cheap bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    payload = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    payload += chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(payload)
    return path


def _rgb(
    path: Path, size: tuple[int, int] = (20, 12), color: tuple[int, int, int] = (200, 30, 40)
) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _assert_rgb(arr: np.ndarray, height: int, width: int) -> None:
    assert arr.shape == (height, width, 3)
    assert arr.dtype == np.uint8


def test_extensions_are_lower_case() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} == IMAGE_EXTENSIONS


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".gif", ".webp", ".tiff"])
def test_every_supported_format_loads(tmp_path: Path, ext: str) -> None:
    path = _rgb(tmp_path / f"x{ext}")
    assert check_image(path) is None
    _assert_rgb(load_rgb(path), 12, 20)


def test_gray_l_and_la(tmp_path: Path) -> None:
    Image.new("L", (16, 10), 77).save(tmp_path / "l.png")
    arr = load_rgb(tmp_path / "l.png")
    _assert_rgb(arr, 10, 16)
    assert (arr == 77).all()
    Image.new("LA", (16, 10), (10, 0)).save(tmp_path / "la.png")  # fully transparent
    assert (load_rgb(tmp_path / "la.png") == 255).all()  # composited on white


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (10, 10), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.save(tmp_path / "p.png")
    arr = load_rgb(tmp_path / "p.png")
    _assert_rgb(arr, 10, 10)
    assert tuple(arr[0, 0]) == (10, 200, 30)

    im.putpixel((0, 0), 0)
    im.save(tmp_path / "pt.png", transparency=0)
    arr = load_rgb(tmp_path / "pt.png")
    assert tuple(arr[0, 0]) == (255, 255, 255)  # transparent index -> white, not black
    assert tuple(arr[5, 5]) == (10, 200, 30)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    im.putpixel((0, 0), (255, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 0, 128))
    im.save(tmp_path / "a.png")
    arr = load_rgb(tmp_path / "a.png")
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[5, 5]) == (255, 0, 0)
    assert 120 <= arr[0, 1, 0] <= 135  # half black on white is mid gray


def test_cmyk_tiff_and_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (12, 9), (0, 0, 0, 0)).save(tmp_path / "c.tif")
    arr = load_rgb(tmp_path / "c.tif")
    _assert_rgb(arr, 9, 12)
    assert (arr == 255).all()
    Image.new("CMYK", (12, 9), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    arr = load_rgb(tmp_path / "c.jpg")
    _assert_rgb(arr, 9, 12)
    assert arr[4, 4, 0] > 200 and arr[4, 4, 1] < 60  # red


def test_16_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.tile(np.array([0, 32768, 65535, 1000], dtype=np.uint16), (8, 3))  # 8x12
    im = Image.fromarray(values)
    assert im.mode.startswith("I;16")
    im.save(tmp_path / "g16.png")
    arr = load_rgb(tmp_path / "g16.png")
    _assert_rgb(arr, 8, 12)
    assert arr[0, :4, 0].tolist() == [0, 128, 255, 4]

    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i32.tif")  # mode "I"
    with Image.open(tmp_path / "i32.tif") as im32:
        assert im32.mode == "I"
    assert load_rgb(tmp_path / "i32.tif")[0, :4, 0].tolist() == [0, 128, 255, 4]


def test_one_bit(tmp_path: Path) -> None:
    im = Image.new("1", (9, 9), 0)
    im.putpixel((0, 0), 1)
    im.save(tmp_path / "b.png")
    arr = load_rgb(tmp_path / "b.png")
    _assert_rgb(arr, 9, 9)
    assert set(np.unique(arr).tolist()) == {0, 255}
    assert tuple(arr[0, 0]) == (255, 255, 255)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    with Image.open(tmp_path / "anim.gif") as im:
        assert im.n_frames == 3
    arr = load_rgb(tmp_path / "anim.gif")
    _assert_rgb(arr, 10, 10)
    assert arr[5, 5, 0] > 200 and arr[5, 5, 2] < 50


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif)
    _assert_rgb(load_rgb(tmp_path / "rot.jpg"), 40, 20)


def test_resize_uses_square_size(tmp_path: Path) -> None:
    path = _rgb(tmp_path / "x.png", size=(50, 30))
    arr = load_rgb(path, size=24)
    _assert_rgb(arr, 24, 24)
    assert tuple(arr[12, 12]) == (200, 30, 40)
    with pytest.raises(DataError):
        load_rgb(path, size=0)


def test_empty_and_text_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert check_image(tmp_path / "empty.png") == "empty file"
    (tmp_path / "notes.jpg").write_text("just some text, not a JPEG\n")
    assert check_image(tmp_path / "notes.jpg") == "not an image"
    with pytest.raises(DataError, match="not an image"):
        load_rgb(tmp_path / "notes.jpg")


def test_renamed_postscript_is_never_opened(tmp_path: Path) -> None:
    # EPS would start Ghostscript: only the formats of IMAGE_EXTENSIONS may be opened.
    (tmp_path / "x.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    assert check_image(tmp_path / "x.jpg") == "not an image"


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(0)
    full = tmp_path / f"full{ext}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / f"cut{ext}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert check_image(full) is None
    assert check_image(cut) == "truncated or corrupt"
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_rgb(cut)


def test_decompression_bomb_above_pil_limit(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    assert bomb.stat().st_size < 200
    assert check_image(bomb) == "decompression bomb (400 megapixels)"
    with pytest.raises(DataError, match="decompression bomb"):
        load_rgb(bomb)


def test_decompression_bomb_below_pil_limit(tmp_path: Path) -> None:
    # 48 MP: PIL accepts it silently, our stricter cap refuses it before decoding.
    bomb = _png_header_only(tmp_path / "bomb.png", 8_000, 6_000)
    assert check_image(bomb) == "decompression bomb (48 megapixels)"


def test_pil_bomb_warning_as_error_is_still_a_bomb(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 10_000, 10_000)  # between PIL's 1x and 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_image(bomb) == "decompression bomb (100 megapixels)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert check_image(bomb) == "decompression bomb (100 megapixels)"


def test_too_small_and_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    assert check_image(tmp_path / "dot.png") == "too small (1x1 px)"
    path = _rgb(tmp_path / "x.bmp", size=(64, 64))
    assert check_image(path) is None
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1024 * 1024 // 100)
    reason = check_image(path)
    assert reason is not None and reason.startswith("too large (")
    assert "MB >" in reason
    with pytest.raises(DataError, match="too large"):
        load_rgb(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert check_image(tmp_path / "nope.png").startswith("unreadable")
    assert check_image(tmp_path) == "not a regular file"
    with pytest.raises(DataError, match=r"nope\.png"):
        load_rgb(tmp_path / "nope.png")


def test_binary_streams_are_accepted(tmp_path: Path) -> None:
    # Uploads (bytes wrapped in BytesIO, Streamlit's UploadedFile) are decoded like files.
    data = _rgb(tmp_path / "x.png", size=(30, 20)).read_bytes()
    stream = io.BytesIO(data)
    assert check_image(stream) is None
    _assert_rgb(load_rgb(stream, size=16), 16, 16)
    assert not stream.closed
    assert check_image(io.BytesIO(b"")) == "empty file"
    with pytest.raises(DataError, match="'uploaded image': truncated or corrupt"):
        load_rgb(io.BytesIO(data[: len(data) // 2]))


def test_to_array_takes_paths_bytes_pil_images_and_arrays_alike(tmp_path: Path) -> None:
    path = _rgb(tmp_path / "red.png", size=(20, 12))
    from_path = images.to_array(path, 16)
    assert from_path.shape == (16, 16, 3) and from_path.dtype == np.uint8
    assert np.array_equal(images.to_array(path.read_bytes(), 16), from_path)
    assert np.array_equal(images.to_array(io.BytesIO(path.read_bytes()), 16), from_path)
    with Image.open(path) as im:
        assert np.array_equal(images.to_array(im, 16), from_path)
    assert np.array_equal(images.to_array(load_rgb(path), 16), from_path)
    assert images.to_array(path).shape == (12, 20, 3)  # no size: kept as it is
    as_float = images.to_array(path, 16, np.float32)
    assert as_float.dtype == np.float32 and np.array_equal(as_float, from_path.astype(np.float32))


def test_to_array_normalises_arrays() -> None:
    gray = np.full((10, 10), 7, dtype=np.uint8)
    assert images.to_array(gray).shape == (10, 10, 3)
    assert images.to_array(gray[..., None]).shape == (10, 10, 3)
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert images.to_array(rgba).shape == (10, 10, 3)  # alpha dropped
    wild = np.array([[[-5.0, 300.0, 12.4]]] * 9).reshape(3, 3, 3)
    assert images.to_array(wild)[0, 0].tolist() == [0, 255, 12]  # clipped, not wrapped
    original = np.full((8, 8, 3), 9, dtype=np.uint8)
    out = images.to_array(original)
    out[0, 0] = 0
    assert original[0, 0, 0] == 9  # a copy, never a view of the caller's pixels
    for bad in (np.zeros((4, 4, 2)), np.zeros((2, 4, 4, 3))):
        with pytest.raises(DataError, match="HxWx3"):
            images.to_array(bad)
    with pytest.raises(DataError, match="positive integer"):
        images.to_array(gray, 0)


def test_to_array_converts_pil_modes_like_decoded_files(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent: white, as for files
    assert images.to_array(rgba)[0, 0].tolist() == [255, 255, 255]
    rgba.save(tmp_path / "clear.png")
    assert np.array_equal(images.to_array(rgba), load_rgb(tmp_path / "clear.png"))
    assert images.to_array(Image.new("L", (10, 10), 50))[0, 0].tolist() == [50, 50, 50]


def test_decoded_batches_keep_the_order_and_decode_one_batch_ahead(tmp_path: Path) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers import write_pngs

    paths = write_pngs(tmp_path, 7, side=12)
    calls: list[str] = []

    def load(path: str, size: int) -> np.ndarray:
        calls.append(path)
        return load_rgb(path, size)

    with ThreadPoolExecutor(2) as pool:
        batches = images.decoded_batches(paths, 8, 3, pool, load=load)
        first = next(batches)
        assert first.shape == (3, 8, 8, 3) and first.dtype == np.uint8
        deadline = time.monotonic() + 5
        while len(calls) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        # The second batch decodes while the caller holds the first; the third waits its turn.
        assert sorted(calls) == sorted(paths[:6])
        rest = list(batches)
    assert [len(b) for b in rest] == [3, 1]
    expected = np.stack([load_rgb(p, 8) for p in paths])
    np.testing.assert_array_equal(np.concatenate([first, *rest]), expected)


def test_closing_decoded_batches_early_cancels_what_has_not_started(tmp_path: Path) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers import write_pngs

    paths = write_pngs(tmp_path, 9, side=12)
    release = threading.Event()
    calls: list[str] = []

    def load(path: str, size: int) -> np.ndarray:
        calls.append(path)
        if path == paths[3]:  # the batch ahead's first image holds the only worker
            release.wait(5)
        return load_rgb(path, size)

    with ThreadPoolExecutor(1) as pool:
        batches = images.decoded_batches(paths, 8, 3, pool, load=load)
        next(batches)
        batches.close()  # the caller stops after one batch
        release.set()
    assert calls[:3] == paths[:3] and len(calls) <= 4  # the rest of the batch ahead: cancelled
