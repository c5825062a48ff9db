"""Names as text in the files the studio writes: the model card's Markdown and CSV cells."""

from __future__ import annotations

import csv
import html
import io
import re

import pytest
from markdown_it import MarkdownIt

from app.views.run_page import matrix_csv
from core.runs.model_card import card_text
from core.runs.safe_text import csv_cell, md_text
from tests.helpers import GFM_AUTOLINK, GFM_EMAIL

TITLE = "![x](http://h/x.png) <img src=x onerror=alert(1)>"
HOSTILE = [
    TITLE,
    "[click](https://evil.example) www.evil.example me@evil.example",
    "<script>alert(1)</script> &amp; | a | b |",
    "# heading\n- item\n1. one",
    "**bold** _it_ `code` ~~s~~ $x$",
    "- a list item",
    "2. second",
    "> quote",
    "mobilenet_v2",
]
# Raw HTML allowed, as many Markdown viewers do: the worst case for the card.
RENDER = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough")


def _texts(markdown: str) -> list[str]:
    """The text a renderer shows for ``markdown`` (inline text and code, entities resolved)."""
    found = []
    for token in RENDER.parse(markdown):
        for child in token.children or []:
            if child.type in ("text", "code_inline"):
                found.append(child.content)
    return found


@pytest.mark.parametrize("name", HOSTILE)
def test_md_text_renders_as_exactly_its_characters(name: str) -> None:
    escaped = md_text(name)
    rendered = RENDER.render(f"- {escaped}\n\n| {escaped} |\n|---|\n| x |\n")
    for tag in ("<img", "<a ", "<script", "<em", "<strong", "<code", "<h1", "<ol", "<blockquote"):
        assert tag not in rendered, (name, rendered)
    assert rendered.count("<li>") == 1 and rendered.count("<th>") == 1, rendered
    shown = "".join(_texts(escaped)).replace("\u2060", "")
    assert shown == re.sub(r"\s*\n\s*", " ", name)
    joined = "".join(_texts(escaped))
    assert not GFM_AUTOLINK.search(joined) and not GFM_EMAIL.search(joined), joined


def test_the_model_card_shows_hostile_names_as_text() -> None:
    classes = [TITLE, "=cmd|' /C calc'!A0", "<b>bold</b>"]
    result = {
        "run_id": "20260101-000000-abcdef",
        "name": TITLE,
        "class_names": classes,
        "config": {"data": "/data/`x` <img src=y>", "image_size": 32},
        "dataset": {"class_counts": {"train": dict.fromkeys(classes, 3), "val": {}}},
        "history": {"loss": [1.0]},
    }
    per_class = [
        {"class": c, "precision": 1.0, "recall": 1.0, "f1": 1.0 - i / 10, "support": 1}
        for i, c in enumerate(classes)
    ]
    evaluation = {"accuracy": 1.0, "val_images": 3, "per_class": per_class}
    card = card_text(result, evaluation, [], {}, health=[f"class {TITLE!r} has 3 images"])
    rendered = RENDER.render(card)
    assert "<img" not in rendered.replace('<img src="confusion_matrix.png"', "")
    assert "<a " not in rendered and "<b>" not in rendered
    assert rendered.count("<img") == 1  # the card's own confusion matrix, nothing else
    title = html.escape(TITLE.replace("://", ":\u2060//"), quote=False)  # the joiner: no link
    assert f"<h1>Model card: {title}</h1>" in rendered
    for line in card.splitlines():
        assert not GFM_AUTOLINK.search(line.replace("\\", "")), line


def test_csv_cells_that_start_like_a_formula_stay_text() -> None:
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("cat") == "cat" and csv_cell(-3) == -3 and csv_cell("a=b") == "a=b"


def test_the_confusion_matrix_csv_neutralises_formula_names() -> None:
    names = ["=cmd|' /C calc'!A0", "+cat", "dog"]
    rows = list(
        csv.reader(io.StringIO(matrix_csv(names, [[1, 0, 0], [0, 2, 0], [0, 0, 3]]).decode()))
    )
    assert rows[0] == ["true \\ predicted", "'=cmd|' /C calc'!A0", "'+cat", "dog"]
    assert [r[0] for r in rows[1:]] == ["'=cmd|' /C calc'!A0", "'+cat", "dog"]
    assert [r[1:] for r in rows[1:]] == [["1", "0", "0"], ["0", "2", "0"], ["0", "0", "3"]]
