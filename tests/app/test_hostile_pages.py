"""Hostile names and huge class counts on every page, under AppTest, against fake runs.

The run store is seeded directly (no training): finished runs whose name, data source, class
names and error text are Markdown that would load a remote image, render a link, KaTeX or bold,
plus a run of 1,000 classes whose confusion matrix must not be drawn cell by cell.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.views import run_page as run_views
from app.views.text import md_escape, md_unescape
from core.config import RunConfig
from core.runs.store import COMPLETED, FAILED, RUNNING, STOPPED, clean_run_name
from tests.helpers import GFM_AUTOLINK, GFM_EMAIL, fake_studio, stored_run, write_pngs

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120
PAGES = (None, "pages/data.py", "pages/train.py", "pages/compare.py",
         "pages/predict.py", "pages/run.py")  # fmt: skip

# Each would render as something other than its characters if a page passed it to Markdown.
IMAGE = "![t](http://evil.example/track.png)"
LINK = "[click](http://evil.example)"
MATH = "$\\frac{1}{2}$"
HTML = "<img src=x onerror=alert(1)>"
BOLD = "**bold**"
HOSTILE = (IMAGE, LINK, MATH, HTML, BOLD)
RUN_NAME = " ".join(HOSTILE)
# Folder and file names cannot hold "/": the same constructs without URLs.
FOLDER_IMAGE = "![f](track.png)"
FOLDER_LINK = "[click](evil.example)"
CLASSES = [FOLDER_IMAGE, FOLDER_LINK, MATH, HTML, BOLD]
# What must never reach a page's Markdown unescaped.
RENDERED = {
    "image": re.compile(r"!\[[^\]]*\]\("),
    "link": re.compile(r"(?<!\\)\[[^\]]*\]\("),
    "math": re.compile(r"(?<!\\)\$\\frac"),
    "html": re.compile(r"(?<!\\)<img"),
    "bold": re.compile(r"(?<!\\)\*\*bold"),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A studio whose runs, classes, data folder and errors are named with Markdown.

    Yields ``(store, run ids by status, data folder)``; the data folder is real (five class
    folders of tiny PNGs, a broken "image" and a text file that are skipped).
    """
    home = tmp_path_factory.mktemp("hostile-home")
    data = home / f"data` {FOLDER_IMAGE} {FOLDER_LINK} {MATH} {HTML} {BOLD}"  # ` ends code spans
    for name in CLASSES:
        write_pngs(data / name, 4, side=40)
    (data / FOLDER_IMAGE / f"{FOLDER_LINK}.png").write_bytes(b"not a png")
    (data / FOLDER_LINK / f"{BOLD}.txt").write_text("notes")
    config = RunConfig(
        backbone="mobilenet_v2", weights="none", mode="feature_extraction", data=str(data),
        image_size=32, epochs=1, name=RUN_NAME,
    )  # fmt: skip
    matrix = np.ones((5, 5), dtype=int) + np.diag([3] * 5)
    matrix[0, 1] = 4  # the most frequent confusion: the Run page opens on that cell
    pictures = sorted(str(p) for p in (data / CLASSES[0]).glob("*.png"))[:2]
    images = [
        {"path": pictures[0], "true": CLASSES[0], "predicted": CLASSES[1],
         "probabilities": [0.1, 0.6, 0.1, 0.1, 0.1]},
        {"path": pictures[1], "true": CLASSES[0], "predicted": CLASSES[0],
         "probabilities": [0.6, 0.1, 0.1, 0.1, 0.1]},
    ]  # fmt: skip
    with fake_studio(home) as store:
        runs = {
            FAILED: stored_run(store, config, CLASSES, FAILED, error=f"Could not read {IMAGE}"),
            STOPPED: stored_run(store, config, CLASSES, STOPPED, error=f"{LINK} stopped"),
            COMPLETED: stored_run(store, config, CLASSES, matrix=matrix, images=images),
            RUNNING: stored_run(store, config, CLASSES, RUNNING),
        }
        yield store, runs, str(data)


