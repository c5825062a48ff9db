"""User-supplied text shown as text, never as Markdown.

Streamlit renders Markdown (links, images, KaTeX ``$...$``, ``:color[...]`` directives, Material
icons) in ``st.markdown``, captions, alerts, spinners, toasts, image captions and in the labels of
widgets, metrics, expanders, tabs and radio options. Run names, class folder names, data sources,
file names and error messages that quote them come from users and files on disk: a run named
``![t](http://host/track.png)`` would make the page fetch that URL. ``md_escape`` turns such a
string into Markdown that displays exactly the original characters. Plain-text places
(``st.selectbox``/``st.multiselect`` options, dataframe cells, ``st.text``, ``st.code``) must get
the raw string: they would show the backslashes. Plotly figures render a subset of HTML (``<a
href>``, ``<b>``, ``<br>``) in labels, legends and hover text: names go through ``plotly_text``,
and never into a ``hovertemplate`` itself (``%{...}`` there is a substitution).

No Streamlit here, so the pure view code (``app.views.run_page``) can use it too.
"""

from __future__ import annotations

import re

from core.runs.safe_text import WORD_JOINER, break_autolinks, escape_underscores

# Escaped wherever they are: they open or close inline Markdown (code, emphasis, links, images,
# HTML and autolinks, tables, KaTeX, strikethrough, entities), Streamlit's ``:directive[...]``,
# ``:emoji:`` and ``:material/icon:`` syntax, or GFM's e-mail autolinks.
_ANYWHERE = re.compile(r"[\\`*\[\]()!|{}<>$~:&@]")
# "_" runs that could open emphasis and GFM's autolink literals are handled as in generated
# files (``core.runs.safe_text``): an autolink is found after escapes are resolved, so an
# invisible word joiner inside it is what stops it.
# Only at the start of a line: headings, lists, block quotes, setext and thematic breaks.
_LINE_START = re.compile(r"^(\s*)([#+=-])")
_ORDERED = re.compile(r"^(\s*\d+)\.")  # "1." starts an ordered list ("1)" has its ")" escaped)
_NEWLINES = re.compile(r"\r\n?|\n")


def _escape_line(line: str) -> str:
    line = break_autolinks(line)
    line = _ANYWHERE.sub(lambda m: "\\" + m.group(), line)
    line = escape_underscores(line)
    line = _ORDERED.sub(r"\1\\.", line)
    return _LINE_START.sub(r"\1\\\2", line)


def md_escape(text: object, *, inline: bool = False) -> str:
    """``text`` (any object, via ``str``) as Markdown that Streamlit displays literally.

    Line breaks stay line breaks (Markdown hard breaks); with ``inline=True`` (labels, options
    and values embedded in one line) they become spaces.
    """
    lines = [_escape_line(line) for line in _NEWLINES.split(str(text))]
    return (" " if inline else "  \n").join(lines)


def md_unescape(markdown: str) -> str:
    """The text ``md_escape`` was given (its line breaks as ``\\n``): for tests and logs."""
    text = markdown.replace("  \n", "\n").replace(WORD_JOINER, "")
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


def plotly_text(text: object) -> str:
    """``text`` for a Plotly label, legend or hover value: its HTML-like tags shown, not run."""
    import html

    return html.escape(str(text), quote=False)
