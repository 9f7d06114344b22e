"""Small helpers shared by the repository modules: get-or-create rows that are
deduplicated by a unique column (prompts by hash, annotators by name)."""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import InvalidInput, NotFound
from storage.models import NAME_MAX_CHARS, Annotator, Prompt
from storage.serial import check_text

M = TypeVar("M")


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _get_or_create(session: Session, model: type[M], where: dict[str, Any], values: dict[str, Any]) -> M:
    """The row matching ``where``, inserted (with ``values``) if missing.

    The insert runs in a SAVEPOINT so that a concurrent insert of the same key
    (PostgreSQL; on SQLite writers are serialised) costs a re-read, not the
    caller's transaction.
    """
    query = select(model).filter_by(**where)
    found = session.scalars(query).first()
    if found is not None:
        return found
    try:
        with session.begin_nested():
            row = model(**where, **values)
            session.add(row)
        return row
    except IntegrityError:
        found = session.scalars(query).first()
        if found is None:
            raise
        return found


def get_or_create_prompt(session: Session, text: str) -> Prompt:
    check_text(text, "prompt")
    return _get_or_create(session, Prompt, {"sha256": prompt_hash(text)}, {"text": text})


def check_name(name: Any, field: str) -> str:
    name = check_text(name, field, max_chars=NAME_MAX_CHARS, allow_empty=False)
    if name != name.strip():
        raise InvalidInput(f"{field} must not start or end with spaces")
    if any(ord(ch) < 32 for ch in name):
        raise InvalidInput(f"{field} must not contain control characters")
    return name


def find_annotator(session: Session, name: str) -> Annotator | None:
    return session.scalars(select(Annotator).where(Annotator.name == check_name(name, "annotator"))).first()


def get_or_create_annotator(session: Session, name: str) -> Annotator:
    return _get_or_create(session, Annotator, {"name": check_name(name, "annotator")}, {})


def require(session: Session, model: type[M], row_id: Any, what: str) -> M:
    if isinstance(row_id, bool) or not isinstance(row_id, int):
        raise InvalidInput(f"{what} id must be an integer, got {row_id!r}")
    row = session.get(model, row_id) if -(2**63) <= row_id < 2**63 else None
    if row is None:
        raise NotFound(f"no {what} with id {row_id}")
    return row
