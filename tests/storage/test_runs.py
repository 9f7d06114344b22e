"""Saving, loading, replaying and listing runs."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select
from storage_helpers import dump, make_trace, store_run

from engines.task import Task
from engines.trace import (
    AcceptEvent,
    CostEvent,
    DoneEvent,
    NodeEvent,
    PruneEvent,
    ResampleEvent,
    ScoreEvent,
    SelectEvent,
    Trace,
)
from storage import InvalidInput, NotFound, list_runs, load_run, save_run
from storage.models import Prompt


def _rich_trace() -> Trace:
    """Every event kind, non-finite floats, unicode: replay must give identical dicts."""
    return Trace(
        [
            NodeEvent(id="root", parent=None, text="Q: 2+2?"),
            NodeEvent(
                id="a",
                parent="root",
                depth=1,
                text=" four ☃ \u2028 é",
                tokens=3,
                logprob=-1.25,
                meta={"step": [1, 2.5, None]},
            ),
            NodeEvent(id="b", parent="root", depth=1, text=" 5", tokens=1, final=True, logprob=-math.inf),
            NodeEvent(id="a1", parent="a", depth=2, text="!", tokens=1, final=True),
            ScoreEvent(node="a", reward="prm", value=0.3, partial=True),
            ScoreEvent(node="a1", reward="exact", value=1.0),
            ScoreEvent(node="b", reward="exact", value=-math.inf),
            PruneEvent(node="b", reason="rejected"),
            ResampleEvent(
                step=1, particles=["a", "b"], ancestors=[0, 0], log_weights=[0.0, -math.inf], ess=1.0
            ),
            AcceptEvent(node="a1", accepted=True, probability=0.75, step=1, current="a"),
            CostEvent(cost={"generated_tokens": 5, "wall_seconds": 0.25}),
            SelectEvent(nodes=["a1"], reason="best"),
            DoneEvent(
                picks=["a1"],
                candidates=["a1", "b"],
                cost={"generated_tokens": 5, "nfe": 0},
                metrics={"ess": [1.0, math.nan]},
                message="fine",
            ),
        ]
    )


def test_save_load_replays_identical_events(db):
    trace = _rich_trace()
    before = trace.to_list()
    task = Task(prompt="Q: 2+2?", answer="4", meta={"source": "toy"})
    config = {"n": 4, "threshold": -math.inf, "nested": {"list": [1, 2]}}
    run_id = db.write(
        lambda s: save_run(
            s,
            trace=trace,
            task=task,
            model="m",
            reward="exact",
            sampler="smc",
            config=config,
            seed=2**40,
            title="rich",
        )
    )
    stored = db.read(lambda s: load_run(s, run_id))
    assert stored.trace.to_list() == before
    assert Trace.from_list(stored.trace.to_list()).to_list() == before  # replay again
    assert stored.config == config and stored.seed == 2**40 and stored.title == "rich"
    assert stored.task == task.as_dict()
    assert stored.prompt == "Q: 2+2?"
    assert stored.status == "ok"
    assert stored.cost == trace.cost


def test_candidates_are_stored_with_text_reward_and_pick(db):
    run_id = store_run(db, ["alpha", "beta", "gamma"], [0.5, None, float("nan")], picks=[1])
    stored = db.read(lambda s: load_run(s, run_id))
    rows = {c.node_id: c for c in stored.candidates}
    assert [rows[n].text for n in ("n0", "n1", "n2")] == ["alpha", "beta", "gamma"]
    assert rows["n0"].reward == 0.5 and rows["n1"].reward is None
    assert rows["n2"].reward is None and math.isnan(
        rows["n2"].meta["rewards"]["toy"]
    )  # exact value kept in meta
    assert [c.picked for c in stored.candidates] == [False, True, False]
    assert rows["n0"].tokens == len("alpha")


def test_prompts_are_deduplicated_by_hash(db):
    store_run(db, ["a", "b"], [1, 2], prompt="same")
    store_run(db, ["c", "d"], [1, 2], prompt="same")
    store_run(db, ["e", "f"], [1, 2], prompt="other")
    assert db.read(lambda s: s.scalar(select(func.count()).select_from(Prompt))) == 2


def test_list_runs_filters_and_orders_newest_first(db):
    first = store_run(db, ["a", "b"], [1.0, 3.0], sampler="best_of_n", model="m1", reward="r1")
    second = store_run(db, ["a", "b"], [1.0, 2.0], sampler="smc", model="m1", reward="r2")
    third = store_run(db, ["a"], [None], sampler="smc", model="m2", reward="r1")
    assert [r.id for r in db.read(list_runs)] == [third, second, first]
    assert [r.id for r in db.read(lambda s: list_runs(s, sampler="smc"))] == [third, second]
    assert [r.id for r in db.read(lambda s: list_runs(s, sampler="smc", reward="r1"))] == [third]
    assert [r.id for r in db.read(lambda s: list_runs(s, model="m1", reward="r1"))] == [first]
    assert db.read(lambda s: list_runs(s, sampler="nope")) == []
    summary = db.read(lambda s: list_runs(s, sampler="best_of_n"))[0]
    assert summary.candidates == 2 and summary.best_reward == 3.0 and summary.status == "ok"
    assert summary.as_dict()["created_at"].endswith("+00:00")
    assert [r.id for r in db.read(lambda s: list_runs(s, limit=1, offset=1))] == [second]


@pytest.mark.parametrize(
    "change",
    [
        {"model": ""},
        {"sampler": "x\x00y"},
        {"reward": "\udcff"},
        {"seed": 2**64},
        {"seed": "1"},
        {"config": {"f": object()}},
        {"config": {1: "int key"}},
        {"task": {"no": "prompt"}},
        {"title": "t" * 201},
        {"trace": "not a trace"},
    ],
)
def test_invalid_runs_write_nothing(db, change):
    store_run(db, ["keep"], [1.0])
    before = dump(db)
    kwargs = dict(
        trace=make_trace(["x", "y"], [1.0, 2.0]),
        task={"prompt": "p"},
        model="m",
        reward="r",
        sampler="s",
        config={},
        seed=0,
    )
    kwargs.update(change)
    with pytest.raises(InvalidInput):
        db.write(lambda s: save_run(s, **kwargs))
    assert dump(db) == before


def test_text_with_nul_in_a_candidate_is_refused(db):
    before = dump(db)
    with pytest.raises(InvalidInput, match="NUL"):
        store_run(db, ["fine", "bad\x00"], [1.0, 2.0])
    assert dump(db) == before


def test_load_missing_run(db):
    with pytest.raises(NotFound, match="no run with id 42"):
        db.read(lambda s: load_run(s, 42))
    with pytest.raises(NotFound):
        db.read(lambda s: load_run(s, 2**70))


def test_thousand_event_trace_round_trips(db):
    events = [NodeEvent(id="root", parent=None, text="p")]
    for i in range(999):
        events.append(NodeEvent(id=f"n{i}", parent="root", depth=1, text=f"t{i}", final=True))
    trace = Trace(events)
    run_id = db.write(
        lambda s: save_run(
            s, trace=trace, task={"prompt": "p"}, model="m", reward="r", sampler="s", config={}, seed=1
        )
    )
    stored = db.read(lambda s: load_run(s, run_id))
    assert len(stored.trace) == 1000 and stored.trace.to_list() == trace.to_list()
    assert stored.status == "incomplete" and len(stored.candidates) == 999
