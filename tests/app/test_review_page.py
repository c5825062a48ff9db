"""The Run page's Review (``app.review_panel``) under AppTest against real tiny runs: suspects per
class, relabel / exclude / keep changing the dataset and the list, Undo, "Retrain with these
fixes" queuing a run on ``dataset:...`` and Compare showing before and after, the embedding map,
a managed copy made on an unmanaged source's first edit; Predict's "Add to dataset…"; and the
pure shaping in ``app.views.review``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.views import review as views
from app.views.text import md_escape, md_unescape
from core.data import datasets
from core.training.review import MapPoint, Review, Suspect
from tests.helpers import TINY, stop_studio_workers

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 180


def _png(rgb: tuple[int, int, int], seed: int, side: int = 32) -> bytes:
    noise = np.random.default_rng(seed).integers(-25, 25, (side, side, 3))
    pixels = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _images(colour: tuple[int, int, int], n: int, start: int) -> list[tuple[str, bytes]]:
    return [(f"{start + i}.png", _png(colour, start + i)) for i in range(n)]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A studio home with dataset "toy" (red vs blue, two reds filed as blue) and a folder
    "shots"; one finished tiny run on each. Yields (queue, toy run id, folder run id, home)."""
    home = tmp_path_factory.mktemp("review-home")
    folder = home.parent / "shots"
    for k, (cls, colour) in enumerate((("red", (220, 30, 30)), ("blue", (30, 30, 220)))):
        (folder / cls).mkdir(parents=True)
        for name, data in _images(colour, 8, 100 * k + 500):
            (folder / cls / name).write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFER_STUDIO_HOME", str(home))
        with datasets.create("toy") as ds:
            ds.add_images("red", _images((220, 30, 30), 10, 0), create_class=True)
            ds.add_images("blue", _images((30, 30, 220), 10, 100), create_class=True)
            ds.add_images("blue", _images((220, 30, 30), 2, 200))  # mislabelled
        from core.training.jobs import get_job_queue

        queue = get_job_queue(home)
        toy = queue.submit(TINY.with_changes(data="dataset:toy", name="toy run"))
        shots = queue.submit(TINY.with_changes(data=str(folder), name="shots run"))
        assert queue.wait(toy, timeout=300) == "completed"
        assert queue.wait(shots, timeout=300) == "completed"
        try:
            yield queue, toy, shots, home
        finally:
            stop_studio_workers(home)  # the page's retrain may have started a worker process


