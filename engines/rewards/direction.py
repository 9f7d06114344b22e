"""A preference direction over several rewards: the scalar reward v · r(x).

Directional Preference Alignment (Wang et al. 2024, "Arithmetic Control of LLMs for
Diverse User Preferences: Directional Preference Alignment with Multi-Objective Rewards",
arXiv:2402.18571) writes a user's preference as a unit vector v in the space of k reward
dimensions r(x) = (r_1(x), ..., r_k(x)) and aligns to the scalar v · r(x); for two rewards
v = (cos θ, sin θ), so one dial (θ) sweeps from "only r_1" (0°) to "only r_2" (90°).
The lab uses the same scalar at inference time: any sampler steered by ``direction:...``
maximises v · r, and :mod:`engines.pareto` traces the picks over θ.

Specs:

- ``direction:ANGLE:R1,R2``: v = (cos ANGLE°, sin ANGLE°) over two rewards;
- ``direction:W1,W2,...,Wk:R1,...,Rk``: v = w / |w| over k rewards (w ≠ 0).

Each ``Ri`` is any outcome reward spec (``sentiment``, ``length:20``, a weighted sum);
a comma inside a reward's own argument (``keywords:sun,sea``) stays with it, since a piece
that does not start with a registered reward's name is joined to the argument before it.
The rewards are used on their own scales (no normalisation): v · r is the paper's scalar.
Any angle or sign is allowed (the paper's "more helpfulness with less verbosity" is a negative
second coordinate); the Pareto tracer turns the dial over [0°, 90°], where both are wanted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from engines.errors import ConfigError
from engines.rewards import REWARDS, RewardEnv, RewardFactory, build_reward
from engines.rewards.base import Reward
from engines.task import Task
from engines.trace import Cost

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def unit_vector(weights: Sequence[float]) -> tuple[float, ...]:
    """w / |w|; a zero (or non-finite) vector is refused in one line."""
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"direction weights must be finite numbers, got {list(weights)}")
    norm = math.sqrt(sum(w * w for w in weights))
    if norm == 0:
        raise ConfigError("the direction is the zero vector; give at least one non-zero weight")
    return tuple(w / norm for w in weights)


def angle_vector(degrees: float) -> tuple[float, float]:
    """(cos θ, sin θ) for θ in degrees (the two-reward dial)."""
    if not math.isfinite(degrees):
        raise ConfigError(f"the direction's angle must be a finite number of degrees, got {degrees}")
    theta = math.radians(degrees)
    return math.cos(theta), math.sin(theta)


def split_reward_list(text: str) -> list[str]:
    """``sentiment,length:20,keywords:sun,sea`` -> [sentiment, length:20, keywords:sun,sea]: a piece whose
    name (before ``:``) is not a registered reward continues the argument of the reward before it (if that
    one has an argument; otherwise it stands alone, and building it says it is unknown)."""
    specs: list[str] = []
    for piece in text.split(","):
        name = piece.strip().partition(":")[0].strip()
        starts_a_reward = name in REWARDS or re.match(r"^\s*[0-9]*\.?[0-9]+\s*\*", piece) is not None
        if specs and not starts_a_reward and ":" in specs[-1]:
            specs[-1] += "," + piece
        else:
            specs.append(piece.strip())
    return [s.strip() for s in specs]


def parse_direction(arg: str | None) -> tuple[tuple[float, ...], list[str]]:
    """(unit vector, reward specs) of a ``direction:`` argument; one-line errors for bad input."""
    usage = "direction:ANGLE:R1,R2 or direction:W1,...,Wk:R1,...,Rk"
    head, sep, rest = (arg or "").partition(":")
    if not sep or not head.strip() or not rest.strip():
        raise ConfigError(f"a direction needs weights and rewards: {usage}")
    numbers = head.split(",")
    if not all(_NUMBER.match(x) for x in numbers):
        raise ConfigError(f"direction weights must be numbers, got {head.strip()!r}: {usage}")
    specs = split_reward_list(rest)
    if any(not s for s in specs):
        raise ConfigError(f"an empty reward in the direction's list {rest.strip()!r}")
    if len(numbers) == 1:
        if len(specs) != 2:
            raise ConfigError(f"an angle sets a direction over exactly 2 rewards, got {len(specs)}: {usage}")
        return angle_vector(float(numbers[0])), specs
    if len(numbers) != len(specs):
        raise ConfigError(f"the direction has {len(numbers)} weights but {len(specs)} rewards; give one weight per reward")
    return unit_vector([float(x) for x in numbers]), specs


class DirectionReward(Reward):
    """v · r(x) for a unit vector v over outcome rewards r_1..r_k (DPA's scalar reward).

    :meth:`components` gives each candidate's reward vector r(x), which the Pareto tracer
    records (the score protocol carries one number per candidate, so the coordinates are
    read here rather than from the run's score events)."""

    def __init__(self, vector: Sequence[float], rewards: Sequence[Reward]) -> None:
        if len(vector) != len(rewards) or not rewards:
            raise ConfigError(f"a direction needs one weight per reward, got {len(vector)} and {len(rewards)}")
        modalities = {r.modality for r in rewards}
        if len(modalities) != 1:
            raise ConfigError("a direction's rewards must all score the same modality (text or image)")
        self.vector = unit_vector(vector)
        self.rewards = list(rewards)
        self.modality = modalities.pop()  # type: ignore[misc]
        self.requires_answer = any(r.requires_answer for r in rewards)  # type: ignore[misc]
        self.name = "direction:" + ",".join(f"{w:.4g}" for w in self.vector) + ":" + ",".join(r.name for r in rewards)

    @property
    def dimensions(self) -> list[str]:
        return [r.name for r in self.rewards]

    def components(self, task: Task, candidates: Sequence[Any], *, usage: Cost | None = None) -> list[list[float]]:
        """r(x) per candidate: one value per reward dimension."""
        columns = [reward.score(task, candidates, usage=usage) for reward in self.rewards]
        return [list(row) for row in zip(*columns, strict=True)] if columns else []

    def score(self, task: Task, candidates: Sequence[Any], *, usage: Cost | None = None) -> list[float]:
        return [project(self.vector, row) for row in self.components(task, candidates, usage=usage)]

    def check_task(self, task: Task) -> None:
        for reward in self.rewards:
            reward.check_task(task)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "vector": list(self.vector), "dimensions": self.dimensions}


def project(vector: Sequence[float], values: Sequence[float]) -> float:
    """v · r."""
    return float(sum(w * r for w, r in zip(vector, values, strict=True)))


def build_direction(arg: str | None, env: RewardEnv) -> DirectionReward:
    vector, specs = parse_direction(arg)
    rewards = []
    for spec in specs:
        reward = build_reward(spec, env)
        if not isinstance(reward, Reward):
            raise ConfigError(f"a direction combines outcome rewards; {spec!r} is a {reward.kind} reward")
        rewards.append(reward)
    return DirectionReward(vector, rewards)


def direction_spec(angle_degrees: float, rewards: Sequence[str]) -> str:
    """The spec of the two-reward dial at ``angle_degrees``."""
    if len(rewards) != 2:
        raise ConfigError(f"an angle sets a direction over exactly 2 rewards, got {len(rewards)}")
    return f"direction:{angle_degrees:g}:{','.join(r.strip() for r in rewards)}"


REWARDS.add(
    "direction",
    RewardFactory(
        name="direction",
        kind="outcome",
        modality="text",
        help="v·r for a unit preference vector over rewards (DPA): direction:ANGLE:R1,R2 or direction:W1,..,Wk:R1,..,Rk",
        build=build_direction,
        arg="ANGLE|W1,...,Wk:R1,...,Rk",
        arg_required=True,
    ),
)
