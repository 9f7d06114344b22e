"""Trace the Pareto front of two (or more) rewards by turning a preference direction.

Directional Preference Alignment (Wang et al. 2024, arXiv:2402.18571) steers by the scalar
v · r(x) for a unit vector v = (cos θ, sin θ); sweeping θ from 0° to 90° moves the
optimum along the front of r_1 against r_2. At inference time the lab does the same with
any sampler: at each angle, one run per prompt steered by ``direction:θ:R1,R2``, at the
same seed (so best-of-N draws the same N candidates at every angle and only the pick
changes), and the picked candidate's reward vector r(x) is recorded. The points' front is
the exact non-dominated set (:func:`non_dominated`, O(n²) pairwise comparisons).

With several prompts a point is the mean of the picks' reward vectors over the prompts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from engines.errors import ConfigError
from engines.trace import Trace

#: more angles than this is a sweep nobody reads as a dial
MAX_ANGLES = 181


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a Pareto-dominates b (every reward higher is better): a ≥ b in every dimension, > in one."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates, in input order (equal points all stay)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def parse_angles(text: str | Sequence[float]) -> list[float]:
    """``0,15,30`` (degrees) or ``0:90:7`` (7 evenly spaced from 0 to 90) -> a list of angles in [0, 90]."""
    if isinstance(text, str):
        text = text.strip()
        if text.count(":") == 2:
            start, stop, count = text.split(":")
            try:
                a, b, k = float(start), float(stop), int(count)
            except ValueError:
                raise ConfigError(f"angles as START:STOP:COUNT need numbers, got {text!r}") from None
            if k < 2:
                raise ConfigError(f"angles START:STOP:COUNT need a COUNT of at least 2, got {k}")
            values = [a + (b - a) * i / (k - 1) for i in range(k)]
        else:
            try:
                values = [float(x) for x in text.split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"angles must be numbers in degrees (0,15,30 or 0:90:7), got {text!r}") from None
    else:
        values = [float(x) for x in text]
    if not values:
        raise ConfigError("give at least one angle")
    if len(values) > MAX_ANGLES:
        raise ConfigError(f"{len(values)} angles is too many; at most {MAX_ANGLES}")
    bad = [v for v in values if not 0 <= v <= 90]
    if bad:
        raise ConfigError(f"angles must lie in [0, 90] degrees (a direction with both rewards wanted), got {bad[0]:g}")
    return values


def parse_reward_pair(text: str | Sequence[str]) -> list[str]:
    """``sentiment,length:20`` -> the two reward specs of the dial (a comma inside an argument stays)."""
    from engines.rewards import REWARDS
    from engines.rewards.direction import split_reward_list

    specs = split_reward_list(text) if isinstance(text, str) else [s.strip() for s in text]
    if len(specs) != 2 or not all(specs):
        raise ConfigError(f"the dial traces exactly 2 rewards (R1,R2), got {len(specs)}: {text!r}"[:300])
    for spec in specs:  # a name nobody registered is refused now, not after the model has loaded
        if "*" not in spec:
            REWARDS.get(spec.partition(":")[0].strip())
    return specs


@dataclass
class FrontPoint:
    """The pick at one angle: its reward vector (mean over prompts), v · r, and the picked texts."""

    angle: float
    vector: list[float]
    values: list[float]
    score: float
    picks: list[str]
    #: per prompt, every candidate of the run as (text, v · r) in draw order
    candidates: list[list[tuple[str, float]]] = field(default_factory=list)
    on_front: bool = False


@dataclass
class FrontResult:
    rewards: list[str]
    dimensions: list[str]
    sampler: str
    params: dict[str, Any]
    prompts: list[str]
    seed: int
    points: list[FrontPoint]
    cost: dict[str, float]

    @property
    def front(self) -> list[FrontPoint]:
        return [p for p in self.points if p.on_front]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "front": [p.angle for p in self.front]}


def trace_front(
    *,
    model: str,
    rewards: Sequence[str],
    angles: Sequence[float],
    prompts: Sequence[str],
    sampler: str = "best_of_n",
    params: dict[str, Any] | None = None,
    params_are_strings: bool = False,
    size: int | None = None,
    seed: int = 0,
    chat: bool = True,
    device: str = "auto",
    dtype: str = "fp32",
    rewards_folder: str | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[FrontPoint | FrontResult]:
    """One :class:`FrontPoint` per angle as it is done, then the :class:`FrontResult` with the front marked.

    Every request is built (and so checked) here, before any model is loaded: bad input raises at the
    call, not at the first ``next``. A failing run stops the trace.
    """
    from engines.rewards.direction import direction_spec
    from engines.runner import RunRequest

    rewards = parse_reward_pair(list(rewards))
    angles = parse_angles(list(angles))
    prompts = [p for p in prompts if p is not None]
    if not prompts:
        raise ConfigError("give at least one prompt")

    requests = [
        [
            RunRequest.build(model=model, reward=direction_spec(angle, rewards), sampler=sampler, params=params,
                             params_are_strings=params_are_strings, size=size, prompt=prompt, chat=chat, seed=seed,
                             device=device, dtype=dtype, rewards_folder=rewards_folder)
            for prompt in prompts
        ]
        for angle in angles
    ]
    return _traced(rewards, angles, requests, sampler, list(prompts), seed, cancel)


def _traced(rewards: list[str], angles: list[float], requests: list[list[Any]], sampler: str, prompts: list[str],
            seed: int, cancel: threading.Event | None) -> Iterator[FrontPoint | FrontResult]:
    from engines.rewards.direction import DirectionReward
    from engines.runner import load_parts, stream_parts

    points: list[FrontPoint] = []
    cost: dict[str, float] = {}
    dimensions: list[str] = []
    for angle, row in zip(angles, requests, strict=True):
        per_prompt, picks, candidates = [], [], []
        vector: list[float] = []
        for request in row:
            model_obj, reward, sampler_obj = load_parts(request)
            assert isinstance(reward, DirectionReward)
            vector, dimensions = list(reward.vector), reward.dimensions
            trace = Trace()
            for event in stream_parts(request, model_obj, reward, sampler_obj, cancel=cancel):
                trace.append(event)
            if trace.done is None or trace.done.status != "ok" or not trace.selected:
                status = trace.done.status if trace.done else "no result"
                raise ConfigError(f"the run at {angle:g}° ended with {status!r} and picked nothing")
            text = trace.full_text(trace.selected[0])
            per_prompt.append(reward.components(request.task, [text])[0])
            picks.append(text)
            candidates.append([(r["text"], float(r["reward"])) for r in trace.reward_table() if r["reward"] is not None])
            for key, value in trace.cost.items():
                cost[key] = cost.get(key, 0) + value
        values = [sum(column) / len(column) for column in zip(*per_prompt, strict=True)]
        point = FrontPoint(angle=angle, vector=vector, values=values,
                           score=sum(w * r for w, r in zip(vector, values, strict=True)),
                           picks=picks, candidates=candidates)
        points.append(point)
        yield point
    for i in non_dominated([p.values for p in points]):
        points[i].on_front = True
    yield FrontResult(rewards=rewards, dimensions=dimensions, sampler=sampler, params=dict(requests[0][0].params),
                      prompts=list(prompts), seed=seed, points=points, cost=cost)


def run_front(callback: Callable[[FrontPoint], None] | None = None, **kwargs: Any) -> FrontResult:
    """:func:`trace_front` to the end; ``callback`` gets each point as it is done."""
    for item in trace_front(**kwargs):
        if isinstance(item, FrontResult):
            return item
        if callback is not None:
            callback(item)
    raise ConfigError("the trace ended without a result")
