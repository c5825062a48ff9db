"""Data names people recognise, the folder and Kaggle checks, and the Data page that uses them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.views.text import md_unescape
from core.data import sources
from core.data.names import display_name, uploaded_name
from core.data.sources import (
    check_folder,
    check_source,
    kaggle_source,
    parse_source,
    recent_sources,
    remember_source,
)
from core.data.uploads import save_upload
from core.errors import DataError
from tests.helpers import write_pngs

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120


# --------------------------------------------------------------------------- display names


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("builtin:photos", "photos"),
        (" builtin:textures ", "textures"),
        ("/x/y/pets/", "pets"),
        ("~/pets", "pets"),
        ("/x/cats.zip", "cats.zip"),
        ("kaggle:owner/cat-and-dog", "cat-and-dog"),
        ("kaggle:owner/cat-and-dog/versions/3", "cat-and-dog v3"),
        ("https://www.kaggle.com/datasets/owner/slug/", "slug"),
        (
            "/home/me/.transfer_studio/data/uploads/upload-5b4636be56106d53.zip",
            "upload 5b4636be.zip",
        ),
        ("C:\\data\\birds", "birds"),
        ("relative/folder", "folder"),
        ("/a/" + "n" * 80, "n" * 59 + "…"),
        ("", "no data"),
        (None, "no data"),
        (42, "no data"),
    ],
)
def test_display_name(source, name) -> None:
    assert display_name(source) == name


def test_an_upload_shows_the_name_the_user_gave(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    stored = save_upload(b"PK\x03\x04 zip bytes", original_name="C:\\Users\\me\\photos.zip")
    assert stored.name.startswith("upload-") and stored.parent.name == "uploads"  # hash-named
    assert display_name(str(stored)) == "photos.zip"
    again = save_upload(b"PK\x03\x04 zip bytes", original_name="holiday.zip")
    assert again == stored and display_name(str(stored)) == "holiday.zip"  # the latest name
    assert save_upload(b"PK\x03\x04 zip bytes") == stored  # no name given: the last one stays
    assert display_name(str(stored)) == "holiday.zip"
    Path(str(stored) + ".json").write_text("{not json")  # a damaged sidecar: a short default
    assert uploaded_name(stored) is None
    assert display_name(str(stored)) == f"upload {stored.name[7:15]}.zip"


# --------------------------------------------------------------------------- folder check


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    for cls in ("cats", "dogs"):
        write_pngs(tmp_path / "good" / cls, 2)
        write_pngs(tmp_path / "split" / "train" / cls, 2)
        write_pngs(tmp_path / "split" / "val" / cls, 1)
        write_pngs(tmp_path / "wrapped" / "inner" / "data" / cls, 1)
        write_pngs(tmp_path / "three" / cls, 1)
    (tmp_path / "three" / "notes").mkdir()
    (tmp_path / "three" / "notes" / "readme.txt").write_text("not an image")
    write_pngs(tmp_path / "flat", 3)
    write_pngs(tmp_path / "one" / "cats", 2)
    (tmp_path / "one" / "empty").mkdir()
    (tmp_path / "nothing").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "data.zip").write_bytes(b"PK")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "ok", "words"),
    [
        ("good", True, "2 class folders: cats, dogs."),
        ("three", False, "the class folder 'notes' holds no images. Add images to it, or move"),
        ("split", True, "2 class folders (in train): cats, dogs."),
        ("wrapped", True, "2 class folders (in inner/data): cats, dogs."),
        ("missing/deeper", False, "Folder not found: "),
        ("file.txt", False, "is a file, not a folder"),
        ("data.zip", False, "is a zip file, not a folder. Drop it on the Zip upload tab"),
        ("flat", False, "holds 3 images but no class folders"),
        ("one", False, "has 2 sub-folders but only 'cats' holds images. At least two"),
        ("nothing", False, "has no sub-folders and no images"),
    ],
)
def test_check_folder_says_what_is_wrong_in_folder_words(folders, name, ok, words) -> None:
    check = check_folder(str(folders / name))
    assert check.ok is ok
    assert words in check.message
    assert "builtin:" not in check.message and "kaggle:" not in check.message
    if name == "missing/deeper":
        assert f"{folders} exists: check the spelling of the rest" in check.message


def test_check_folder_of_nothing_typed_asks_for_a_path() -> None:
    for typed in ("", "  "):
        check = check_folder(typed)
        assert not check.ok and check.message.startswith("Type the path of a folder")


# --------------------------------------------------------------------------- kaggle handles


@pytest.mark.parametrize(
    "typed",
    [
        "owner/slug",
        " kaggle:owner/slug ",
        "https://www.kaggle.com/datasets/owner/slug",
        "owner/slug/",
    ],
)
def test_kaggle_handles_are_understood_with_or_without_the_prefix(typed) -> None:
    assert kaggle_source(typed) == "kaggle:owner/slug"


def test_a_bare_owner_slug_is_a_kaggle_source_unless_such_a_folder_exists(
    tmp_path, monkeypatch
) -> None:
    assert parse_source("owner/slug/versions/2") == ("kaggle", "owner/slug/versions/2")
    check_source("owner/slug")  # well formed: nothing to download yet
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "slug").mkdir(parents=True)
    assert parse_source("owner/slug")[0] == "folder"  # a folder of that name wins
    assert parse_source("./other/slug")[0] == "folder"  # written as a path: a path
    with pytest.raises(DataError, match="Malformed Kaggle handle"):
        kaggle_source("owner/slug/versions/0")
    with pytest.raises(DataError, match="Malformed Kaggle handle"):
        check_source("kaggle:not a handle")


def _offline(monkeypatch) -> None:
    import kagglehub
    import requests

    def offline(*_args: object, **_kwargs: object) -> str:
        raise requests.exceptions.ConnectionError("no network")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)


def test_the_pinned_version_error_suggests_something_else_than_what_was_typed(
    tmp_path, monkeypatch
) -> None:
    cache = tmp_path / "kagglehub"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    _offline(monkeypatch)
    with pytest.raises(DataError) as err:
        sources.resolve_source("kaggle:owner/slug/versions/2")
    message = str(err.value)
    assert "Nothing is cached" in message and "Connect to the internet once" in message
    assert "versions/N" not in message  # not the pinned form the user just typed
    folder = cache / "datasets" / "owner" / "slug"
    write_pngs(folder / "versions" / "1" / "a", 1)
    (folder / "1.complete").touch()
    with pytest.raises(DataError) as err:
        sources.resolve_source("kaggle:owner/slug/versions/2")
    assert "Use a cached version instead (kaggle:owner/slug/versions/1)" in str(err.value)


# --------------------------------------------------------------------------- recent sources


def test_recent_sources_keep_existing_folders_newest_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    assert recent_sources() == []
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    for source in (str(first), "builtin:photos", str(second), str(first), "kaggle:o/s"):
        remember_source(source)
    assert recent_sources() == ["kaggle:o/s", str(first), str(second), "builtin:photos"]
    assert recent_sources("folder") == [str(first), str(second)]
    second.rmdir()  # a folder that is gone is not offered
    extra = [str(tmp_path / "from-a-run"), str(first)]
    (tmp_path / "from-a-run").mkdir()
    assert recent_sources("folder", extra) == [str(first), str(tmp_path / "from-a-run")]
    (tmp_path / "home" / sources.RECENT_FILE).write_bytes(b"\x00\xff")  # damaged: empty
    assert recent_sources("folder") == []
    remember_source(str(first))  # and it is rewritten on the next use
    assert json.loads((tmp_path / "home" / sources.RECENT_FILE).read_text()) == [str(first)]


# --------------------------------------------------------------------------- the Data page


@pytest.fixture
def studio(tmp_path, monkeypatch) -> Path:
    """A studio home of its own (the chosen data is kept per runs folder)."""
    home = tmp_path / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(home))
    return home


def _data_page(kind: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/data.py").run()
    if kind:
        at.session_state["kind"] = kind
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _headings(at: AppTest) -> list[str]:
    return [md_unescape(s.value) for s in at.subheader]


def _texts(elements) -> list[str]:
    """What the user reads in these elements (their Markdown escapes undone)."""
    return [md_unescape(e.value) for e in elements]


@pytest.mark.slow
def test_the_picked_data_is_selected_not_in_use_until_used(studio) -> None:
    at = _data_page()
    assert _headings(at) == ["Selected (not in use yet): photos"]  # nothing in use yet
    at.selectbox[0].select_index(2)  # textures
    at.button(key="use_data").click().run()
    assert at.session_state["data_source"] == "builtin:textures"
    assert _headings(at) == ["In use: textures"]
    assert at.button(key="use_data").disabled  # already in use
    at.selectbox[0].select_index(0).run()  # photos: picked, not used
    assert _headings(at) == ["Selected (not in use yet): photos", "In use: textures"]
    assert {m.label: m.value for m in at.metric}["Classes"] == "3"  # still the textures' report
    assert not at.button(key="use_data").disabled
    assert any("**In use:** textures" in m.value for m in at.markdown)
    fresh = _data_page()  # a new session (a browser refresh) keeps what is in use
    assert _headings(fresh) == ["In use: textures"]


def test_the_folder_tab_checks_the_folder_as_it_is_typed(studio, folders) -> None:
    at = _data_page("Local folder")
    at.text_input(key="folder").input(str(folders / "missing")).run()
    assert not at.exception
    (error,) = at.error
    assert "Folder not found" in error.value and "builtin" not in error.value
    assert at.button(key="use_data").disabled
    at.text_input(key="folder").input(str(folders / "flat")).run()
    assert "no class folders" in at.error[0].value
    at.text_input(key="folder").input(str(folders / "good")).run()
    assert not at.error and "2 class folders" in at.success[0].value
    assert _headings(at) == ["Selected (not in use yet): good"]
    at.button(key="use_data").click().run()
    assert at.session_state["data_source"] == str(folders / "good")
    assert _headings(at) == ["In use: good"]


def test_the_folder_tab_offers_folders_used_before(studio, folders) -> None:
    remember_source(str(folders / "split"))
    at = _data_page("Local folder")
    recent = at.selectbox(key="recent_folder")
    assert str(folders / "split") in recent.options[1]
    recent.set_value(str(folders / "split")).run()
    assert "2 class folders (in train)" in _texts(at.success)[0]
    assert _headings(at) == ["Selected (not in use yet): split"]


def test_the_kaggle_tab_understands_owner_slug(studio) -> None:
    at = _data_page("Kaggle")
    at.text_input(key="kaggle").input("owner/slug").run()
    assert not at.error, [e.value for e in at.error]
    assert "Understood as kaggle:owner/slug." in _texts(at.caption)
    assert _headings(at) == ["Selected (not in use yet): slug"]
    assert not at.button(key="use_data").disabled
    at.text_input(key="kaggle").input("owner/slug/versions/0").run()
    assert "Malformed Kaggle handle" in at.error[0].value


def test_a_dropped_zip_is_shown_by_its_own_name(studio) -> None:
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for cls in ("cats", "dogs"):
            for i, path in enumerate(write_pngs(studio.parent / "zsrc" / cls, 3)):
                zf.write(path, f"{cls}/{i}.png")
    at = _data_page("Zip upload")
    at.file_uploader(key="zip").upload("photos.zip", archive.getvalue(), "application/zip").run()
    assert _headings(at) == ["Selected (not in use yet): photos.zip"]
    at.button(key="use_data").click().run()
    assert not at.exception and not at.error
    assert _headings(at) == ["In use: photos.zip"]
    assert os.path.basename(at.session_state["data_source"]).startswith("upload-")


# --------------------------------------------------------------------------- leakage check


def _twinned(folder: Path) -> str:
    """Two classes of 12 distinct pictures; every 3rd picture of ``ants`` has a cropped,
    re-encoded twin in the same class."""
    import io

    from PIL import Image

    from tests.helpers import cropped_twin, smooth_picture

    for c, name in enumerate(("ants", "bees")):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(smooth_picture(100 * c + i)).save(folder / name / f"{i}.png")
    for i in range(0, 12, 3):
        twin = Image.open(io.BytesIO(cropped_twin(smooth_picture(i))))
        twin.convert("RGB").save(folder / "ants" / f"{i}-twin.jpg")
    return str(folder)


def _features_cached_for(source: str) -> int:
    """Fill the embedding cache entry of ``source``'s default split (the page's 0.2 and seed 42)
    for the Train form's default base, as a feature-extraction run would; how many planted
    pairs that split puts on both sides."""
    import numpy as np

    from core.config import RunConfig
    from core.data import load_dataset
    from core.files import sha256_file
    from core.training.feature_cache import embedding_cache_dir, source_features_key

    data = load_dataset(source, val_split=0.2, seed=42)
    config = RunConfig(data=source)
    paths = [*data.train_paths, *data.val_paths]
    key = source_features_key(config, config.resolved_image_size(), list(map(sha256_file, paths)))
    features = np.random.default_rng(0).normal(size=(len(paths), 16)).astype(np.float32)
    np.save(embedding_cache_dir() / f"{key}.npy", features)
    val = {os.path.basename(p) for p in data.val_paths}
    return sum((f"{i}.png" in val) != (f"{i}-twin.jpg" in val) for i in range(0, 12, 3))


def test_the_data_page_checks_for_leakage_by_itself(studio, tmp_path, monkeypatch) -> None:
    """With the features cached, a visit runs the check (no toggle) and shows the planted twins
    across the split; the next visit reads the stored result and decodes no picture."""
    from core.data import phash
    from core.paths import runs_root
    from core.runs.drafts import save_chosen_data

    source = _twinned(tmp_path / "data")
    save_chosen_data(runs_root(), source)
    at = _data_page()
    assert any("not checked (no cached" in c.value for c in at.caption)  # nothing cached yet
    across = _features_cached_for(source)
    assert across >= 1
    decoded: list[str] = []
    real = phash.signature_file
    monkeypatch.setattr(phash, "signature_file", lambda p: decoded.append(str(p)) or real(p))
    at = _data_page()
    said = [m.value for m in at.markdown if "near-copy in training" in m.value]
    assert len(said) == 1 and md_unescape(said[0]).split("] ", 1)[1].startswith(f"{across} of ")
    assert decoded  # the first check hashed the pictures
    assert not [t for t in at.toggle if t.key.startswith("leakage_check")]  # no toggle left
    captions = [c for image in at.get("image") for c in image.proto.imgs[0].caption.split("\n")]
    assert any(c.startswith("validation · ants · ants/") for c in captions)
    decoded.clear()
    again = _data_page()  # a new session: the stored result
    assert [m.value for m in again.markdown if "near-copy in training" in m.value] == said
    assert decoded == []
    again.button(key="leakage_recheck").click().run()  # checked again: cached hashes only
    assert not again.exception and decoded == []
    assert [m.value for m in again.markdown if "near-copy in training" in m.value] == said


@pytest.mark.slow  # the check's own process
def test_a_large_check_runs_in_the_background(studio, tmp_path, monkeypatch) -> None:
    """More pictures to hash than a visit may spend: the page starts the background task and
    shows its progress; once it is done the finding is on the page."""
    from core.paths import runs_root
    from core.runs.drafts import save_chosen_data
    from core.tasks import task_state, wait_task
    from core.training import source_leakage

    monkeypatch.setattr(source_leakage, "INLINE_HASHES", 0)
    source = _twinned(tmp_path / "data")
    save_chosen_data(runs_root(), source)
    across = _features_cached_for(source)
    at = _data_page()
    assert not [m for m in at.markdown if "near-copy in training" in m.value]  # not inline
    (bar,) = at.get("progress")  # the child process is still starting Python
    assert "pictures hashed" in bar.proto.text
    assert wait_task(runs_root(), source_leakage.TASK, timeout=120)
    assert task_state(runs_root(), source_leakage.TASK)["status"] == "done"
    at = _data_page()
    said = [md_unescape(m.value) for m in at.markdown if "near-copy in training" in m.value]
    assert len(said) == 1 and said[0].split("] ", 1)[1].startswith(f"{across} of ")
