"""Rewards for training, and the reward controls that tell learning from noise.

``training_reward(spec, control)`` wraps an outcome reward (any registered spec, e.g.
``math``) as the ``(task, completions, rng) -> rewards`` function strategies call:

- ``exact``: the reward as it is;
- ``random``: Bernoulli(``random_p``) drawn from the run's generator, independent of the
  sample (Shao et al. 2025, "Spurious Rewards: Rethinking Training Signals in RLVR"; the
  control of Wu et al. 2025, "Reasoning or Memorization?"): no strategy should learn the
  task from it;
- ``inverted``: 1 - r (rewards in [0, 1]): training should *lower* accuracy;
- ``gated_step``: r + ``step_bonus`` * [r >= ``gate``] * mean(step scores), a process reward
  that counts only when the outcome passes the gate (the step scores from ``step_reward``,
  ``arith_steps`` by default: exact prefix validity), so steps are never rewarded on a
  wrong answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engines.errors import ConfigError
from engines.rewards.base import Reward, StepReward
from engines.task import Task

CONTROLS = ("exact", "random", "inverted", "gated_step")


@dataclass
class TrainingReward:
    outcome: Reward
    control: str = "exact"
    random_p: float = 0.5
    step: StepReward | None = None
    step_bonus: float = 0.5
    gate: float = 1.0

    def __post_init__(self) -> None:
        if self.control not in CONTROLS:
            raise ConfigError(f"reward control must be one of {', '.join(CONTROLS)}, got {self.control!r}")
        if not 0 <= self.random_p <= 1:
            raise ConfigError("random_p must be in [0, 1]")
        if self.control == "gated_step" and self.step is None:
            raise ConfigError("the gated_step control needs a step reward")

    @property
    def name(self) -> str:
        return self.outcome.name if self.control == "exact" else f"{self.outcome.name}:{self.control}"

    def __call__(self, task: Task, completions: Sequence[str], rng: torch.Generator) -> list[float]:
        if self.control == "random":
            return torch.bernoulli(torch.full((len(completions),), self.random_p), generator=rng).tolist()
        values = [float(v) for v in self.outcome.score(task, list(completions))]
        if self.control == "inverted":
            return [1.0 - v for v in values]
        if self.control == "gated_step":
            from engines.tasks.arith import split_steps

            steps = [split_steps(c) or [""] for c in completions]
            scores = self.step.score_steps(task, steps)  # type: ignore[union-attr]
            return [
                v + (self.step_bonus * sum(s) / len(s) if v >= self.gate and s else 0.0)
                for v, s in zip(values, scores, strict=True)
            ]
        return values

    def describe(self) -> dict[str, Any]:
        return {"reward": self.outcome.name, "control": self.control}


def training_reward(spec: str = "math", control: str = "exact", *, step_spec: str = "arith_steps", **options: Any) -> TrainingReward:
    """A :class:`TrainingReward` from reward specs (one-line errors for the wrong kinds)."""
    from engines.rewards import build_reward

    outcome = build_reward(spec)
    if not isinstance(outcome, Reward):
        raise ConfigError(f"training needs an outcome reward; {spec!r} is {getattr(outcome, 'kind', 'not one')}")
    step = None
    if control == "gated_step":
        step = build_reward(step_spec)
        if not isinstance(step, StepReward):
            raise ConfigError(f"{step_spec!r} is not a step reward")
    return TrainingReward(outcome=outcome, control=control, step=step, **options)
