"""Hostile values for every field of a stored run and a vote, and a checker for live markup.

The checker parses what a view returns with an HTML parser (never a grep): every element
and attribute must be one the app itself writes (the sanitiser's formatting tags, our
figures, tables and images), links only http(s), mailto or the app's own ``/?run=ID``,
images only clean PNG data URIs, no event handler, no style but our own. Markdown is first
rendered the way a browser's Markdown component would (raw HTML on, as Gradio's is);
plot strings are checked against plotly's pseudo-HTML (b, br, i, sup, sub only).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from markdown_it import MarkdownIt

PAYLOADS = [
    '<div style="position:fixed;inset:0;z-index:9999;background:#c00">expired</div>',
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    "[click](javascript:window.__xss=1)",
    "![i](javascript:window.__xss=1)",
    "<a href='javascript:alert(1)'>a</a>",
    '"><svg onload=alert(1)>',
    "`</code><script>alert(1)</script>`",
    "| a | b |\n|---|---|\n| <b>x</b> | y |",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "<style>body{display:none}</style>",
    "<iframe src=//evil.example></iframe>",
    "<https://evil.example/x>",
    "\u202e\x1b[31m<u>ctl</u>",
]
BAD_IMAGES = [
    "javascript:alert(1)",
    "data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+",
    'data:image/png;base64,AAAA" onerror="alert(1)',
    "https://evil.example/track.png",
]

_PLOTLY_TAGS = {"b", "br", "i", "em", "sup", "sub"}
_TAGS = {
    "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4",
    "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "del", "img", "figure", "figcaption",
    "small", "div", "span",
}
_ATTRS = {
    "a": {"href", "title", "rel"}, "th": {"align", "style"}, "td": {"align", "style"}, "ol": {"start"},
    "img": {"src", "width", "height", "style", "title", "alt"}, "figure": {"style"}, "div": {"style"},
    "span": {"class"}, "pre": {"class"},  # <pre class="model-text">: model text, verbatim (app.views.render.verbatim)
}
#: the CSS properties the app's own elements use (no position, z-index, background, url(...))
_STYLE_PROPERTIES = {"margin", "display", "text-align", "border", "padding", "image-rendering", "overflow-x"}
_STYLE_VALUE = re.compile(r"^[#a-z0-9 .\-]+$")


def _safe_style(style: str) -> bool:
    for declaration in filter(None, (d.strip() for d in style.split(";"))):
        name, sep, value = declaration.partition(":")
        if not sep or name.strip() not in _STYLE_PROPERTIES or not _STYLE_VALUE.match(value.strip()):
            return False
    return True


_PNG = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/]*={0,2}$")
_MD = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table")
_MD.validateLink = lambda url: True  # a browser-side renderer may keep any scheme: judge every link ourselves


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, attrs))

    handle_startendtag = handle_starttag


def elements(html_text: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _Collector()
    parser.feed(html_text)
    parser.close()
    return parser.elements


def live_markup(html_text: str, where: str) -> list[str]:
    """Everything in ``html_text`` that is not markup the app writes itself."""
    problems = []
    for tag, attrs in elements(html_text):
        if tag not in _TAGS:
            problems.append(f"{where}: element <{tag}>")
            continue
        for name, value in attrs:
            value = value or ""
            if name not in _ATTRS.get(tag, set()):
                problems.append(f"{where}: <{tag} {name}={value[:60]!r}>")
            elif name == "href" and not re.match(r"^(https?:|mailto:|/\?run=\d+$|#)", value):
                problems.append(f"{where}: link to {value[:60]!r}")
            elif name == "src" and not _PNG.match(value):
                problems.append(f"{where}: image source {value[:60]!r}")
            elif name == "style" and not _safe_style(value):
                problems.append(f"{where}: style {value[:60]!r}")
    return problems


def live_markdown(text: str, where: str) -> list[str]:
    return live_markup(_MD.render(text or ""), where)


def _strings(value: Any, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def live_in_figure(fig: Any, where: str) -> list[str]:
    """Plotly figures: pseudo-HTML only in labels, clean PNG data URIs only as layout images."""
    data = fig.to_plotly_json()
    problems = []
    for image in data.get("layout", {}).get("images", []) or []:
        if not _PNG.match(str(image.get("source", ""))):
            problems.append(f"{where}: layout image {str(image.get('source'))[:60]!r}")
    for path, text in _strings(data, where):
        if ".images[" in path or path.endswith((".colorscale", ".color")):
            continue
        for tag, attrs in elements(text):
            if tag not in _PLOTLY_TAGS or attrs:
                problems.append(f"{path}: <{tag} {attrs}> in {text[:80]!r}")
    return problems


def live_in_update(value: Any, where: str, *, markdown: bool) -> list[str]:
    """One component update: a figure, an HTML/Markdown string, a gr.update dict, or table rows."""
    if hasattr(value, "to_plotly_json"):
        return live_in_figure(value, where)
    if isinstance(value, dict) and "value" in value:
        return live_in_update(value["value"], where, markdown=markdown)
    if isinstance(value, str):
        return live_markdown(value, where) if markdown else live_markup(value, where)
    return []
