"""Helpers shared by the storage tests (toy traces, stored runs, full-table dumps)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from engines.trace import DoneEvent, MatchEvent, NodeEvent, ScoreEvent, SelectEvent, Trace
from storage import Database, save_run
from storage.models import TABLES


def dump(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order: compare before/after to prove nothing changed."""
    out = {}
    with database.engine.connect() as conn:
        for table in TABLES:
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


def make_trace(
    texts: list[str],
    rewards: list[float | None],
    *,
    picks: list[int] | None = None,
    matches: list[tuple[int, int | None, int]] | None = None,
    reward_name: str = "toy",
) -> Trace:
    """A finished trace: a root prompt node, one child per text, scores, optional knockout games."""
    events: list[Any] = [NodeEvent(id="root", parent=None, text="PROMPT", depth=0)]
    ids = [f"n{i}" for i in range(len(texts))]
    for node_id, body in zip(ids, texts, strict=True):
        events.append(NodeEvent(id=node_id, parent="root", depth=1, text=body, tokens=len(body), final=True))
    for node_id, value in zip(ids, rewards, strict=True):
        if value is not None:
            events.append(ScoreEvent(node=node_id, reward=reward_name, value=value))
    for rnd, (a, b, winner) in enumerate(matches or []):
        events.append(
            MatchEvent(round=rnd, a=ids[a], b=None if b is None else ids[b], p_a=0.5, winner=ids[winner])
        )
    chosen = [ids[i] for i in (picks if picks is not None else [0])]
    events.append(SelectEvent(nodes=chosen))
    events.append(DoneEvent(picks=chosen, candidates=ids, cost={"generated_tokens": 10, "wall_seconds": 0.5}))
    return Trace(events)


def store_run(
    database: Database,
    texts: list[str],
    rewards: list[float | None],
    *,
    prompt: str = "Say something nice.",
    sampler: str = "best_of_n",
    model: str = "toy-model",
    reward: str = "toy",
    seed: int = 0,
    **trace_kwargs: Any,
) -> int:
    trace = make_trace(texts, rewards, reward_name=reward, **trace_kwargs)
    return database.write(
        lambda s: save_run(
            s,
            trace=trace,
            task={"prompt": prompt},
            model=model,
            reward=reward,
            sampler=sampler,
            config={"n": len(texts), "temperature": 0.7},
            seed=seed,
            title=f"{sampler} on {prompt[:20]}",
        )
    )
