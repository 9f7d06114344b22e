"""Untrusted model output, made safe to show.

Model text is rendered as Markdown on the server with raw HTML disabled
(markdown-it-py, ``html=False``: a ``<script>`` in a candidate becomes the
literal text ``&lt;script&gt;``), then passed through an allow-list sanitiser
(nh3, Rust's ammonia) that keeps formatting tags only and links only with
http, https or mailto schemes. Nothing a model writes can add an element
with an event handler, a ``javascript:`` URL, or a script.

Plot hover text goes through :func:`plain`, which escapes it so plotly shows
it literally.
"""

from __future__ import annotations

import html

import nh3
from markdown_it import MarkdownIt

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")

_TAGS = {
    "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "del",
}
_ATTRIBUTES = {"a": {"href", "title"}, "th": {"align"}, "td": {"align"}, "ol": {"start"}}


def markdown(text: str) -> str:
    """Sanitised HTML for untrusted Markdown text."""
    rendered = _MD.render(text or "")
    return nh3.clean(
        rendered,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def plain(text: str, limit: int = 400) -> str:
    """Escaped, truncated text for plot labels and hover boxes (line breaks kept as <br>)."""
    text = text or ""
    if len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text).replace("\n", "<br>")


def image_tag(data_uri: str | None, size: int = 64, title: str = "") -> str:
    """An <img> for a PNG data URI produced by the engine; anything else is refused."""
    if not data_uri or not data_uri.startswith("data:image/png;base64,"):
        return ""
    payload = data_uri.split(",", 1)[1]
    if not all(c.isalnum() or c in "+/=" for c in payload):
        return ""
    return (
        f'<img src="data:image/png;base64,{payload}" width="{int(size)}" height="{int(size)}" '
        f'style="image-rendering: pixelated" title="{html.escape(title, quote=True)}" alt="">'
    )
