"""Managed datasets under faults: special files in folders, kills mid-edit, a lost or damaged
index, files removed behind the studio's back, invisible characters in names, leftover copies."""

from __future__ import annotations

import io
import os
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from core import cli
from core.data import datasets
from core.data.datasets import Dataset, create
from core.data.names import display_name
from core.errors import DataError
from core.paths import data_cache_dir
from tests.helpers import write_pngs

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
HANG_TIMEOUT_S = 20


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own studio home, hence its own datasets."""
    folder = tmp_path / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(folder))
    return folder


@pytest.fixture
def pets(tmp_path: Path) -> Iterator[Dataset]:
    """Dataset 'pets' with classes cats (4 images) and dogs (3)."""
    write_pngs(tmp_path / "pics" / "a", 4)
    write_pngs(tmp_path / "pics" / "b", 3, side=30)
    ds = create("pets")
    ds.add_images("cats", [tmp_path / "pics" / "a"], create_class=True)
    ds.add_images("dogs", [tmp_path / "pics" / "b"], create_class=True)
    yield ds
    ds.close()


def _jpeg(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (seed % 256, 40, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _without_hanging(work: Callable[[], object], fifos: list[Path]) -> object:
    """``work()``'s result; fails (not hangs) if it blocks, e.g. reading a FIFO."""
    out: list[object] = []

    def target() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_TIMEOUT_S)
    if thread.is_alive():
        for fifo in fifos:  # release a reader blocked in open(): it then sees end of file
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(5)
        pytest.fail(f"blocked for more than {HANG_TIMEOUT_S} s (opened a FIFO?)")
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- special files


@needs_fifo
def test_a_fifo_named_like_an_image_in_a_folder_is_skipped_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(_jpeg())
    os.mkfifo(folder / "a.jpg")
    create("pets").close()
    result = _without_hanging(
        lambda: _cli(["dataset", "add", "pets", "cats", str(folder)], capsys), [folder / "a.jpg"]
    )
    code, out, err = result  # type: ignore[misc]
    assert code == 0
    assert "added 1 image to 'cats'" in out and "1 skipped" in out
    assert f"skipped {folder / 'a.jpg'}: not a regular file (FIFO)" in err
    assert not list((datasets.dataset_path("pets") / ".staging").glob("*"))

    # The folder checks of the Data page do not count it as an image either.
    from core.data.sources import check_folder

    (tmp_path / "tree" / "cats").mkdir(parents=True)
    os.mkfifo(tmp_path / "tree" / "cats" / "x.jpg")
    assert not check_folder(str(tmp_path / "tree")).ok


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f"])
def test_bidi_controls_are_refused_in_names_saying_which_and_how_to_fix(char: str) -> None:
    name = f"cat{char}gpj.exe"
    with pytest.raises(DataError) as caught:
        create(name)
    message = str(caught.value)
    assert f"U+{ord(char):04X}" in message and "Type the name again without it" in message
    assert char not in message  # the error itself shows it escaped
    assert datasets.dataset_names() == []
    with pytest.raises(DataError, match=f"U\\+{ord(char):04X}"):
        datasets.check_class_name(name)
    assert char not in datasets.suggest_name(f"/x/{name}.zip")


def test_names_stored_before_the_rule_are_printed_escaped(
    pets: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    # A name that got in before the rule (or by hand): written straight into the index.
    pets._db.execute("UPDATE classes SET name = 'cats\u202eevil' WHERE name = 'cats'")
    folder = pets.folder
    (folder / "images" / "cats").rename(folder / "images" / "cats\u202eevil")
    evil_home = folder.parent / "pe\u202ets"
    folder.rename(evil_home)
    for argv in (["dataset", "list"], ["dataset", "show", "pe\u202ets", "--images"]):
        code, out, err = _cli(argv, capsys)
        assert code == 0, err
        assert "\u202e" not in out and "\\u202e" in out
    assert display_name("dataset:pe\u202ets") == "pe\\u202ets"


# --------------------------------------------------------------------------- zips


def test_importing_a_zip_leaves_no_extracted_copy_behind(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    write_pngs(pics / "cats", 3)
    write_pngs(pics / "dogs", 2, side=30)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(pics.rglob("*.png")):
            zf.write(path, path.relative_to(pics).as_posix())
    with create("photos", str(archive)) as ds:
        assert ds.show()["images"] == 5
    zips = data_cache_dir() / "zips"
    assert not zips.exists() or not [p for p in zips.iterdir() if not p.name.startswith(".")]
    assert not zips.exists() or not list(zips.iterdir())

    # An extraction made before (a run on the zip may read it) is left where it is.
    from core.data.archives import extract_zip

    kept = extract_zip(archive)
    with create("photos 2", str(archive)) as ds:
        assert ds.show()["images"] == 5
    assert kept.is_dir()
