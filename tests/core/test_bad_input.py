"""Every kind of bad input a user can bring gets a clear message or a counted, explained skip.

After each, the engine still answers (a good run completes on the same queue) and nothing is
written outside the studio's own folders. Closing notes count their bad-input totals here.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import RunConfig
from core.data import load_dataset
from core.errors import BackboneError, ConfigError, DataError, StudioError
from core.runs.store import COMPLETED, FAILED
from core.training.jobs import JobQueue


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A valid, tiny PNG header that claims 50,000 x 50,000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _good(color: tuple[int, int, int]) -> bytes:
    rng = np.random.default_rng(sum(color))
    noise = rng.integers(0, 40, (24, 24, 3))
    return _png_bytes(Image.fromarray((np.array(color) + noise).clip(0, 255).astype(np.uint8)))


def _jpeg(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def _gif_animated() -> bytes:
    frames = [Image.new("P", (24, 24), i * 50) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _image_16bit() -> bytes:
    return _png_bytes(Image.fromarray(np.full((24, 24), 40000, dtype=np.uint16)))


# name → (file bytes, expected skip reason or None when the file must be used, converted to RGB)
BAD_FILES: dict[str, tuple[bytes, str | None]] = {
    "empty.jpg": (b"", "empty file"),
    "notes.jpg": (b"this is text, not a photo\n" * 20, "not an image"),
    "truncated.jpg": (_jpeg(64)[:300], "truncated or corrupt"),
    "truncated.png": (_png_bytes(Image.new("RGB", (64, 64), "blue"))[:-30], "truncated or corrupt"),
    "bomb.png": (_bomb_png(), "decompression bomb"),
    "tiny_1x1.png": (_png_bytes(Image.new("RGB", (1, 1), "red")), "too small (1x1 px)"),
    "readme.txt": (b"hello", "not an image file (.txt)"),
    "sixteen_bit.png": (_image_16bit(), None),
    "cmyk.jpg": (
        (
            lambda b: (Image.new("CMYK", (24, 24), (10, 200, 30, 5)).save(b, "JPEG"), b.getvalue())[
                1
            ]
        )(io.BytesIO()),
        None,
    ),
    "palette.png": (_png_bytes(Image.new("P", (24, 24), 7)), None),
    "rgba.png": (_png_bytes(Image.new("RGBA", (24, 24), (1, 2, 3, 100))), None),
    "gray.png": (_png_bytes(Image.new("L", (24, 24), 90)), None),
    "animated.gif": (_gif_animated(), None),
    "x" * 200 + ".png": (_good((120, 120, 120)), None),
}
NON_UTF8_NAME = os.fsdecode(b"caf\xe9-\xff.png")


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    """Two good classes, the bad files spread into them, and a symlink out of the dataset."""
    root = tmp_path / "messy"
    for cls, color in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            (root / cls / f"good_{i}.png").write_bytes(_good(color))
    for name, (data, _) in BAD_FILES.items():
        (root / "cats" / name).write_bytes(data)
    (root / "dogs" / NON_UTF8_NAME).write_bytes(_good((40, 40, 210)))
    secret = tmp_path / "outside-secret.png"
    secret.write_bytes(_good((1, 2, 3)))
    os.symlink(secret, root / "dogs" / "link_out.png")
    return root


def test_each_bad_file_is_skipped_with_its_reason_or_converted(messy: Path) -> None:
    index = load_dataset(str(messy), val_split=0.25, seed=1)
    reasons = {Path(s["path"]).name: s["reason"] for s in index.skipped_files}
    used = {Path(p).name for p in index.train_paths + index.val_paths}
    for name, (_, expected) in BAD_FILES.items():
        if expected is None:
            assert name in used, f"{name} should be converted to RGB and used"
        else:
            assert expected in reasons.get(name, ""), (name, reasons.get(name))
    assert "symlink pointing outside" in reasons["link_out.png"]
    assert NON_UTF8_NAME in used


@pytest.mark.slow
def test_a_messy_folder_trains_and_predicts(messy: Path, tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "runs")
    config = RunConfig(
        data=str(messy), backbone="mobilenet_v3_small", weights="none", image_size=32, epochs=1
    )
    run_id = queue.submit(config)
    assert queue.wait(run_id, timeout=300) == COMPLETED
    result = queue.store.result(run_id)
    assert len(result["skipped_files"]) == 8  # 7 bad files + the symlink out
    from core.runs.predict import predict_images

    for name in ("cmyk.jpg", "sixteen_bit.png", "animated.gif", "palette.png", "rgba.png"):
        preds = predict_images(queue.store, run_id, [messy / "cats" / name], top_k=2)
        assert sum(p["probability"] for p in preds[0]["predictions"]) == pytest.approx(1, abs=1e-4)
    with pytest.raises(StudioError, match="truncated or corrupt"):
        predict_images(queue.store, run_id, [messy / "cats" / "truncated.jpg"])


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"cats": 3}, "need at least 2 class subfolders"),
        ({"cats": 3, "dogs": 0}, "dogs"),
        ({}, "no"),
    ],
)
def test_folder_level_problems_are_clear_errors(tmp_path: Path, layout: dict, message: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("no images here")
    for cls, n in layout.items():
        (root / cls).mkdir()
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(_good((100, 100, 100)))
        if n == 0:
            (root / cls / "broken.jpg").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_dataset(str(root))
    assert message in str(info.value).lower() or message in str(info.value)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_hostile_zips_are_refused_and_write_nothing_outside(tmp_path: Path) -> None:
    marker = f"evil-{uuid.uuid4().hex}"
    climbing = "../" * 12 + f"tmp/{marker}-climb.txt"
    absolute = f"/tmp/{marker}-abs.txt"
    good = {f"set/{c}/{i}.png": _good((i * 9, 9, 9)) for c in ("a", "b") for i in range(3)}
    for name in (climbing, absolute):
        with pytest.raises(DataError, match="outside|absolute path"):
            load_dataset(str(_zip(tmp_path / f"{uuid.uuid4().hex}.zip", {**good, name: b"x"})))
    assert not Path(f"/tmp/{marker}-climb.txt").exists()
    assert not Path(absolute).exists()

    # A zip inside the zip is not extracted: it is a skipped non-image file.
    inner = _zip(tmp_path / "inner.zip", {"x/y.png": _good((1, 1, 1))}).read_bytes()
    index = load_dataset(str(_zip(tmp_path / "nested.zip", {**good, "set/a/inner.zip": inner})))
    assert any(s["path"].endswith("inner.zip") for s in index.skipped_files)


def test_zip_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.data as data

    # 40 MB of zeros compresses ~1000:1: far beyond the ratio cap, refused before extraction.
    bomb = _zip(tmp_path / "bomb.zip", {"set/a/zeros.png": b"\0" * 40_000_000})
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DataError, match="(?i)bomb|ratio"):
        load_dataset(str(bomb))
    # A declared total beyond the cap is refused too.
    monkeypatch.setattr(data.archives, "MAX_ZIP_UNCOMPRESSED_BYTES", 1000)
    small = _zip(
        tmp_path / "big.zip", {f"s/{c}/{i}.png": _good((5, 5, 5)) for c in "ab" for i in range(3)}
    )
    with pytest.raises(DataError, match="(?i)uncompressed|cap|limit"):
        load_dataset(str(small))


def test_upload_above_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.data import uploads

    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 1000)
    data = b"PK" + b"\0" * 2000
    with pytest.raises(DataError, match="above the 0 MB limit"):
        uploads.save_upload(data)
    digest = hashlib.sha256(data).hexdigest()[: uploads.MAX_UPLOAD_NAME_HASH]
    assert not (uploads.data_cache_dir() / "uploads" / f"upload-{digest}.zip").exists()


def test_corrupt_model_and_weights_files(tmp_path: Path) -> None:
    from core.models.backbones import build_base, get_backbone
    from core.runs.predict import load_run
    from core.runs.store import RunStore

    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig())
    model = store.run_dir(run_id) / "model.keras"
    model.write_bytes(b"PK\x03\x04 not really a keras file")
    store.update(run_id, model_path=str(model), class_names=["a", "b"])
    with pytest.raises(StudioError, match="may be corrupt"):
        load_run(store, run_id)
    weights = tmp_path / "broken.weights.h5"
    weights.write_bytes(b"garbage")
    with pytest.raises(BackboneError, match="Could not load weights file"):
        build_base(get_backbone("mobilenet_v3_small"), str(weights), 32)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"backbone": "vgg61"}, BackboneError, "Unknown backbone 'vgg61'"),
        ({"mode": "magic"}, ConfigError, "Unknown mode 'magic'"),
        ({"backbone": "inception_v3", "image_size": 40}, BackboneError, "minimum of 75 px"),
        # Wrong JSON types: named with the setting, never a TypeError or AttributeError.
        ({"val_split": "0.2"}, ConfigError, "Validation split '0.2' is invalid"),
        ({"weights": 3}, ConfigError, "Weights 3 is invalid. Expected text"),
        ({"backbone": ["a"]}, ConfigError, r"Backbone \['a'\] is invalid"),
        ({"mode": 1}, ConfigError, "Mode 1 is invalid"),
        ({"augment": "yes"}, ConfigError, "Expected true or false"),
        ({"augmentations": 5}, ConfigError, "Expected a list of names"),
        ({"augmentations": ["flip", 2]}, ConfigError, "Expected a list of names"),
    ],
)
def test_bad_config_values(changes: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        RunConfig(**changes).validate()


@pytest.mark.slow
def test_unknown_source_fails_the_run_and_the_queue_still_answers(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path)
    bad = queue.submit(RunConfig(data="nowhere:at/all", weights="none", image_size=32))
    good = queue.submit(
        RunConfig(data="builtin:textures", backbone="mobilenet_v3_small", weights="none",
                  image_size=32, epochs=1)
    )  # fmt: skip
    assert queue.wait(bad, timeout=120) == FAILED
    assert "not found" in queue.store.result(bad)["error"]
    assert queue.wait(good, timeout=300) == COMPLETED


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\xff\xfe{", "is not a text file"),
        (b'{"val_split": "0.2"}', "Validation split '0.2' is invalid"),
        (b'{"weights": 3}', "Weights 3 is invalid"),
        (b'{"backbone": ["a"]}', "Backbone ['a'] is invalid"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_a_bad_config_file_is_one_line_with_the_flag(
    tmp_path: Path, content: bytes, message: str
) -> None:
    from tests.helpers import cli

    path = tmp_path / "config.json"
    path.write_bytes(content)
    proc = cli("train", "--config", str(path), "--json", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --------------------------------------------------------------------------- the CLI and the store


def _one_line(proc, fragments: list[str], code: int = 1) -> str:
    """The single stderr line of a command that failed cleanly, checked for ``fragments``."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _stored_runs(folder: Path, count: int = 3, batches: int = 0) -> list[str]:
    """Completed runs recorded without training; the index is then checkpointed into its file."""
    import sqlite3

    from core.runs.store import RunStore

    store = RunStore(folder)
    ids = []
    for _ in range(count):
        run_id = store.create_run(RunConfig(data="builtin:textures", epochs=1))
        store.mark_running(run_id)
        store.add_epoch(run_id, {"epoch": 1, "phase": "head", "phase_epoch": 1})
        rows = [{"global_step": s, "phase": "head", "epoch": 1, "step": s, "loss": 1.0}
                for s in range(1, batches + 1)]  # fmt: skip
        if rows:
            store.add_batches(run_id, rows)
        store.mark_finished(run_id, COMPLETED)
        ids.append(run_id)
    with sqlite3.connect(store.db_path) as db:  # all in the main file, as after a clean exit
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return ids


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_export_to_a_file_is_one_line(tmp_path: Path, where: str) -> None:
    from tests.helpers import cli

    (run_id,) = _stored_runs(tmp_path / "runs", 1)
    blocker = tmp_path / "model.bin"
    blocker.write_bytes(b"not a folder")
    out = blocker if where == "file" else blocker / "exports"
    proc = cli("export", "--run", run_id, "--format", "tflite", "--out", str(out),
               "--runs-dir", str(tmp_path / "runs"), check=False)  # fmt: skip
    expected = "is a file, not a folder" if where == "file" else f"lies under {blocker}"
    _one_line(proc, [f"The export folder {out}", expected, "Choose a folder path"])
    assert blocker.read_bytes() == b"not a folder"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "garbage, no backup"])
