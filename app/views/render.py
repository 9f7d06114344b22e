"""Untrusted model output, made safe to show.

Model text is shown verbatim: :func:`verbatim` escapes it and wraps it in a
``<pre>`` that keeps its whitespace and line breaks, so ``12*4=48`` reads
``12*4=48`` (not "124=48" in italics) and ``#### 667`` stays four hashes and a
number. Nothing a model writes is interpreted, neither as Markdown nor as HTML:
a ``<script>`` in a candidate is the literal text ``&lt;script&gt;``.
Annotators judge exactly what the model wrote.

Plot hover text goes through :func:`plain`, which escapes it so plotly shows
it literally. Every other stored string (ids, names, annotators, statuses,
reward specs, file names) goes through :func:`text` (HTML) or :func:`md_text`
(inside Markdown, which would otherwise keep raw elements and turn ``[x](...)``
into links); images through :func:`png_data_uri`, which passes only a PNG
data URI with a clean base64 payload.
"""

from __future__ import annotations

import html
import re


def verbatim(text: str | None) -> str:
    """Untrusted model text as an escaped ``<pre class="model-text">`` block: exactly what was written.

    static/app.css styles ``.model-text`` (pre-wrap: long lines wrap, every space and line break stays).
    """
    return f'<pre class="model-text">{html.escape(text or "", quote=True)}</pre>'


def plain(text: str, limit: int = 400) -> str:
    """Escaped, truncated text for plot labels and hover boxes (line breaks kept as <br>)."""
    text = text or ""
    if len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text).replace("\n", "<br>")


def text(value: object) -> str:
    """Any stored value as inert HTML text."""
    return html.escape("" if value is None else str(value), quote=True)


# what could make an element, a link, an image, a table cell or emphasis of stored text: "12*4=48" must not lose
# its star to an <em>. Underscores need no escape: inside a word (best_of_n) CommonMark never reads them as emphasis.
_MD_SPECIAL = re.compile(r"([\\`\[\]<&|*~])")


def md_text(value: object, limit: int = 200) -> str:
    """Any stored value as literal text inside Markdown: no element, link, emphasis or table cell break."""
    value = " ".join(("" if value is None else str(value)).split())
    if len(value) > limit:
        value = value[:limit] + "…"
    return _MD_SPECIAL.sub(lambda m: f"&#{ord(m.group(1))};", value)


_PNG_PREFIX = "data:image/png;base64,"
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def png_data_uri(data_uri: object) -> str | None:
    """``data_uri`` when it is a PNG data URI with a clean base64 payload, else None."""
    if not isinstance(data_uri, str) or not data_uri.startswith(_PNG_PREFIX):
        return None
    if not _BASE64.fullmatch(data_uri[len(_PNG_PREFIX):]):
        return None
    return data_uri


def image_tag(data_uri: str | None, size: int = 64, title: str = "") -> str:
    """An <img> for a PNG data URI produced by the engine; anything else is refused."""
    if png_data_uri(data_uri) is None:
        return ""
    payload = data_uri.split(",", 1)[1]
    return (
        f'<img src="data:image/png;base64,{payload}" width="{int(size)}" height="{int(size)}" '
        f'style="image-rendering: pixelated" title="{html.escape(title, quote=True)}" alt="">'
    )
