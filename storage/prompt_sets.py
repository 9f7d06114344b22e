"""Stored prompt sets: one copy per content hash, found again by name.

``save_prompt_set`` stores a prompt set (an ``engines.prompts.PromptSet``, read by its
attributes: storage imports no engine code but the trace's and the task's types) with its
prompt texts in ``prompts``, deduplicated by their own hash, and returns ``(id, created)``.
The same content again returns the stored set, whatever name it was given; a name already
used by other content, or a reserved one (a built-in set's), is refused
(:class:`InvalidInput`), nothing written. ``load_prompt_set`` gives a
:class:`StoredPromptSet` back; ``app.workflows.sweeps.resolve_prompt_set`` finds a set by name among
the stored ones and the built-ins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engines.task import Task
from storage.errors import InvalidInput, NotFound
from storage.models import Prompt, PromptSetItem
from storage.models import PromptSet as PromptSetRow
from storage.rows import get_or_create_prompt
from storage.serial import from_jsonable, to_jsonable

NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@dataclass(frozen=True)
class StoredPromptSet:
    id: int
    name: str
    tasks: tuple[Task, ...]
    source: str
    model: str | None
    reward: str | None
    columns: dict[str, Any]

    @property
    def modality(self) -> str:
        return self.tasks[0].meta.get("modality", "text") if self.tasks else "text"


@dataclass(frozen=True)
class PromptSetSummary:
    id: int
    name: str
    size: int
    source: str
    sha256: str
    model: str | None
    reward: str | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def save_prompt_set(session: Session, prompts: Any, *, reserved: tuple[str, ...] = ()) -> tuple[int, bool]:
    """Store the set unless its content is stored already; (id, whether it was created).
    ``reserved`` names (the built-in sets') are refused for anything not from that built-in."""
    name = prompts.name
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput(f"a prompt set name is 1-100 letters, digits, '-', '_' or '.', got {name!r}")
    digest = prompts.content_hash()
    same = session.scalars(select(PromptSetRow).where(PromptSetRow.sha256 == digest)).first()
    if same is not None:
        return same.id, False
    if session.scalars(select(PromptSetRow).where(PromptSetRow.name == name)).first() is not None:
        raise InvalidInput(f"a different prompt set is already stored as {name!r}: choose another --name")
    if name in reserved and prompts.source != f"builtin:{name}":
        raise InvalidInput(f"{name!r} is a built-in prompt set: choose another --name")
    items = [to_jsonable(dict(t.meta), f"meta of prompt {i + 1}") for i, t in enumerate(prompts.tasks)]
    row = PromptSetRow(name=name, sha256=digest, source=prompts.source[:2000], columns=to_jsonable(prompts.columns, "columns"),
                       model=prompts.model, reward=prompts.reward, size=len(prompts.tasks))
    session.add(row)
    session.flush()
    for position, (task, meta) in enumerate(zip(prompts.tasks, items, strict=True)):
        prompt = get_or_create_prompt(session, task.prompt)
        session.add(PromptSetItem(set_id=row.id, position=position, prompt_id=prompt.id, answer=task.answer,
                                  system=task.system, chat=task.chat, meta=meta))
    session.flush()
    return row.id, True


def _summary(row: PromptSetRow) -> PromptSetSummary:
    return PromptSetSummary(id=row.id, name=row.name, size=row.size, source=row.source, sha256=row.sha256,
                            model=row.model, reward=row.reward)


def list_prompt_sets(session: Session) -> list[PromptSetSummary]:
    return [_summary(r) for r in session.scalars(select(PromptSetRow).order_by(PromptSetRow.name))]


def find_prompt_set(session: Session, name: str) -> PromptSetRow | None:
    return session.scalars(select(PromptSetRow).where(PromptSetRow.name == name)).first()


def load_prompt_set(session: Session, set_id: int) -> StoredPromptSet:
    row = session.get(PromptSetRow, set_id)
    if row is None:
        raise NotFound(f"no prompt set {set_id}")
    items = session.execute(
        select(PromptSetItem, Prompt.text).join(Prompt, Prompt.id == PromptSetItem.prompt_id)
        .where(PromptSetItem.set_id == set_id).order_by(PromptSetItem.position)
    )
    tasks = tuple(
        Task(prompt=text, answer=item.answer, system=item.system, chat=item.chat, name=f"{row.name}:{item.position}",
             meta=from_jsonable(item.meta))
        for item, text in items
    )
    return StoredPromptSet(id=row.id, name=row.name, tasks=tasks, source=row.source, model=row.model,
                           reward=row.reward, columns=from_jsonable(row.columns))
