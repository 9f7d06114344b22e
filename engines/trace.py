"""The trace: the one data model every sampler speaks.

A sampler is a generator of *events* (small frozen dataclasses, each with a
``kind`` literal). A :class:`Trace` is the append-only list of those events
plus derived views (the candidate tree, the reward table, the knockout
bracket, particle lineages). The UI renders snapshots of a growing trace,
storage writes the events as ordered rows, and a stored run replays by feeding
its events back into a fresh ``Trace``.

Events and whole traces serialise to JSON and back without loss
(``event_to_dict`` / ``event_from_dict``, ``Trace.to_json`` / ``Trace.from_json``).

Training runs (engines.training) add three kinds: ``group`` (one prompt's rollouts, kept or
dropped and by which rule), ``update`` (an optimiser step's metrics) and ``eval``
(held-out accuracy); storage keeps them like any other event.

Cost accounting lives here too: :class:`Cost` counts generated tokens,
prefill tokens, model calls, reward calls, reward tokens, diffusion network
evaluations (NFE), latent decodes (VAE decoder passes, one per image), backward
passes (one per particle back-propagated through a reward, and the denoiser
evaluations differentiated through) and wall seconds; a :class:`Budget` caps
any of them. Counters added later read as 0 in runs stored before them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------------------
# Cost and budget

COST_FIELDS = (
    "generated_tokens",
    "prefill_tokens",
    "model_calls",
    "reward_calls",
    "reward_tokens",
    "nfe",
    "decodes",
    "backward_passes",
    "backward_nfe",
    "wall_seconds",
    "requests",
    "cached_prompt_tokens",
)


@dataclass
class Cost:
    """Mutable counters for one run. Snapshots go into ``cost`` events."""

    generated_tokens: int = 0
    prefill_tokens: int = 0
    model_calls: int = 0
    reward_calls: int = 0
    reward_tokens: int = 0
    nfe: int = 0
    #: latent-to-image decoder passes, one per image (pixel-space models decode for free: 0)
    decodes: int = 0
    #: reward backward passes, one per particle (the decoder in front of the reward included)
    backward_passes: int = 0
    #: denoiser evaluations back-propagated through, per particle (counted like ``nfe``)
    backward_nfe: int = 0
    wall_seconds: float = 0.0
    #: HTTP requests to a served model (0 for in-process models)
    requests: int = 0
    #: prompt tokens a server took from its prefix cache instead of computing (not in prefill_tokens)
    cached_prompt_tokens: int = 0

    def add(self, **deltas: float) -> None:
        for name, value in deltas.items():
            if name not in COST_FIELDS:
                raise KeyError(f"unknown cost counter {name!r}")
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COST_FIELDS}

    def absorb(self, others: Iterable[Cost]) -> None:
        """Add every counter of ``others`` (e.g. the costs of requests made in parallel)."""
        for other in others:
            for name in COST_FIELDS:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def copy(self) -> Cost:
        return Cost(**self.as_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cost:
        return cls(**{k: v for k, v in data.items() if k in COST_FIELDS})


@dataclass(frozen=True)
class Budget:
    """Caps on any cost counter; ``None`` means unlimited.

    Samplers plan their work so that a counter never passes its cap (they ask
    :meth:`remaining` before a batch); wall time can only be checked between
    steps, so it may be passed by at most one step.
    """

    generated_tokens: int | None = None
    prefill_tokens: int | None = None
    model_calls: int | None = None
    reward_calls: int | None = None
    reward_tokens: int | None = None
    nfe: int | None = None
    decodes: int | None = None
    backward_passes: int | None = None
    backward_nfe: int | None = None
    wall_seconds: float | None = None
    requests: int | None = None
    cached_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in COST_FIELDS:
            cap = getattr(self, name)
            if cap is not None and (not isinstance(cap, int | float) or cap < 0):
                raise ValueError(f"budget {name} must be a non-negative number, got {cap!r}")

    def remaining(self, cost: Cost, name: str) -> float:
        cap = getattr(self, name)
        return math.inf if cap is None else cap - getattr(cost, name)

    def exhausted(self, cost: Cost) -> str | None:
        """The first counter that has reached its cap, or None."""
        for name in COST_FIELDS:
            if self.remaining(cost, name) <= 0:
                return name
        return None

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COST_FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Budget:
        return cls(**{k: v for k, v in (data or {}).items() if k in COST_FIELDS})


# ---------------------------------------------------------------------------
# Events


@dataclass(frozen=True, kw_only=True)
class NodeEvent:
    """A candidate or a partial candidate.

    ``text`` is the node's own segment (what it adds to its parent); the full
    text of a node is the concatenation along its path from the root
    (``Trace.full_text``). A node with ``parent=None`` is a root (the prompt).
    ``final`` marks complete candidates. Diffusion nodes carry ``image``, a
    reference (a ``data:image/png;base64,...`` URI) instead of text.
    """

    kind: Literal["node"] = field(default="node", init=False)
    id: str
    parent: str | None
    depth: int = 0
    text: str = ""
    tokens: int = 0
    logprob: float | None = None
    final: bool = False
    image: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ScoreEvent:
    """A reward value for a node; ``partial`` for process rewards and value estimates."""

    kind: Literal["score"] = field(default="score", init=False)
    node: str
    reward: str
    value: float
    partial: bool = False


@dataclass(frozen=True, kw_only=True)
class PruneEvent:
    """A node dropped from the search (rejected, below threshold, lost a match, resampled away)."""

    kind: Literal["prune"] = field(default="prune", init=False)
    node: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class ResampleEvent:
    """One resampling step of a particle method.

    ``particles`` are the node ids before resampling, ``ancestors[i]`` is the
    index (into ``particles``) that new particle ``i`` descends from.
    """

    kind: Literal["resample"] = field(default="resample", init=False)
    step: int
    particles: list[str]
    ancestors: list[int]
    log_weights: list[float]
    ess: float
    resampled: bool = True


@dataclass(frozen=True, kw_only=True)
class MatchEvent:
    """One game of a tournament: P(a beats b) under the pairwise reward named ``reward``, and the winner."""

    kind: Literal["match"] = field(default="match", init=False)
    round: int
    a: str
    b: str | None
    p_a: float
    winner: str
    reward: str = ""  # empty in traces stored before matches named their judge


@dataclass(frozen=True, kw_only=True)
class AcceptEvent:
    """An accept/reject decision (rejection sampling, Metropolis-Hastings)."""

    kind: Literal["accept"] = field(default="accept", init=False)
    node: str
    accepted: bool
    probability: float
    step: int = 0
    current: str | None = None


@dataclass(frozen=True, kw_only=True)
class SelectEvent:
    """The final pick(s)."""

    kind: Literal["select"] = field(default="select", init=False)
    nodes: list[str]
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class CostEvent:
    """A snapshot of the cost counters."""

    kind: Literal["cost"] = field(default="cost", init=False)
    cost: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class DoneEvent:
    """The result: picks, all complete candidates, cost, status and metrics."""

    kind: Literal["done"] = field(default="done", init=False)
    picks: list[str]
    candidates: list[str]
    cost: dict[str, float]
    status: Literal["ok", "budget", "cancelled", "error"] = "ok"
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class GroupEvent:
    """One prompt's group of training rollouts (engines.training): its sample node ids,
    rewards and advantages, whether the strategy kept it and, if not, the rule that dropped it."""

    kind: Literal["group"] = field(default="group", init=False)
    step: int
    prompt: str
    nodes: list[str]
    rewards: list[float]
    advantages: list[float] = field(default_factory=list)
    kept: bool = True
    rule: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class UpdateEvent:
    """One optimiser step of a training run: loss, KL, entropy, gradient norm, spend so far."""

    kind: Literal["update"] = field(default="update", init=False)
    step: int
    metrics: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class EvalEvent:
    """Held-out evaluation of a training run's policy after ``step`` updates."""

    kind: Literal["eval"] = field(default="eval", init=False)
    step: int
    metrics: dict[str, Any]


