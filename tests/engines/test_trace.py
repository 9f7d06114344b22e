import math

import pytest

from engines.trace import (
    AcceptEvent,
    Budget,
    Cost,
    CostEvent,
    DoneEvent,
    MatchEvent,
    NodeEvent,
    PruneEvent,
    ResampleEvent,
    ScoreEvent,
    SelectEvent,
    Trace,
    collect,
    event_from_dict,
    event_to_dict,
)


def sample_events():
    return [
        NodeEvent(id="root", parent=None, text="Q: 2+2?", tokens=5),
        NodeEvent(id="a", parent="root", depth=1, text="4", tokens=1, logprob=-0.1, final=True, meta={"finish": "eos"}),
        NodeEvent(id="b", parent="root", depth=1, text="five", tokens=2, logprob=-2.5, final=True, image="data:image/png;base64,AAAA"),
        NodeEvent(id="c", parent="b", depth=2, text="!", tokens=1, logprob=float("-inf")),
        ScoreEvent(node="a", reward="math", value=1.0),
        ScoreEvent(node="b", reward="math", value=0.0),
        ScoreEvent(node="c", reward="prm", value=0.25, partial=True),
        PruneEvent(node="c", reason="below threshold"),
        ResampleEvent(step=1, particles=["a", "b"], ancestors=[0, 0], log_weights=[0.0, float("-inf")], ess=1.0),
        MatchEvent(round=1, a="a", b="b", p_a=0.9, winner="a"),
        MatchEvent(round=2, a="a", b=None, p_a=1.0, winner="a"),
        AcceptEvent(node="a", accepted=True, probability=1.0, step=1),
        SelectEvent(nodes=["a"], reason="best"),
        CostEvent(cost=Cost(generated_tokens=4).as_dict()),
        DoneEvent(picks=["a"], candidates=["a", "b"], cost=Cost(generated_tokens=4, wall_seconds=0.5).as_dict(), metrics={"rate": math.nan}),
    ]


def test_every_event_round_trips_through_json():
    events = sample_events()
    trace = Trace(events)
    again = Trace.from_json(trace.to_json())
    assert len(again) == len(events)
    for before, after in zip(events, again.events, strict=True):
        assert type(before) is type(after)
        a, b = event_to_dict(before), event_to_dict(after)
        assert a == b
    assert again.nodes["c"].logprob == float("-inf")
    assert math.isnan(again.done.metrics["rate"])
    assert again.resamples[0].log_weights[1] == float("-inf")


def test_views():
    trace = Trace(sample_events())
    assert trace.full_text("c") == "five!"
    assert trace.full_text("c", include_root=True) == "Q: 2+2?five!"
    assert trace.candidates == ["a", "b"]
    table = {row["id"]: row for row in trace.reward_table()}
    assert table["a"]["picked"] and table["a"]["reward"] == 1.0
    assert table["b"]["image"].startswith("data:image/png")
    assert table["a"]["tokens"] == 1 and table["b"]["tokens"] == 2  # the prompt is not counted
    tree = {row["id"]: row for row in trace.tree()}
    assert tree["c"]["pruned"] and tree["c"]["score"] == 0.25
    assert tree["a"]["chosen"] and tree["root"]["chosen"] and not tree["b"]["chosen"]
    assert [len(r) for r in trace.bracket()] == [1, 1]
    assert trace.lineages() == [[0, 0]]
    assert trace.cost["wall_seconds"] == 0.5


def test_trace_is_append_only_after_done_and_rejects_duplicate_nodes():
    trace = Trace(sample_events())
    with pytest.raises(ValueError):
        trace.append(SelectEvent(nodes=["b"]))
    fresh = Trace([NodeEvent(id="x", parent=None)])
    with pytest.raises(ValueError):
        fresh.append(NodeEvent(id="x", parent=None))


def test_unknown_kinds_and_fields_are_refused():
    with pytest.raises(ValueError):
        event_from_dict({"kind": "teleport"})
    with pytest.raises(ValueError):
        event_from_dict({"kind": "prune", "node": "a", "reason": "x", "extra": 1})


def test_events_are_frozen():
    event = ScoreEvent(node="a", reward="r", value=1.0)
    with pytest.raises(AttributeError):
        event.value = 2.0  # type: ignore[misc]


def test_budget_caps_and_validation():
    budget = Budget(generated_tokens=10)
    cost = Cost(generated_tokens=9)
    assert budget.remaining(cost, "generated_tokens") == 1
    assert budget.exhausted(cost) is None
    cost.add(generated_tokens=1)
    assert budget.exhausted(cost) == "generated_tokens"
    assert budget.remaining(cost, "nfe") == math.inf
    with pytest.raises(ValueError):
        Budget(generated_tokens=-1)
    with pytest.raises(KeyError):
        cost.add(bananas=1)
    assert Budget.from_dict(budget.as_dict()) == budget


def test_collect_consumes_a_stream():
    trace = collect(iter(sample_events()))
    assert trace.done is not None and trace.selected == ["a"]
