"""Checks and conversions for what goes into text and JSON columns.

Text must be valid Unicode that UTF-8 can encode (no lone surrogates, which is
how invalid UTF-8 reaches Python through ``surrogateescape``) and must not
contain NUL (PostgreSQL's ``text`` cannot hold it). Bad text is refused, never
repaired: nothing stored is silently altered.

JSON has no infinities or NaN; like ``engines.trace`` we tag them as
``{"__float__": "inf"}`` so configs and costs round-trip exactly.
"""

from __future__ import annotations

import json
import math
from typing import Any

from storage.errors import InvalidInput


def check_text(value: Any, field: str, *, max_chars: int | None = None, allow_empty: bool = True) -> str:
    """Return ``value`` unchanged if it is storable text, else raise InvalidInput."""
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidInput(f"{field} must be text, got bytes (decode it as UTF-8 first)")
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InvalidInput(f"{field} must not be empty")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidInput(f"{field} is {len(value):,} characters; the limit is {max_chars:,}")
    if "\x00" in value:
        raise InvalidInput(f"{field} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{field} is not valid UTF-8 text (lone surrogate at position {exc.start})"
        ) from None
    return value


def check_optional_text(value: Any, field: str, *, max_chars: int | None = None) -> str | None:
    return None if value is None else check_text(value, field, max_chars=max_chars)


def to_jsonable(value: Any, field: str) -> Any:
    """A JSON-safe copy of ``value`` (non-finite floats tagged); InvalidInput if impossible.

    Strings anywhere inside are checked like text columns.
    """

    def walk(item: Any) -> Any:
        if isinstance(item, float):
            return item if math.isfinite(item) else {"__float__": repr(item)}
        if item is None or isinstance(item, bool | int):
            return item
        if isinstance(item, str):
            return check_text(item, field)
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        if isinstance(item, dict):
            out = {}
            for key, val in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(f"{field} has a non-text key {key!r}")
                out[check_text(key, field)] = walk(val)
            return out
        raise InvalidInput(f"{field} holds a {type(item).__name__}, which JSON cannot store")

    out = walk(value)
    json.dumps(out, allow_nan=False)  # belt and braces: must serialise
    return out


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable`: restore tagged non-finite floats."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value
