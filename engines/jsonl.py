"""JSON Lines, read by one rule everywhere: prompt files (:mod:`engines.prompts`) and
preference imports (:mod:`storage.exports`).

The rule: the file is UTF-8; a line ends at ``"\\n"`` only. A ``"\\r"`` before it is JSON
whitespace, so Windows (``\\r\\n``) files read exactly like Unix ones; a lone ``"\\r"``,
U+2028 or U+2029 is not a line break (JSON strings may hold U+2028 unescaped, and a JSON
value never holds a raw ``"\\r"`` outside whitespace, so splitting there would only cut a
line in two). Blank lines are skipped; every other line is one JSON object. Line numbers
count ``"\\n"`` from 1, as an editor shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

Reason = Literal["utf-8", "json", "object"]


class JsonLinesError(ValueError):
    """A line that breaks the rule: its number, why (``reason``) and a short ``detail``.

    ``str()`` is ``"line N: ..."``; callers prefix the file's name in their own style.
    """

    def __init__(self, line: int, reason: Reason, detail: str = "") -> None:
        self.line, self.reason, self.detail = line, reason, detail
        text = {
            "utf-8": "not valid UTF-8",
            "json": f"not valid JSON ({detail})",
            "object": f"expected a JSON object, got {detail}",
        }[reason]
        super().__init__(f"line {line}: {text}")


def parse_json_lines(data: bytes) -> list[dict[str, Any]]:
    """The objects of a JSON Lines document, by the module's rule (:class:`JsonLinesError` on a bad line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonLinesError(data[: exc.start].count(b"\n") + 1, "utf-8") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JsonLinesError(number, "json", exc.msg) from None
        if not isinstance(row, dict):
            raise JsonLinesError(number, "object", type(row).__name__)
        rows.append(row)
    return rows


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """:func:`parse_json_lines` of a file's bytes."""
    return parse_json_lines(Path(path).read_bytes())
