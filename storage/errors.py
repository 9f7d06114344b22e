"""Errors the storage layer raises. Every message is one line a user can act on.

All derive from :class:`StorageError`, so a caller (a Gradio handler, the CLI)
catches one type. A function that raises one of these has written nothing:
validation happens before the first write, and the caller's transaction is
rolled back on any error.

``storage`` may not import ``engines.errors`` (see DESIGN.md), so these are
plain exceptions; the invalid-input kinds are also ``ValueError`` and the
not-found kinds ``LookupError`` for callers that catch the builtin families.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error storage raises on purpose."""

    def __str__(self) -> str:  # KeyError-style quoting never applies; keep one line
        text = super().__str__()
        return text.splitlines()[0] if text else type(self).__name__


class InvalidInput(StorageError, ValueError):
    """A value that cannot be stored: wrong type, too long, not valid text, unknown choice."""


class NotFound(StorageError, LookupError):
    """A run, comparison, candidate or vote id that does not exist."""


class NotAllowed(StorageError):
    """The annotator may not do this (e.g. vote on a comparison of someone else's queue)."""


class Conflict(StorageError):
    """The request contradicts stored data: a second vote without superseding the first,
    a stale supersede, or an idempotency key reused for a different vote."""


class DatabaseBusy(StorageError):
    """The database stayed locked through every retry."""


class SchemaError(StorageError):
    """The database schema is missing, older or newer than this code expects."""
