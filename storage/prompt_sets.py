"""Stored prompt sets: one copy per content hash, found again by name.

``save_prompt_set`` stores an ``engines.prompts.PromptSet`` (its prompt texts in
``prompts``, deduplicated by their own hash) and returns ``(id, created)``. The same
content again returns the stored set, whatever name it was given; a name already used
by other content is refused (:class:`InvalidInput`), nothing written. ``load_prompt_set``
rebuilds the PromptSet; ``resolve_prompt_set`` finds a set by name among the stored ones
and the built-ins (a built-in is stored on first use, so sweeps can point at it).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from engines.prompts import PromptSet, builtin_names, builtin_prompt_set, check_set_name
from engines.task import Task
from storage.common import get_or_create_prompt
from storage.errors import InvalidInput, NotFound
from storage.models import Prompt, PromptSetItem
from storage.models import PromptSet as PromptSetRow
from storage.serial import from_jsonable, to_jsonable


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


def save_prompt_set(session: Session, prompts: PromptSet) -> tuple[int, bool]:
    """Store the set unless its content is stored already; (id, whether it was created)."""
    try:
        name = check_set_name(prompts.name)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    digest = prompts.content_hash()
    same = session.scalars(select(PromptSetRow).where(PromptSetRow.sha256 == digest)).first()
    if same is not None:
        return same.id, False
    if session.scalars(select(PromptSetRow).where(PromptSetRow.name == name)).first() is not None:
        raise InvalidInput(f"a different prompt set is already stored as {name!r}: choose another --name")
    if name in builtin_names() and not prompts.source.startswith("builtin:"):
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


def load_prompt_set(session: Session, set_id: int) -> PromptSet:
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
    return PromptSet(name=row.name, tasks=tasks, source=row.source, model=row.model, reward=row.reward,
                     columns=from_jsonable(row.columns))


def resolve_prompt_set(session: Session, name: str) -> tuple[int, PromptSet]:
    """(stored id, set) for a stored set's name or a built-in one (stored now if it is not yet)."""
    row = find_prompt_set(session, name)
    if row is not None:
        return row.id, load_prompt_set(session, row.id)
    if name in builtin_names():
        prompts = builtin_prompt_set(name)
        set_id, _ = save_prompt_set(session, prompts)
        return set_id, prompts
    known = sorted({s.name for s in list_prompt_sets(session)} | set(builtin_names()))
    raise NotFound(f"no prompt set {name!r}; known: {', '.join(known)} (add one with: samplescope prompts add FILE)")
