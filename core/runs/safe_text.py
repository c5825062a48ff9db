"""Names as text in the files the studio writes: Markdown (the model card, copied into
exports) and CSV (the confusion matrix a page offers).

Run, class and data-source names come from users and folders on disk. A Markdown viewer renders
links, images and (most of them) raw HTML: a run named ``![x](http://host/x.png) <img src=x
onerror=...>`` would make the viewer fetch that image and run that tag. ``md_text`` turns any
string into inline Markdown that every CommonMark/GFM renderer shows as exactly those characters:
Markdown punctuation is backslash-escaped, ``& < >`` become HTML entities (shown as text even
where HTML is allowed), line breaks become spaces (a name stays inside its table row or list
item), and a word joiner (U+2060, invisible) breaks the text patterns GFM turns into links by
itself (``http://``, ``www.``, ``name@host``), which escaping alone does not stop.

A spreadsheet opening a CSV runs a cell that starts with ``= + - @`` (or a tab or carriage
return before one) as a formula: ``csv_cell`` prefixes such text with ``'``, which spreadsheets
read as "this is text" (OWASP's advice for CSV injection).
"""

from __future__ import annotations

import re

__all__ = [
    "WORD_JOINER",
    "break_autolinks",
    "csv_cell",
    "escape_underscores",
    "md_text",
]

# Punctuation that opens or closes inline Markdown anywhere (code, emphasis, links, images,
# tables, math and strikethrough in the renderers that have them).
_ANYWHERE = re.compile(r"[\\`*\[\]()!|{}$~]")
# "_" emphasis needs a run not between two letters or digits: ``mobilenet_v2`` stays readable.
_UNDERSCORES = re.compile(r"_+")
# At the start of the text only (it may start a list item's content): headings, lists,
# block quotes, setext underlines, thematic breaks, ordered lists.
_START = re.compile(r"^(\s*)([#+=>-])")
_ORDERED = re.compile(r"^(\s*\d+)([.)])")
# GFM's autolink literals, matched on the text after escapes are resolved.
_AUTOLINKS = re.compile(r"(?i)(https?:)(//)|(www)(\.)|(@)")
WORD_JOINER = "\u2060"  # invisible: breaks an autolink without changing what a reader sees
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _underscores(match: re.Match[str]) -> str:
    text, start, end = match.string, match.start(), match.end()
    inert = 0 < start and end < len(text) and text[start - 1].isalnum() and text[end].isalnum()
    return match.group() if inert else "\\_" * len(match.group())


def _break_autolink(match: re.Match[str]) -> str:
    if match.group(5):
        return "@" + WORD_JOINER
    if match.group(1):
        return match.group(1) + WORD_JOINER + match.group(2)
    return match.group(3) + WORD_JOINER + match.group(4)


def break_autolinks(text: str) -> str:
    """``text`` with a word joiner inside every GFM autolink literal (``http://``, ``www.``,
    ``@``): renderers find those after escapes are resolved, so escaping cannot stop them."""
    return _AUTOLINKS.sub(_break_autolink, text)


def escape_underscores(text: str) -> str:
    """``text`` with the ``_`` runs that could open or close emphasis escaped (a run between two
    letters or digits, as in ``mobilenet_v2``, stays as it is)."""
    return _UNDERSCORES.sub(_underscores, text)


def md_text(text: object) -> str:
    """``text`` (any object, via ``str``) as inline Markdown shown literally: no link, image,
    HTML tag, emphasis or table cell break; line breaks as spaces."""
    line = re.sub(r"\s*(?:\r\n?|\n)\s*", " ", str(text))
    line = break_autolinks(line)
    line = _ANYWHERE.sub(lambda m: "\\" + m.group(), line)
    line = escape_underscores(line)
    line = re.sub(r"[&<>]", lambda m: _ENTITIES[m.group()], line)
    line = _ORDERED.sub(r"\1\\\2", line)
    return _START.sub(r"\1\\\2", line)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: text starting like a formula gets a leading
    ``'``; numbers are left as they are (a negative count is not a formula)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
