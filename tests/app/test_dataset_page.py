"""The Data page's "Your dataset" (``app.data.dataset_builder``) under AppTest: create a dataset,
name its classes (bad names refused with a message, HTML shown as text), add images per class by
files, folder and camera (counts, duplicates, skipped files), rename, delete with a confirmation,
undo, use it, import a source once, two sessions editing at once; plus ``app.views.review``'s
helpers for all that."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.views import review as views
from app.views.text import md_escape, md_unescape
from core.data import datasets

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120


def _png(i: int, side: int = 24) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (i * 37 % 256, (i * 91) % 256, 120)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def studio(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(home))
    return home


def _builder() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/data.py").run()
    at.session_state["kind"] = "Your dataset"
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _texts(elements) -> list[str]:
    return [md_unescape(e.value) for e in elements]


def _create(at: AppTest, name: str) -> None:
    at.text_input(key="builder_new_name").input(name).run()
    at.button(key="builder_create").click().run()
    _ok(at)


def _add_class(at: AppTest, name: str) -> None:
    at.text_input(key="builder_class_name").input(name).run()
    at.button(key="builder_add_class").click().run()
    _ok(at)


def _counts(name: str) -> dict[str, int]:
    return {c["name"]: c["images"] for c in datasets.show(name)["classes"]}


# --------------------------------------------------------------------------- the page


@pytest.mark.slow
def test_create_name_classes_and_refuse_bad_names(studio) -> None:
    at = _builder()
    assert at.selectbox(key="builder_pick").value == "\x00new"  # no dataset yet: New
    _create(at, "pets")
    assert at.selectbox(key="builder_pick").value == "pets"
    assert "Created dataset **pets**. Add its classes below." in _texts(at.success)

    html = "<b>cats<i>"  # HTML and Markdown in a name: kept, shown as typed
    _add_class(at, html)
    _add_class(at, "**dogs**")
    assert datasets.open_dataset("pets").classes() == [html, "**dogs**"]
    shown = [m.value for m in at.markdown]
    assert f"**{md_escape(html, inline=True)}**" in shown  # escaped: displayed literally
    assert f"**{md_escape('**dogs**', inline=True)}**" in shown
    assert not any("<b>" in m.value for m in at.markdown)  # never raw HTML

    for bad, words in (
        ("", "is empty"),
        ("  ", "is empty"),
        ("a/b", "contains a slash"),
        ("..", "reserved folder name"),
        (".hidden", "starts with a dot"),
        ("tab\there", "control character"),
        ("train", "is reserved"),
        ("<B>CATS<I>", "already has a class"),  # the same name in another case
    ):
        _add_class(at, bad)
        (error,) = at.error
        assert words in md_unescape(error.value), (bad, error.value)
        assert at.text_input(key="builder_class_name").value == bad  # nothing typed is lost
    assert len(datasets.open_dataset("pets").classes()) == 2

    # A dataset name that exists: refused, the name stays typed.
    at.selectbox(key="builder_pick").set_value("\x00new").run()
    assert at.text_input(key="builder_new_name").value == ""  # cleared once it was created
    _create(at, "PETS")
    assert "already exists" in at.error[0].value
    assert at.text_input(key="builder_new_name").value == "PETS"


@pytest.mark.slow
def test_add_images_per_class_with_counts_duplicates_and_skips(studio) -> None:
    at = _builder()
    _create(at, "toys")
    _add_class(at, "cars")
    _add_class(at, "dolls")
    assert at.selectbox(key="builder_target").value == "cars"
    files = at.file_uploader(key="builder_files_toys_cars")
    assert files.accept_multiple_files
    files.set_value(
        [("a.png", _png(1), "image/png"), ("b.png", _png(2), "image/png"),
         ("again.png", _png(1), "image/png"), ("notes.png", b"not an image", "image/png")]
    ).run()  # fmt: skip
    _ok(at)
    assert _counts("toys") == {"cars": 2, "dolls": 0}
    assert "Added 2 images to **cars**." in _texts(at.success)
    assert any("1 exact duplicate" in t for t in _texts(at.info))
    assert any("Skipped 1 file" in t for t in _texts(at.warning))
    (problems,) = (d.value for d in at.dataframe)
    assert list(problems["file"]) == ["again.png", "notes.png"]
    assert list(problems["what"]) == ["duplicate", "skipped"]
    assert "same picture as image" in problems["why"].iloc[0]
    assert "2 images" in [m.value for m in at.markdown]  # the running count in the list
    at.run()  # the uploader keeps its files: nothing is added twice
    assert _counts("toys") == {"cars": 2, "dolls": 0}

    # A whole folder (directory upload) into the other class.
    at.selectbox(key="builder_target").set_value("dolls").run()
    folder = at.file_uploader(key="builder_folder_toys_dolls")
    assert folder.accept_directory
    folder.set_value([(f"{i}.png", _png(10 + i), "image/png") for i in range(3)]).run()
    _ok(at)
    assert _counts("toys") == {"cars": 2, "dolls": 3}

    # The camera: each picture is shown first; Retake drops it, Keep adds it; then a fresh one.
    at.toggle(key="builder_camera_on").set_value(True).run()
    at.camera_input(key="builder_camera_0").upload("photo.jpg", _jpeg(5)).run()
    _ok(at)
    assert _counts("toys") == {"cars": 2, "dolls": 3}  # shown, not added yet
    assert at.button(key="builder_camera_keep_0").label == "Keep: add to dolls"
    at.button(key="builder_camera_retake_0").click().run()
    _ok(at)
    assert _counts("toys") == {"cars": 2, "dolls": 3}  # retaken: never added
    at.camera_input(key="builder_camera_1").upload("photo.jpg", _jpeg(6)).run()
    at.button(key="builder_camera_keep_1").click().run()
    _ok(at)
    assert _counts("toys") == {"cars": 2, "dolls": 4}
    assert at.camera_input(key="builder_camera_2")  # ready for the next picture

    # Undo reverts the last edit (the kept picture), and says so.
    undo = at.button(key="builder_undo")
    assert "added 1 image to class" in md_unescape(undo.label)
    undo.click().run()
    _ok(at)
    assert _counts("toys") == {"cars": 2, "dolls": 3}
    assert any(t.startswith("Undone: added 1 image") for t in _texts(at.success))


def _jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, i * 40 % 256, 30)).save(out, format="JPEG")
    return out.getvalue()


def test_rename_and_delete_with_confirmation_then_undo(studio) -> None:
    with datasets.create("zoo") as ds:
        ds.add_images("lions", [("l.png", _png(1))], create_class=True)
        ds.add_images("tigers", [("t.png", _png(2)), ("t2.png", _png(3))], create_class=True)
    at = _builder()
    assert at.selectbox(key="builder_pick").value == "zoo"
    at.text_input(key="builder_rename_zoo_lions").input("big cats").run()
    at.button(key="builder_rename_go_zoo_lions").click().run()
    _ok(at)
    assert datasets.open_dataset("zoo").classes() == ["big cats", "tigers"]
    assert "Renamed class **lions** to **big cats**." in _texts(at.success)

    at.button(key="builder_delete_zoo_tigers").click().run()
    (warning,) = _texts(at.warning)
    assert "Delete class **tigers**?" in warning and "set aside, not deleted" in warning
    assert "Runs trained on this dataset keep their model and labels" in warning
    at.button(key="builder_delete_no").click().run()  # Cancel: nothing happens
    assert not at.warning and _counts("zoo") == {"big cats": 1, "tigers": 2}
    at.button(key="builder_delete_zoo_tigers").click().run()
    at.button(key="builder_delete_yes").click().run()
    _ok(at)
    assert _counts("zoo") == {"big cats": 1}
    assert datasets.show("zoo")["excluded"] == 2  # set aside, not deleted
    at.button(key="builder_undo").click().run()
    assert _counts("zoo") == {"big cats": 1, "tigers": 2}


@pytest.mark.slow
def test_missing_files_are_named_and_forgotten_with_one_click_then_undone(studio) -> None:
    with datasets.create("zoo") as ds:
        ds.add_images("lions", [("leo.png", _png(1)), ("l2.png", _png(4))], create_class=True)
        ds.add_images("tigers", [("t.png", _png(2)), ("t2.png", _png(3))], create_class=True)
        gone = next(i for i in ds.images() if i.original_name == "leo.png")
    Path(gone.path).unlink()  # removed outside the studio
    at = _builder()
    (warning,) = _texts(at.warning)
    assert "1 image is missing" in warning and "leo.png" in warning
    assert at.metric[1].value == "3"  # counted from the files on disk
    at.button(key="builder_forget_missing").click().run()
    _ok(at)
    assert "Forgot 1 missing image (Undo brings them back)." in _texts(at.success)
    assert not at.warning and datasets.show("zoo")["missing"] == []
    at.button(key="builder_undo").click().run()
    assert len(datasets.show("zoo")["missing"]) == 1


@pytest.mark.slow
def test_use_this_dataset_makes_it_the_data_in_use(studio) -> None:
    with datasets.create("pets") as ds:
        for k, cls in enumerate(("cats", "dogs")):
            ds.add_images(cls, [(f"{i}.png", _png(10 * k + i)) for i in range(5)], True)
    at = _builder()
    at.button(key="builder_use").click().run()
    _ok(at)
    assert at.session_state["data_source"] == "dataset:pets"
    assert at.button(key="builder_use").disabled  # in use already
    assert [md_unescape(s.value) for s in at.subheader] == ["In use: pets"]
    assert "Your dataset · dataset:pets" in _texts(at.caption)
    assert any("**In use:** pets (your dataset)" in m.value for m in at.markdown)
    assert {m.label: m.value for m in at.metric}["Training images"] == "8"
    # An edit shows at once on the Data page (no stale cached scan).
    at.text_input(key="builder_class_name").input("birds").run()
    at.button(key="builder_add_class").click().run()
    at.file_uploader(key="builder_files_pets_cats").upload("new.png", _png(77), "image/png").run()
    _ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "11"
    assert int(metrics["Training images"]) + int(metrics["Validation images"]) == 11
    fresh = AppTest.from_file(APP, default_timeout=TIMEOUT).run()  # a refresh keeps it
    fresh.switch_page("pages/data.py").run()
    assert fresh.session_state["kind"] == "Your dataset"
    assert fresh.selectbox(key="builder_pick").value == "pets"


@pytest.mark.slow
def test_a_newcomer_is_not_told_to_use_a_dataset_that_does_not_exist(studio) -> None:
    at = _builder()
    (hint,) = [i.value for i in at.info if "Use this dataset" in i.value]
    assert hint.startswith("Create a dataset above")  # not "click Use this dataset" at once
    assert at.selectbox(key="builder_import_source").value is None  # no built-in preselected
    assert "builder_import_go" not in [b.key for b in at.button]  # nothing to import yet
    _create(at, "empty")
    assert at.button(key="builder_use").disabled  # 0 classes: nothing to use
    _add_class(at, "cats")
    assert at.button(key="builder_use").disabled  # a class with no image: still nothing
    at.file_uploader(key="builder_files_empty_cats").upload("a.png", _png(1), "image/png").run()
    _ok(at)
    assert not at.button(key="builder_use").disabled
    (hint,) = [i.value for i in at.info if "Use this dataset" in i.value]
    assert hint.startswith("Pick a dataset and click **Use this dataset**")


@pytest.mark.slow
def test_import_a_builtin_and_a_zip_named_after_the_source(studio) -> None:
    at = _builder()
    assert at.selectbox(key="builder_import_source").value is None  # nothing chosen for them
    at.selectbox(key="builder_import_source").set_value("builtin:photos").run()
    at.button(key="builder_import_go").click().run()
    _ok(at)
    assert at.selectbox(key="builder_pick").value == "photos"
    assert any(t.startswith("Imported **photos**:") for t in _texts(at.success))
    at.selectbox(key="builder_pick").set_value("\x00new").run()
    at.text_input(key="builder_import_name").input("photos").run()  # a name that exists
    at.button(key="builder_import_go").click().run()
    assert "already exists" in at.error[0].value
    assert datasets.dataset_names() == ["photos"]

    # A zip dropped on its tab: "Make it a dataset you can edit" names it after the zip.
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for k, cls in enumerate(("red", "blue")):
            for i in range(3):
                zf.writestr(f"{cls}/{i}.png", _png(50 * k + i))
    at.session_state["kind"] = "Zip upload"
    at.run()
    at.file_uploader(key="zip").upload("holiday.zip", archive.getvalue(), "application/zip").run()
    assert at.text_input(key="import_selected_name").placeholder == "holiday"
    at.button(key="import_selected_go").click().run()
    _ok(at)
    assert at.session_state["kind"] == "Your dataset"
    assert at.selectbox(key="builder_pick").value == "holiday"
    assert _counts("holiday") == {"blue": 3, "red": 3}


@pytest.mark.slow
def test_two_sessions_editing_one_dataset_keep_both_edits_in_order(studio) -> None:
    with datasets.create("shared") as ds:
        ds.add_class("a")
    one, two = _builder(), _builder()
    _add_class(one, "from one")
    _add_class(two, "from two")  # its page was drawn before the first edit
    one.file_uploader(key="builder_files_shared_a").upload("x.png", _png(1), "image/png").run()
    two.file_uploader(key="builder_files_shared_a").upload("y.png", _png(2), "image/png").run()
    _ok(one)
    _ok(two)
    with datasets.open_dataset("shared") as ds:
        assert ds.classes() == ["a", "from one", "from two"]
        assert [e["summary"] for e in ds.edits()][-4:] == [
            "added class 'from one'", "added class 'from two'",
            "added 1 image to class 'a'", "added 1 image to class 'a'",
        ]  # fmt: skip
    one.run()  # the other session's edits show on the next run
    assert "from two" in [md_unescape(m.value).strip("*") for m in one.markdown]


# --------------------------------------------------------------------------- pure helpers


def test_free_name_adds_a_number_when_taken() -> None:
    assert views.free_name("photos", []) == "photos"
    assert views.free_name("photos", ["Photos"]) == "photos 2"
    assert views.free_name("photos", ["photos", "photos 2"]) == "photos 3"


def test_add_notices_and_problem_rows() -> None:
    result = {
        "added": ["a", "b"],
        "duplicates": [{"path": "x.png", "id": "a", "class": "c", "reason": "same picture"}],
        "skipped": [{"path": "<b>.txt", "reason": "not an image"}],
    }
    notices = views.add_notices("**c**", result)
    assert [n.level for n in notices] == ["success", "info", "warning"]
    assert notices[0].text == f"Added 2 images to **{md_escape('**c**', inline=True)}**."
    assert views.add_problem_rows(result) == [
        {"file": "x.png", "what": "duplicate", "why": "same picture"},
        {"file": "<b>.txt", "what": "skipped", "why": "not an image"},
    ]
    assert views.add_notices("c", {})[0].text == "No file was given."


def test_delete_warning_and_last_edit() -> None:
    text = views.delete_warning("<i>x", 3, 2)
    assert md_escape("<i>x", inline=True) in text and "<i>" not in text
    assert "Its 3 images are set aside" in text and "2 runs trained on this dataset" in text
    edits = [{"seq": 1, "undone": False}, {"seq": 2, "undone": True}]
    assert views.last_edit(edits) == edits[0]
    assert views.last_edit([]) is None