# --------------------------------------------------------------------------- walking a page


def _strings(message: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a protobuf message, with its dotted field path."""
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        repeated = not isinstance(value, str) and hasattr(value, "__len__")
        for item in value if repeated and not hasattr(value, "ListFields") else [value]:
            if isinstance(item, str):
                yield name, item
            elif hasattr(item, "ListFields"):
                yield from _strings(item, name)


def page_texts(at: AppTest) -> list[tuple[str, str, str]]:
    """``(element type, field, text)`` for every string of every element and block on the page,
    in the main area and the sidebar (expander and tab labels are block fields)."""
    out: list[tuple[str, str, str]] = []

    def walk(node: Any) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "ListFields"):
            kind = getattr(node, "type", type(node).__name__)
            out.extend((kind, field, text) for field, text in _strings(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return out


# Fields Streamlit renders as Markdown (alerts, captions and markdown bodies, metric values and
# deltas, labels of widgets, expanders, tabs and metrics, image captions, progress text, tooltips,
# radio and pills options). ``st.selectbox``/``st.multiselect`` options, dataframes and Plotly
# specs are plain text: they are only searched for the names (which must be there verbatim).
MARKDOWN_FIELDS = {"body", "label", "text", "caption", "captions", "help", "content", "delta"}


def markdown_texts(texts: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [
        (kind, field, text)
        for kind, field, text in texts
        if field.split(".")[-1] in MARKDOWN_FIELDS or (kind == "radio" and field == "options")
    ]


def _render(page: str | None, data: str, run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["data_source"] = data  # the sidebar shows it on every page
    if run_id:
        at.session_state["run_id"] = run_id
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --------------------------------------------------------------------------- 5: names as text


def test_md_escape_shows_markdown_as_its_characters():
    for text in (
        *HOSTILE,
        RUN_NAME,
        "a :red[b] :material/home: c",
        "# h\n- i\n1. j\n===",
        "x_y _z_",
    ):
        escaped = md_escape(text)
        assert md_unescape(escaped) == text
        assert not [name for name, rx in RENDERED.items() if rx.search(escaped)], escaped
    # GFM finds autolink literals in the text once escapes are resolved: a word joiner (U+2060)
    # inside ``http://``, ``www.`` and ``@`` keeps them text.
    assert md_escape(IMAGE) == "\\!\\[t\\]\\(http\\:\u2060//evil.example/track.png\\)"
    assert md_escape(MATH) == "\\$\\\\frac\\{1\\}\\{2\\}\\$"
    assert md_escape(":red[x]") == "\\:red\\[x\\]"  # no Streamlit directive either
    assert md_escape("www.evil.example") == "www\u2060.evil.example"  # no bare autolink
    assert md_escape("me@evil.example") == "me\\@\u2060evil.example"
    for text in (IMAGE, "see www.evil.example or me@evil.example", "https://evil.example"):
        shown = md_escape(text).replace("\\", "")  # the text a renderer's autolinker reads
        assert not GFM_AUTOLINK.search(shown) and not GFM_EMAIL.search(shown), shown
    # identifiers stay readable; block syntax only matters at a line start
    assert md_escape("mobilenet_v2's top-1 is 0.9") == "mobilenet_v2's top-1 is 0.9"
    assert md_escape("# a\n- b") == "\\# a  \n\\- b"
    assert md_escape("a\nb", inline=True) == "a b"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: (p or "Home").split("/")[-1])
def test_every_page_shows_hostile_names_as_text(hostile, page):
    store, runs, data = hostile
    at = _render(page, data, run_id=runs[FAILED])  # the Train page shows the failed run's error
    expected = [data]  # the sidebar's data source
    if page == "pages/data.py":
        expected += CLASSES  # one caption per class above its samples
    else:
        # In the run pickers (plain options) or the job queue, as the store names it: capped
        # to fit a selector (``MAX_RUN_NAME``), its Markdown still cut mid-way and still text.
        shown_name = clean_run_name(RUN_NAME)
        assert shown_name.endswith("…") and IMAGE in shown_name
        expected.append(shown_name)
    if page == "pages/train.py":
        expected.append(f"Could not read {IMAGE}")
    if page == "pages/predict.py":  # file names: one readable image, one broken
        at.file_uploader(key="images").set_value(
            [(f"{FOLDER_IMAGE}.png", Path(write_pngs(Path(data) / "uploads", 1)[0]).read_bytes(),
              "image/png"), (f"{FOLDER_LINK}.png", b"broken", "image/png")]
        ).run()  # fmt: skip
        assert not at.exception, [e.value for e in at.exception]
        expected += [FOLDER_IMAGE, FOLDER_LINK]
    if page == "pages/run.py":
        expected += [FOLDER_IMAGE, FOLDER_LINK]  # the gallery's heading and captions
    texts = page_texts(at)
    rendered = [
        (kind, field, name, text)
        for kind, field, text in markdown_texts(texts)
        for name, rx in RENDERED.items()
        if rx.search(text)
    ]
    assert not rendered, rendered
    shown = [md_unescape(text) for kind, field, text in markdown_texts(texts)]
    shown += [text for kind, field, text in texts]  # plain-text places hold them verbatim
    missing = [name for name in expected if not any(name in text for text in shown)]
    assert not missing, missing


# --------------------------------------------------------------------------- 10: 1,000 classes


def test_top_confused_pairs_largest_first_without_the_diagonal():
    names = ["a", "b", "c", "d"]
    matrix = [
        [9, 3, 0, 5],  # a: 17 images
        [3, 9, 1, 0],  # b: 13 images
        [0, 0, 0, 0],  # c: no image at all (a zero row)
        [0, 7, 0, 9],  # d: 16 images
    ]
    pairs = run_views.top_confused_pairs(names, matrix)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("d", "b", 7), ("a", "d", 5), ("a", "b", 3), ("b", "a", 3), ("b", "c", 1),
    ]  # fmt: skip  # the diagonal's 9s never appear; the tie (3) keeps row-major order
    assert pairs[0]["share"] == pytest.approx(7 / 16) and pairs[1]["share"] == pytest.approx(5 / 17)
    assert [p["count"] for p in run_views.top_confused_pairs(names, matrix, limit=2)] == [7, 5]
    assert run_views.top_confused_pairs(names, np.diag([4, 4, 0, 4])) == []  # nothing confused
    assert run_views.top_confused_pairs(names, np.zeros((4, 4))) == []
    assert run_views.default_cell({"class_names": names, "confusion_matrix": matrix}) == ("d", "b")
    # many ties around the cut: exactly ``limit`` rows, still row-major
    big = np.ones((50, 50), dtype=int)
    top = run_views.top_confused_pairs([str(i) for i in range(50)], big, limit=3)
    assert [(p["true"], p["predicted"]) for p in top] == [("0", "1"), ("0", "2"), ("0", "3")]


def test_matrix_csv_holds_the_whole_matrix():
    names = ["a,1", "b"]
    text = run_views.matrix_csv(names, [[1, 2], [3, 4]]).decode()
    assert text.splitlines() == ['true \\ predicted,"a,1",b', '"a,1",1,2', "b,3,4"]


def test_matrix_view_draws_no_heatmap_past_the_cap(monkeypatch):
    drawn = []
    monkeypatch.setattr(run_views, "confusion_matrix_figure", lambda *a, **k: drawn.append(a))
    n = run_views.HEATMAP_MAX_CLASSES
    for classes, kind in ((n, "heatmap"), (n + 1, "pairs"), (1000, "pairs")):
        names = [f"class {i}" for i in range(classes)]
        matrix = np.eye(classes, dtype=int) * 3
        matrix[classes - 1, 0] = 2
        view = run_views.matrix_view({"class_names": names, "confusion_matrix": matrix})
        assert view["kind"] == kind
        if kind == "pairs":
            assert view["figure"] is None
            assert [(p["true"], p["predicted"]) for p in view["pairs"]] == [(names[-1], names[0])]
    assert len(drawn) == 1  # only the 30-class matrix was drawn


@pytest.fixture(scope="module")
def thousand_classes(tmp_path_factory):
    """A studio holding one finished run of 1,000 classes and its cached evaluation."""
    home = tmp_path_factory.mktemp("thousand-home")
    names = [f"class {i:04d}" for i in range(1000)]
    rng = np.random.default_rng(0)
    matrix = np.diag(rng.integers(5, 20, 1000))
    cells = rng.integers(0, 1000, (5000, 2))
    np.add.at(matrix, (cells[:, 0], cells[:, 1]), 1)
    matrix[7, 3] = 50  # the most confused pair
    config = RunConfig(backbone="mobilenet_v2", weights="none", data="builtin:textures",
                       image_size=32, epochs=1)  # fmt: skip
    with fake_studio(home) as store:
        yield store, stored_run(store, config, names, matrix=matrix), names, matrix


def test_run_page_with_1000_classes_lists_confused_pairs(thousand_classes, monkeypatch):
    store, run_id, names, matrix = thousand_classes
    built = []
    real = run_views.matrix_view
    monkeypatch.setattr(run_views, "matrix_view", lambda *a, **k: built.append(1) or real(*a, **k))
    started = time.perf_counter()
    # Drawing the heatmap took 87 s and 42 MB of JSON: a short timeout fails the old page.
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/run.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    elapsed = time.perf_counter() - started
    assert elapsed < 45, elapsed
    charts = at.get("plotly_chart")
    assert all(len(c.proto.spec) < 200_000 and "heatmap" not in c.proto.spec for c in charts)
    pairs = next(d.value for d in at.dataframe if "predicted" in d.value.columns)
    assert len(pairs) == run_views.TOP_PAIRS
    assert tuple(pairs.iloc[0][["true", "predicted", "count"]]) == ("class 0007", "class 0003", 50)
    off = matrix - np.diag(np.diag(matrix))
    assert list(pairs["count"]) == sorted(off.ravel().tolist(), reverse=True)[: run_views.TOP_PAIRS]
    assert [b.proto.label for b in at.get("download_button")] == ["Full confusion matrix (CSV)"]
    assert at.selectbox(key=f"true_{run_id}").value == "class 0007"  # the pickers still work
    assert at.selectbox(key=f"pred_{run_id}").value == "class 0003"
    assert built == [1]
    at.run()  # a rerun reuses the pairs (cached by run folder and evaluation file)
    assert not at.exception
    assert built == [1]


def test_plotly_figures_show_names_as_text_not_html_or_template() -> None:
    """Plotly renders <a href>, <b>, <br> in labels and substitutes %{...} in hover templates."""
    from app.views import charts
    from app.views.run_page import confusion_matrix_figure

    name = '<a href="http://evil.example">x</a> %{x}'
    result = {"run_id": "r1", "name": name, "mode": "fine_tuning", "duration_s": 3.0,
              "best_val_accuracy": 0.5, "history": {"epoch": [1], "val_accuracy": [0.5],
              "accuracy": [0.4], "val_loss": [1.0], "loss": [1.2]}}  # fmt: skip
    figures = [
        charts.compare_curves([result]),  # type: ignore[list-item]
        charts.accuracy_vs_time([result]),  # type: ignore[list-item]
        charts.prediction_bars([{"label": name, "probability": 0.9}]),
        charts.class_counts_figure({"train": {name: 3}, "val": {name: 1}}),
        confusion_matrix_figure(
            {"class_names": [name, "b"], "confusion_matrix": [[1, 0], [0, 1]]}, (name, "b")
        ),
    ]
    for fig in figures:
        dumped = fig.to_json()
        assert "<a href" not in dumped and "&lt;a href" in dumped, dumped[:300]
        for trace in fig.data:
            assert name not in str(getattr(trace, "hovertemplate", "") or "")
    picker = figures[-1].data[1]
    assert list(picker.customdata[0])[:2] == [name, name], "a click still reports the raw name"
