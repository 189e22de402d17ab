"""Values from a trace shown as text, never as markup: in Markdown (Streamlit's and the report's
GitHub-flavoured summary.md) and in plotly labels (which honour a subset of HTML).

A span attribute such as `service.instance.id` or `rid` is whatever the emitting process put there:
`![x](http://host/beacon.png)` would make a browser fetch an image, `<a href=...>` would render a
foreign link in a chart, a newline followed by `# ` would start a heading. Every trace value that
enters Markdown goes through `md()` (or `md_code()`), and every one that enters a plotly figure
through `plot_text()`. No streamlit, no plotly: the pages, the charts and the report all use it.
"""

from __future__ import annotations

import html
import re

# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidirectional
# overrides and isolates (which reorder what is displayed): shown as escapes, never acted on.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# CommonMark: a backslash before any ASCII punctuation character makes it literal.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# Rewrites that Streamlit and GitHub apply to text nodes after Markdown parsing (so a backslash
# escape does not stop them): emoji and icon shortcodes (`:smile:`, `:streamlit:`) and Streamlit's
# typographic arrows (` -> `, ` <= `...). A word joiner (U+2060, invisible) after the first
# character breaks the pattern and leaves the text as it reads.
_SHORTCODE = re.compile(r":(?=[\w+-]+:)")
_ARROW = re.compile(r"(?<!\S)(<->|->|<-|--|>=|<=|~=)(?!\S)")
_JOINER = "\u2060"


def one_line(value: object) -> str:
    """`value` as a single line: newlines, other control characters and bidi overrides as escapes."""
    return _INVISIBLE.sub(lambda m: _NAMED.get(m.group(), f"\\u{ord(m.group()):04x}"), str(value))


def md(value: object) -> str:
    """`value` as Markdown source that renders as exactly its text, on one line.

    Safe inside a paragraph, a heading (st.title/subheader), a caption, an alert, a metric's label
    or value, a tooltip and a GFM table cell (`|` is escaped too).
    """
    text = one_line(value)
    text = _ARROW.sub(lambda m: m.group()[0] + _JOINER + m.group()[1:], text)
    text = _SHORTCODE.sub(":" + _JOINER, text)
    return _PUNCTUATION.sub(r"\\\1", text)


def md_code(value: object) -> str:
    """`value` as a Markdown inline code span (monospace), rendering exactly its text on one line."""
    text = one_line(value)
    if not text:
        return ""
    # Streamlit rewrites `:material/` in the raw source, code spans included.
    text = text.replace(":material/", ":" + _JOINER + "material/")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    # One space inside each fence: CommonMark strips exactly one from each side, so a value that
    # starts or ends with a backtick or a space keeps it.
    return f"{fence} {text} {fence}"


def plot_text(value: object) -> str:
    """`value` for a plotly text, hover, tick, legend or title string: `<`, `>` and `&` as entities."""
    return html.escape(one_line(value), quote=False)