def test_a_damaged_store_says_which_file_and_recovers(tmp_path: Path, damage: str) -> None:
    from tests.helpers import cli, last_json

    runs = _stored_runs(tmp_path, batches=2000)
    index = tmp_path / "runs.sqlite"
    if damage == "truncated":
        os.truncate(index, index.stat().st_size // 2)
    else:
        index.write_bytes(b"\x00garbage\xff" * 4096)
    if "no backup" in damage:
        (tmp_path / "runs.sqlite.bak").unlink()
    proc = cli("runs", "--runs-dir", str(tmp_path), check=False)
    line = _one_line(proc, [f"the run store {index} was damaged", "kept it as"], code=0)
    if "no backup" in damage:
        assert "started a new index" in line
    else:
        assert (
            "restored the last backup (runs.sqlite.bak, refreshed after every finished run)" in line
        )
    assert "re-added every run from its folder" in line
    assert [row.split()[0] for row in proc.stdout.splitlines()[:-1]] == runs[::-1]
    shown = cli("show", runs[0], "--runs-dir", str(tmp_path), "--json")
    assert last_json(shown)["run_id"] == runs[0] and not shown.stderr.strip()  # healed once


def test_a_row_with_broken_json_hides_no_other_run(tmp_path: Path) -> None:
    import shutil
    import sqlite3

    from tests.helpers import cli, last_json

    runs = _stored_runs(tmp_path)
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.execute("UPDATE runs SET config_json = '{' WHERE run_id IN (?, ?)", runs[:2])
    shutil.rmtree(tmp_path / "runs" / runs[0])  # this one cannot be rebuilt
    proc = cli("runs", "--runs-dir", str(tmp_path), "--json", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    repaired, lost = proc.stderr.strip().splitlines()  # one line per damaged row
    assert repaired.startswith(f"warning: run {runs[1]}'s entry in {tmp_path / 'runs.sqlite'}")
    assert "rebuilt it from" in repaired and "record.json" in repaired
    assert lost.startswith(f"warning: run {runs[0]}'s entry in {tmp_path / 'runs.sqlite'}")
    for words in ("cannot be rebuilt", "the other runs are fine", "runs.sqlite.bak"):
        assert words in lost
    assert {r["run_id"] for r in last_json(proc)} == set(runs[1:])
    proc = cli("runs", "--runs-dir", str(tmp_path), check=False)  # the repaired row stays so
    _one_line(proc, [f"run {runs[0]}'s entry", "cannot be rebuilt"], code=0)
    proc = cli("show", runs[0], "--runs-dir", str(tmp_path), check=False)
    _one_line(proc, ["error: run", "is damaged (its config_json is not valid JSON)"])
    assert last_json(cli("show", runs[1], "--runs-dir", str(tmp_path), "--json"))["config"]
    cli("delete", runs[0], "--yes", "--runs-dir", str(tmp_path))  # the advised way out
    assert not cli("runs", "--runs-dir", str(tmp_path)).stderr.strip()


@pytest.mark.parametrize("command", [["runs"], ["train", "--epochs", "1"], ["runs", "--json"]])
@pytest.mark.parametrize("where", ["file", "under a file"])
def test_a_studio_home_that_is_a_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], where: str
) -> None:
    from tests.helpers import cli

    blocker = tmp_path / "studio"
    blocker.write_text("a file")
    home = blocker if where == "file" else blocker / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(home))
    proc = cli(*command, check=False)
    expected = "is a file, not a folder" if where == "file" else f"lies under {blocker}"
    _one_line(proc, [f"The studio's home {home} (set by TRANSFER_STUDIO_HOME)", expected,
                     "Set TRANSFER_STUDIO_HOME to a folder"])  # fmt: skip


def test_datasets_needs_no_studio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing the built-ins writes nothing: a home that is a file does not stop it."""
    from tests.helpers import cli, last_json

    (tmp_path / "studio").write_text("a file")
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "studio"))
    proc = cli("datasets", "--json")
    assert "Traceback" not in proc.stderr
    assert {d["source"] for d in last_json(proc)} >= {"builtin:photos", "builtin:textures"}


@pytest.mark.slow
def test_the_dashboard_starts_on_a_damaged_store_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import sqlite3

    from streamlit.testing.v1 import AppTest

    from app.views.text import md_unescape
    from tests.helpers import ROOT

    runs = _stored_runs(tmp_path)
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.execute("UPDATE runs SET config_json = 'x' WHERE run_id = ?", (runs[0],))
    shutil.rmtree(tmp_path / "runs" / runs[0])
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = " ".join(md_unescape(e.value) for e in [*at.warning, *at.error])
    assert f"run {runs[0]}'s entry in {tmp_path / 'runs.sqlite'} is damaged" in shown
    cells = {str(v) for v in at.dataframe[0].value.to_numpy().ravel()}  # the recent runs
    assert set(runs[1:]) <= cells and runs[0] not in cells