Event = (
    NodeEvent
    | ScoreEvent
    | PruneEvent
    | ResampleEvent
    | MatchEvent
    | AcceptEvent
    | SelectEvent
    | CostEvent
    | DoneEvent
    | GroupEvent
    | UpdateEvent
    | EvalEvent
)

EVENT_TYPES: dict[str, type] = {
    cls.__dataclass_fields__["kind"].default: cls
    for cls in (
        NodeEvent,
        ScoreEvent,
        PruneEvent,
        ResampleEvent,
        MatchEvent,
        AcceptEvent,
        SelectEvent,
        CostEvent,
        DoneEvent,
        GroupEvent,
        UpdateEvent,
        EvalEvent,
    )
}


def _clean_float(value: Any) -> Any:
    # JSON has no inf/nan; keep them as strings so the round trip is lossless.
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, list):
        return [_clean_float(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean_float(v) for k, v in value.items()}
    return value


def _restore_float(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _restore_float(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_float(v) for v in value]
    return value


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-safe dict of the event (non-finite floats are tagged)."""
    return _clean_float({f.name: getattr(event, f.name) for f in dataclasses.fields(event)})


def event_from_dict(data: dict[str, Any]) -> Event:
    kind = data.get("kind")
    cls = EVENT_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise ValueError(f"unknown fields for {kind} event: {sorted(unknown)}")
    return cls(**{k: _restore_float(v) for k, v in data.items() if k in names})


# ---------------------------------------------------------------------------
# The trace and its views


class Trace:
    """Append-only list of events with derived views, updated incrementally."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.events: list[Event] = []
        self.nodes: dict[str, NodeEvent] = {}
        self.children: dict[str | None, list[str]] = {}
        self.scores: dict[str, dict[str, float]] = {}
        self.partial_scores: dict[str, dict[str, float]] = {}
        self.pruned: dict[str, str] = {}
        self.matches: list[MatchEvent] = []
        self.resamples: list[ResampleEvent] = []
        self.accepts: list[AcceptEvent] = []
        self.selected: list[str] = []
        self.cost: dict[str, float] = Cost().as_dict()
        self.done: DoneEvent | None = None
        self.groups: list[GroupEvent] = []
        self.updates: list[UpdateEvent] = []
        self.evals: list[EvalEvent] = []
        for event in events:
            self.append(event)

    def append(self, event: Event) -> None:
        if self.done is not None:
            raise ValueError("trace is finished: no event may follow 'done'")
        self.events.append(event)
        kind = event.kind
        if kind == "node":
            if event.id in self.nodes:
                raise ValueError(f"duplicate node id {event.id!r}")
            self.nodes[event.id] = event
            self.children.setdefault(event.parent, []).append(event.id)
        elif kind == "score":
            table = self.partial_scores if event.partial else self.scores
            table.setdefault(event.node, {})[event.reward] = event.value
        elif kind == "prune":
            self.pruned[event.node] = event.reason
        elif kind == "match":
            self.matches.append(event)
        elif kind == "resample":
            self.resamples.append(event)
        elif kind == "accept":
            self.accepts.append(event)
        elif kind == "select":
            self.selected = list(event.nodes)
        elif kind == "cost":
            self.cost = dict(event.cost)
        elif kind == "group":
            self.groups.append(event)
        elif kind == "update":
            self.updates.append(event)
        elif kind == "eval":
            self.evals.append(event)
        elif kind == "done":
            self.done = event
            self.cost = dict(event.cost)
            if event.picks:
                self.selected = list(event.picks)

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.append(event)

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    # -- views ---------------------------------------------------------------

    def path(self, node_id: str) -> list[str]:
        """Node ids from the root down to ``node_id``."""
        out = []
        current: str | None = node_id
        while current is not None:
            out.append(current)
            current = self.nodes[current].parent
        return out[::-1]

    def full_text(self, node_id: str, include_root: bool = False) -> str:
        ids = self.path(node_id)
        if not include_root and ids and self.nodes[ids[0]].parent is None:
            ids = ids[1:]
        return "".join(self.nodes[i].text for i in ids)

    @property
    def candidates(self) -> list[str]:
        """Complete candidates in the order they appeared."""
        if self.done is not None and self.done.candidates:
            return list(self.done.candidates)
        return [i for i, n in self.nodes.items() if n.final]

    def reward(self, node_id: str) -> float | None:
        """The node's outcome reward (the first reward recorded for it)."""
        values = self.scores.get(node_id)
        if not values:
            return None
        return next(iter(values.values()))

    def reward_table(self) -> list[dict[str, Any]]:
        """One row per complete candidate: id, text, reward(s), picked, pruned."""
        picks = set(self.selected)
        rows = []
        for node_id in self.candidates:
            node = self.nodes[node_id]
            rows.append(
                {
                    "id": node_id,
                    "text": self.full_text(node_id),
                    "image": node.image,
                    "reward": self.reward(node_id),
                    "rewards": dict(self.scores.get(node_id, {})),
                    "tokens": sum(self.nodes[i].tokens for i in self.path(node_id) if self.nodes[i].parent is not None),
                    "picked": node_id in picks,
                    "pruned": self.pruned.get(node_id),
                    "meta": dict(node.meta),
                }
            )
        return rows

    def tree(self) -> list[dict[str, Any]]:
        """Every node with its parent, depth, latest score and state, for tree plots."""
        chosen: set[str] = set()
        for pick in self.selected:
            if pick in self.nodes:
                chosen.update(self.path(pick))
        rows = []
        for node_id, node in self.nodes.items():
            score = self.scores.get(node_id) or self.partial_scores.get(node_id) or {}
            rows.append(
                {
                    "id": node_id,
                    "parent": node.parent,
                    "depth": node.depth,
                    "text": node.text,
                    "image": node.image,
                    "final": node.final,
                    "score": next(iter(score.values())) if score else None,
                    "pruned": node_id in self.pruned,
                    "chosen": node_id in chosen,
                }
            )
        return rows

    def bracket(self) -> list[list[MatchEvent]]:
        """Matches grouped by round, in play order."""
        rounds: dict[int, list[MatchEvent]] = {}
        for match in self.matches:
            rounds.setdefault(match.round, []).append(match)
        return [rounds[r] for r in sorted(rounds)]

    def lineages(self) -> list[list[int]]:
        """Ancestor index lists, one per resampling step."""
        return [r.ancestors for r in self.resamples]

    # -- serialisation ---------------------------------------------------------

    def to_list(self) -> list[dict[str, Any]]:
        return [event_to_dict(e) for e in self.events]

    def to_json(self) -> str:
        return json.dumps(self.to_list(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_list(cls, data: Iterable[dict[str, Any]]) -> Trace:
        return cls(event_from_dict(d) for d in data)

    @classmethod
    def from_json(cls, text: str) -> Trace:
        return cls.from_list(json.loads(text))


def collect(events: Iterable[Event]) -> Trace:
    """Consume a sampler's event stream into a Trace (the batch entry point)."""
    trace = Trace()
    for event in events:
        trace.append(event)
    return trace