def _run_page(run_id: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.query_params["run"] = run_id
    at.switch_page("pages/run.py").run()
    at.toggle(key=f"review_on_{run_id}").set_value(True).run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _texts(elements) -> list[str]:
    return [md_unescape(e.value) for e in elements]


def _original_name(dataset: str, image: str) -> str:
    with datasets.open_dataset(dataset) as ds:
        return next(i.original_name for i in ds.images() if i.id == image)


def _card_ids(at: AppTest) -> list[str]:
    """Image ids with a card on the page (from their Keep buttons' keys), in page order."""
    prefix = "review_s_keep_"
    keys = [b.key or "" for b in at.button]
    return [key[len(prefix) :] for key in keys if key.startswith(prefix)]


@pytest.mark.slow
def test_review_relabel_exclude_keep_undo_and_retrain(studio) -> None:
    from core.training.review import review_run

    queue, run_id, _, _ = studio
    at = _run_page(run_id)
    assert "Edits go to your dataset **toy**." in [i.value for i in at.info]
    headings = [m.value for m in at.markdown if "most suspicious" in m.value]
    assert {h.split("**")[1] for h in headings} == {"red", "blue"}  # per class
    ids = _card_ids(at)
    assert len(ids) == 8  # 4 per class by default
    review = review_run(queue.store, run_id)
    first = {s.image: s for s in review.suspects}
    assert set(ids) <= set(first)
    assert any("given **blue** · predicted" in m.value for m in at.markdown)

    # Relabel: the dataset changes, and the image leaves its class's list.
    image = ids[0]
    old = first[image].label
    to = "red" if old == "blue" else "blue"
    at.selectbox(key=f"review_s_to_{image}").set_value(to)
    at.button(key=f"review_s_relabel_{image}").click().run()
    _ok(at)
    shown = md_escape(_original_name("toy", image), inline=True)  # as added, not its hash
    assert f"Relabelled **{shown}** to **{to}**." in [s.value for s in at.success]
    with datasets.open_dataset("toy") as ds:
        assert {i.id: i.label for i in ds.images()}[image] == to
    now = {s.image: s for s in review_run(queue.store, run_id).suspects}
    assert image not in now or now[image].label == to

    # Exclude: set aside (not deleted), gone from the list, and the page says which is gone.
    gone = next(i for i in _card_ids(at) if i != image)
    at.button(key=f"review_s_exclude_{gone}").click().run()
    _ok(at)
    assert gone not in _card_ids(at)
    with datasets.open_dataset("toy") as ds:
        assert {i.id: i.excluded for i in ds.images()}[gone] is True
    assert any("no longer in use" in w and gone in w for w in _texts(at.warning))

    # Keep: marked reviewed, listed after the others.
    kept = _card_ids(at)[0]
    at.button(key=f"review_s_keep_{kept}").click().run()
    _ok(at)
    with datasets.open_dataset("toy") as ds:
        assert {i.id: i.reviewed for i in ds.images()}[kept] is True
    assert review_run(queue.store, run_id).suspects[-1].image == kept

    # Undo reverts the last edit (the keep).
    at.button(key=f"review_undo_{run_id}").click().run()
    _ok(at)
    assert any(s.startswith("Undone: kept 1 image") for s in _texts(at.success))
    with datasets.open_dataset("toy") as ds:
        assert {i.id: i.reviewed for i in ds.images()}[kept] is False

    # Retrain with these fixes: the same settings on dataset:toy, and a link to Compare.
    at.button(key=f"review_retrain_{run_id}").click().run()
    _ok(at)
    new_id = at.session_state["run_id"]
    assert new_id != run_id
    config = queue.store.config(new_id)
    assert config.data == "dataset:toy" and config.name == "toy run · fixed"
    assert config.backbone == TINY.backbone and config.image_size == TINY.image_size
    links = [link.proto for link in at.get("page_link")]
    compare = next(link for link in links if link.label == "Compare before and after")
    assert compare.query_string == f"runs={run_id}%2C{new_id}"
    at.button(key=f"review_retrain_{run_id}").click().run()  # a second click: no second run
    assert at.session_state["run_id"] == new_id
    assert queue.wait(new_id, timeout=300) == "completed"

    # Compare, opened from that link, starts with both runs.
    page = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    page.query_params["runs"] = views.compare_param([run_id, new_id])
    page.switch_page("pages/compare.py").run()
    _ok(page)
    assert page.multiselect(key="compare_runs").value == [run_id, new_id]


@pytest.mark.slow
def test_review_after_the_dataset_changed_and_a_class_was_deleted(studio) -> None:
    queue, run_id, _, _ = studio
    with datasets.open_dataset("toy") as ds:
        ds.add_images("red", _images((200, 60, 60), 1, 900))  # new since the run
        ds.add_class("green")
        ds.delete_class("green")  # a class the run never had
    at = _run_page(run_id)
    warnings = _texts(at.warning)
    assert any("new since this run trained" in w for w in warnings)
    with datasets.open_dataset("toy") as ds:
        ds.delete_class("blue")  # a class the run used: the run and its model stay usable
    try:
        at = _run_page(run_id)
        assert any("no longer in use" in w for w in _texts(at.warning))
        assert {m.label: m.value for m in at.metric}["Validation accuracy"].endswith("%")
    finally:
        with datasets.open_dataset("toy") as ds:
            ds.undo()  # the blue class back, for the other tests


@pytest.mark.slow
def test_relabel_to_a_class_deleted_meanwhile_says_so_and_changes_nothing(studio) -> None:
    _, run_id, _, _ = studio
    with datasets.open_dataset("toy") as ds:
        ds.add_class("<b>green")
    at = _run_page(run_id)
    image = _card_ids(at)[0]
    at.selectbox(key=f"review_s_to_{image}").set_value("<b>green").run()
    with datasets.open_dataset("toy") as ds:  # another session deletes it meanwhile
        ds.delete_class("<b>green")
        labels = {i.id: i.label for i in ds.images()}
    at.button(key=f"review_s_relabel_{image}").click().run()
    assert not at.exception
    (error,) = _texts(at.error)
    assert "has no class '<b>green'" in error and "Pick one of those" in error
    assert not any("<b>" in e.value for e in at.error)  # shown as text
    with datasets.open_dataset("toy") as ds:
        assert {i.id: i.label for i in ds.images()} == labels
        ds.undo()  # the deletion
        ds.undo()  # the addition


@pytest.mark.slow
def test_many_classes_show_the_most_suspicious_first(studio, monkeypatch) -> None:
    """Past ``CLASSES_SHOWN`` classes the review shows the most suspicious ones and says so."""
    from app.views import review as review_views

    _, run_id, _, _ = studio
    monkeypatch.setattr(review_views, "CLASSES_SHOWN", 1)
    at = _run_page(run_id)
    headings = [m.value for m in at.markdown if "most suspicious" in m.value]
    assert len(headings) == 1, headings  # one class of the two
    assert any(c.value.startswith("The 1 classes with the most suspicious") for c in at.caption)
    at.number_input(key=f"review_classes_{run_id}").set_value(2).run()
    _ok(at)
    assert len([m.value for m in at.markdown if "most suspicious" in m.value]) == 2


def test_classes_shown_text() -> None:
    from app.views.review import classes_shown_text

    assert classes_shown_text(10, 200) == (
        "The 10 classes with the most suspicious images, of 200: raise **Classes** to see more."
    )
    assert classes_shown_text(3, 3) == ""


def test_the_embedding_map_renders(studio) -> None:
    _, run_id, _, _ = studio
    at = _run_page(run_id)
    at.toggle(key=f"review_map_on_{run_id}").set_value(True).run()
    _ok(at)
    charts = [c for c in at.get("plotly_chart") if c.proto.id and "review_map" in c.proto.id]
    assert charts, "no embedding map"
    assert any("misclassified (✕)" in c.value for c in at.caption)


def test_the_embedding_map_says_when_it_draws_a_sample(studio, monkeypatch) -> None:
    import core.training.review as review_module

    _, run_id, _, _ = studio
    full = review_module.embedding_map
    monkeypatch.setattr(
        review_module, "embedding_map", lambda *a, **k: full(*a, **{**k, "max_points": 6})
    )
    at = _run_page(run_id)
    at.toggle(key=f"review_map_on_{run_id}").set_value(True).run()
    _ok(at)
    captions = [c.value for c in at.caption]
    sample = [c for c in captions if c.startswith("Showing 6 of ")]
    assert len(sample) == 1 and "every one of the" in sample[0], captions
    assert any(c.startswith("6 images") for c in captions)  # the points drawn


@pytest.mark.slow
def test_an_unmanaged_source_is_copied_on_its_first_edit(studio) -> None:
    queue, _, run_id, home = studio
    at = _run_page(run_id)
    assert any("Your first edit makes an editable copy of **shots**" in i.value for i in at.info)
    assert "shots" not in datasets.dataset_names()
    image = _card_ids(at)[0]
    at.button(key=f"review_s_exclude_{image}").click().run()
    _ok(at)
    infos = [i.value for i in at.info]
    assert any("Made dataset **shots**, an editable copy of **shots**" in i for i in infos)
    assert any(
        "Edits go to dataset **shots**, a copy of **shots**; the original" in i for i in infos
    )
    with datasets.open_dataset("shots") as ds:
        assert {i.id: i.excluded for i in ds.images()}[image] is True
    assert len(list((home.parent / "shots").rglob("*.png"))) == 16  # the folder is untouched
    at.button(key=f"review_undo_{run_id}").click().run()
    _ok(at)
    with datasets.open_dataset("shots") as ds:
        assert not any(i.excluded for i in ds.images())


@pytest.mark.slow
def test_predict_adds_an_image_to_the_runs_dataset(studio) -> None:
    _, run_id, _, _ = studio
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["data_source"] = "dataset:toy"
    at.run()
    at.switch_page("pages/predict.py").run()
    at.multiselect(key="models").set_value([run_id]).run()
    picture = _png((210, 40, 40), 4242)
    at.file_uploader(key="images").upload("new red.png", picture, "image/png").run()
    _ok(at)
    assert at.selectbox(key="add0_ds").value == "toy"  # the run's own dataset
    predicted = at.selectbox(key="add0_cls_toy").value
    assert predicted in ("red", "blue")
    before = datasets.show("toy")["images"]
    at.button(key="add0_add").click().run()
    _ok(at)
    assert f"Added 1 image to **{predicted}**." in [s.value for s in at.success]
    assert datasets.show("toy")["images"] == before + 1
    at.button(key="add0_add").click().run()  # the same picture again: reported, not added
    assert any("1 exact duplicate" in i.value for i in at.info)
    assert datasets.show("toy")["images"] == before + 1
    with datasets.open_dataset("toy") as ds:
        ds.undo()


# --------------------------------------------------------------------------- pure shaping


def _suspect(image: str, label: str, predicted: str, reviewed: bool = False) -> Suspect:
    return Suspect(image, f"/x/{image}.png", label, predicted, 0.87, 2.0, "train", reviewed)


def test_suspect_caption_escapes_names() -> None:
    s = _suspect("a1", "<b>cat", "**dog**", reviewed=True)
    caption = views.suspect_caption(s)
    assert caption == (
        f"given **{md_escape('<b>cat', inline=True)}** · predicted "
        f"**{md_escape('**dog**', inline=True)}** 87% · kept"
    )
    assert "<b>" not in caption


def test_relabel_options_default_to_the_prediction_only_when_it_differs() -> None:
    card = views.card_from_suspect(_suspect("a1", "cat", "dog"))
    assert views.relabel_options(["cat", "dog", "fox"], card) == (["dog", "fox"], 0)
    card = views.card_from_suspect(_suspect("a1", "cat", "gone"))  # a class deleted since
    assert views.relabel_options(["cat", "dog", "fox"], card) == (["dog", "fox"], None)
    card = views.card_from_suspect(_suspect("a1", "cat", "fox"))
    assert views.relabel_options(["cat", "dog", "fox"], card) == (["dog", "fox"], 1)
    # The model agrees with the label: no class is chosen for the user (one click must not
    # move a correct image to the first other class).
    card = views.card_from_suspect(_suspect("a1", "cat", "cat"))
    assert views.relabel_options(["cat", "dog", "fox"], card) == (["dog", "fox"], None)


def test_edit_notes_name_the_file_and_the_footnote_is_plain_words() -> None:
    assert views.edit_note("exclude", "IMG_0042.jpg").startswith("Excluded **IMG_0042.jpg**")
    relabelled = views.edit_note("relabel", "a.png", "<b>dog")
    assert relabelled.startswith("Relabelled **a.png** to **") and "<b>" not in relabelled
    assert views.edit_note("keep", "a.png").startswith("Kept **a.png** as labelled")
    for jargon in ("out-of-fold", "logistic", "log p", "fold"):
        assert jargon not in views.REVIEW_FOOTNOTE


def test_target_and_change_notices() -> None:
    assert "your dataset **pets**" in views.target_notice("dataset:pets", "pets").text
    copy = views.target_notice("/data/photos.zip", "photos").text
    assert "a copy of **photos.zip**" in copy and "not changed" in copy
    assert "first edit makes" in views.target_notice("/data/photos", None).text
    review = Review("r", "dataset:p", "p", [], [f"n{i}" for i in range(10)], ["g1"], "how")
    new, gone = views.change_notices(review)
    assert "10 images in p are new" in new.text and "… and 2 more" in new.text
    assert "1 image this run trained on is no longer in use" in gone.text and "g1" in gone.text
    assert views.change_notices(Review("r", "x", None, [], [], [], "")) == []


def test_map_figure_marks_the_misclassified_and_escapes_names() -> None:
    points = [
        MapPoint("i1", "/p1", "<b>cat", "<b>cat", True, "train", 0.0, 1.0),
        MapPoint("i2", "/p2", "<b>cat", "dog", False, "val", 1.0, 0.0),
        MapPoint("i3", "/p3", "dog", "dog", True, "train", 2.0, 2.0),
    ]
    figure = views.map_figure(points)
    by_name = {t.name: t for t in figure.data}
    assert set(by_name) == {"&lt;b&gt;cat", "&lt;b&gt;cat · misclassified", "dog"}
    wrong = by_name["&lt;b&gt;cat · misclassified"]
    assert wrong.marker.symbol == "x" and list(wrong.customdata) == ["i2"]
    assert by_name["dog"].marker.symbol == "circle"
    assert all("<b>" not in t for trace in figure.data for t in trace.text)
    assert "2 misclassified" not in views.map_counts(points)
    assert views.map_counts(points).startswith("3 images · 1 misclassified")


def test_selected_images_and_their_cards() -> None:
    state = {"selection": {"points": [{"customdata": "i2"}, {"customdata": ["i1"]},
                                      {"customdata": "i2"}, {"x": 1}]}}  # fmt: skip
    assert views.selected_images(state) == ["i2", "i1"]
    assert views.selected_images(None) == [] and views.selected_images({}) == []
    points = [MapPoint("i1", "/p1", "cat", "dog", False, "val", 0, 0)]
    cards = views.cards_for(["i2", "i1", "zz"], [_suspect("i2", "dog", "cat")], points)
    assert [c.image for c in cards] == ["i2", "i1"]
    assert "87%" in cards[0].caption and cards[1].caption == "given **cat** · predicted **dog**"


def test_compare_link_values() -> None:
    assert views.compare_param(["a", "b"]) == "a,b"
    assert views.compare_preselection("a, b,zz,a", ["a", "b", "c"]) == ["a", "b"]
    assert views.compare_preselection(None, ["a"]) == []
    assert views.pending_runs("a,b", ["a"]) == ["b"]
    edits = [{"seq": 1, "undone": False}, {"seq": 2, "undone": True}]
    assert views.retrain_key("r", edits) == "retrain-r-2-1"
    assert views.retrain_key("r", edits + [{"seq": 3, "undone": False}]) == "retrain-r-3-3"


@pytest.mark.slow
def test_relabel_preselects_the_prediction_only_where_the_model_disagrees(studio) -> None:
    """Where the model agrees with the label no class is chosen and Relabel waits for one (one
    click moved a correct image to the first other class); where it disagrees, its prediction
    is chosen. The edit names the file."""
    from core.training.review import review_run

    queue, run_id, _, _ = studio
    at = _run_page(run_id)
    suspects = {s.image: s for s in review_run(queue.store, run_id).suspects}
    agree = []
    for image in _card_ids(at):
        suspect = suspects[image]
        box = at.selectbox(key=f"review_s_to_{image}")
        button = at.button(key=f"review_s_relabel_{image}")
        if suspect.predicted == suspect.label:
            assert box.value is None and button.disabled, image
            agree.append(suspect)
        else:
            assert box.value == suspect.predicted and not button.disabled, image
    assert agree, "the toy run agrees with most labels"
    chosen = agree[0]
    to = "red" if chosen.label == "blue" else "blue"
    at.selectbox(key=f"review_s_to_{chosen.image}").set_value(to).run()
    assert not at.button(key=f"review_s_relabel_{chosen.image}").disabled
    at.button(key=f"review_s_relabel_{chosen.image}").click().run()
    _ok(at)
    shown = _original_name("toy", chosen.image)
    assert f"Relabelled **{md_escape(shown, inline=True)}** to **{to}**." in [
        s.value for s in at.success
    ]
    assert views.REVIEW_FOOTNOTE in [c.value for c in at.caption]  # plain words on the page
    at.button(key=f"review_undo_{run_id}").click().run()  # leave the dataset as it was
    _ok(at)
