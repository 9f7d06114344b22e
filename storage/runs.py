"""Runs: save a whole sampler run, load it back, list runs.

``save_run`` writes the prompt (deduplicated by hash), the run row, every trace
event in order and one row per complete candidate, all in the caller's
transaction, and returns the run id. ``load_run`` rebuilds the
``engines.trace.Trace`` from the stored events: replaying it gives event dicts
identical to the ones saved (``Trace.to_list()`` before == after).

``candidates.reward`` holds the candidate's finite outcome reward (the first
reward recorded for it, as ``Trace.reward``) or NULL when there is none or it
is not finite; every reward value, exactly, stays in the events and in the
candidate's ``meta["rewards"]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from engines.task import Task
from engines.trace import Trace, event_from_dict, event_to_dict
from storage.errors import InvalidInput
from storage.models import NAME_MAX_CHARS, Candidate, Prompt, Run, RunEvent
from storage.rows import check_name, get_or_create_prompt, require
from storage.serial import check_optional_text, check_text, from_jsonable, to_jsonable

INT64 = 2**63


@dataclass(frozen=True)
class StoredCandidate:
    id: int
    node_id: str
    text: str
    image: str | None
    reward: float | None
    tokens: int
    picked: bool
    meta: dict[str, Any]


@dataclass(frozen=True)
class StoredRun:
    """A run as stored: its metadata, its candidates and the trace rebuilt from its events."""

    id: int
    title: str | None
    prompt: str
    model: str
    reward: str
    sampler: str
    config: dict[str, Any]
    seed: int
    task: dict[str, Any]
    cost: dict[str, Any]
    status: str
    source: str
    created_at: datetime
    trace: Trace
    candidates: list[StoredCandidate]


@dataclass(frozen=True)
class RunSummary:
    id: int
    title: str | None
    created_at: datetime
    model: str
    reward: str
    sampler: str
    seed: int
    status: str
    source: str
    prompt: str
    candidates: int
    best_reward: float | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        return out


def _task_dict(task: Task | dict[str, Any]) -> dict[str, Any]:
    if isinstance(task, Task):
        task = task.as_dict()
    if not isinstance(task, dict):
        raise InvalidInput(f"task must be an engines.task.Task or a dict, got {type(task).__name__}")
    if not isinstance(task.get("prompt"), str):
        raise InvalidInput("task needs a text 'prompt'")
    return to_jsonable(task, "task")


def _finite_or_none(value: float | None) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def _candidate_rows(trace: Trace) -> list[dict[str, Any]]:
    picks = set(trace.selected)
    rows = []
    for node_id in trace.candidates:
        node = trace.nodes.get(node_id)
        if node is None:
            raise InvalidInput(f"trace lists candidate {node_id!r} but has no node event for it")
        path = trace.path(node_id)
        rows.append(
            {
                "node_id": check_text(node_id, "candidate node id", max_chars=NAME_MAX_CHARS),
                "text": check_text(trace.full_text(node_id), f"text of candidate {node_id!r}"),
                "image": check_optional_text(node.image, f"image of candidate {node_id!r}"),
                "reward": _finite_or_none(trace.reward(node_id)),
                "tokens": int(sum(trace.nodes[i].tokens for i in path)),
                "picked": node_id in picks,
                "meta": to_jsonable(
                    {
                        "rewards": dict(trace.scores.get(node_id, {})),
                        "pruned": trace.pruned.get(node_id),
                        "node": dict(node.meta),
                    },
                    f"meta of candidate {node_id!r}",
                ),
            }
        )
    return rows


def save_run(
    session: Session,
    *,
    trace: Trace,
    task: Task | dict[str, Any],
    model: str,
    reward: str,
    sampler: str,
    config: dict[str, Any],
    seed: int,
    title: str | None = None,
    cost: dict[str, Any] | None = None,
    source: str = "sample",
) -> int:
    """Store a run (metadata, every event in order, its candidates); return the run id.

    Everything is validated before the first write; an invalid run raises
    :class:`storage.errors.InvalidInput` and writes nothing. The caller commits
    (``Database.write`` does).
    """
    if not isinstance(trace, Trace):
        raise InvalidInput(f"trace must be an engines.trace.Trace, got {type(trace).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -INT64 <= seed < INT64:
        raise InvalidInput(f"seed must be a 64-bit integer, got {seed!r}")
    if not isinstance(config, dict):
        raise InvalidInput(f"config must be a dict, got {type(config).__name__}")
    task_data = _task_dict(task)
    values = {
        "title": check_optional_text(title, "title", max_chars=NAME_MAX_CHARS),
        "model": check_name(model, "model"),
        "reward": check_name(reward, "reward"),
        "sampler": check_name(sampler, "sampler"),
        "config": to_jsonable(config, "config"),
        "seed": seed,
        "task": task_data,
        "cost": to_jsonable(dict(trace.cost if cost is None else cost), "cost"),
        "status": trace.done.status if trace.done is not None else "incomplete",
        "source": check_name(source, "source"),
    }
    events = [
        {"seq": seq, "kind": event.kind, "payload": to_jsonable(event_to_dict(event), f"event {seq}")}
        for seq, event in enumerate(trace.events)
    ]
    candidates = _candidate_rows(trace)

    prompt = get_or_create_prompt(session, task_data["prompt"])
    run = Run(prompt_id=prompt.id, **values)
    session.add(run)
    session.flush()
    if events:
        session.execute(insert(RunEvent), [{"run_id": run.id, **row} for row in events])
    if candidates:
        session.execute(insert(Candidate), [{"run_id": run.id, **row} for row in candidates])
    return run.id


def _stored_candidate(row: Candidate) -> StoredCandidate:
    return StoredCandidate(
        id=row.id,
        node_id=row.node_id,
        text=row.text,
        image=row.image,
        reward=row.reward,
        tokens=row.tokens,
        picked=row.picked,
        meta=from_jsonable(row.meta),
    )


def load_run(session: Session, run_id: int) -> StoredRun:
    """The stored run with its trace rebuilt from the events (NotFound if missing)."""
    run = require(session, Run, run_id, "run")
    prompt = session.get(Prompt, run.prompt_id)
    payloads = session.scalars(
        select(RunEvent.payload).where(RunEvent.run_id == run.id).order_by(RunEvent.seq)
    )
    trace = Trace(event_from_dict(from_jsonable(p)) for p in payloads)
    candidates = session.scalars(select(Candidate).where(Candidate.run_id == run.id).order_by(Candidate.id))
    return StoredRun(
        id=run.id,
        title=run.title,
        prompt=prompt.text if prompt else "",
        model=run.model,
        reward=run.reward,
        sampler=run.sampler,
        config=from_jsonable(run.config),
        seed=run.seed,
        task=from_jsonable(run.task),
        cost=from_jsonable(run.cost),
        status=run.status,
        source=run.source,
        created_at=run.created_at,
        trace=trace,
        candidates=[_stored_candidate(c) for c in candidates],
    )


def list_runs(
    session: Session,
    *,
    sampler: str | None = None,
    model: str | None = None,
    reward: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[RunSummary]:
    """Runs, newest first, optionally filtered by exact sampler, model and reward names."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise InvalidInput(f"limit must be an integer from 1 to 10000, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInput(f"offset must be a non-negative integer, got {offset!r}")
    stats = (
        select(
            Candidate.run_id.label("run_id"),
            func.count(Candidate.id).label("n"),
            func.max(Candidate.reward).label("best"),
        )
        .group_by(Candidate.run_id)
        .subquery()
    )
    query = (
        select(Run, Prompt.text, stats.c.n, stats.c.best)
        .join(Prompt, Prompt.id == Run.prompt_id)
        .outerjoin(stats, stats.c.run_id == Run.id)
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(limit)
        .offset(offset)
    )
    for column, value, name in (
        (Run.sampler, sampler, "sampler"),
        (Run.model, model, "model"),
        (Run.reward, reward, "reward"),
    ):
        if value is not None:
            query = query.where(column == check_text(value, name, max_chars=NAME_MAX_CHARS))
    return [
        RunSummary(
            id=run.id,
            title=run.title,
            created_at=run.created_at,
            model=run.model,
            reward=run.reward,
            sampler=run.sampler,
            seed=run.seed,
            status=run.status,
            source=run.source,
            prompt=prompt_text,
            candidates=int(n or 0),
            best_reward=best,
        )
        for run, prompt_text, n, best in session.execute(query)
    ]
