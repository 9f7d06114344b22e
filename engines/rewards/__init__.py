"""The reward registry: spec strings -> reward objects.

A spec is ``NAME`` or ``NAME:ARG`` (``math``, ``regex:^\\d+$``, ``keywords:sun,sea``,
``rm:hf:/path/to/model``, ``digit:3``), or a weighted sum of those written
``0.7*sentiment + 0.3*length:40``. Each registered :class:`RewardFactory`
builds its reward from the argument and a :class:`RewardEnv` that lends it
the run's text model (for LLM judges) and the model loader (for learned
reward models).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from engines.registry import Registry
from engines.rewards.base import PairwiseReward, Reward, StepReward, WeightedSum


@dataclass
class RewardEnv:
    """What a reward factory may use: the run's model, a loader for others, and the folder of
    learned rewards (``learned:NAME``; handed in by the caller, None: names are not resolved)."""

    model: Any = None
    load_model: Callable[..., Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    rewards_folder: Path | None = None

    def loader(self) -> Callable[..., Any]:
        if self.load_model is None:
            from engines.models import load_model

            return load_model
        return self.load_model


@dataclass(frozen=True)
class RewardFactory:
    name: str
    kind: str  # "outcome", "pairwise" or "step"
    modality: str  # "text" or "image"
    help: str
    build: Callable[[str | None, RewardEnv], Reward | PairwiseReward | StepReward]
    arg: str | None = None  # what the ARG means, when the reward takes one
    arg_required: bool = False
    needs_answer: bool = False


REWARDS: Registry[RewardFactory] = Registry("reward")

_WEIGHTED = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*\*\s*(.+)$")


def _parse(spec: str) -> tuple[str, list[tuple[float, str]] | None]:
    """``spec`` stripped, and its weighted terms when it is a sum (``0.5*sentiment+1*length:20``)."""
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError("no reward given")
    if not _WEIGHTED.match(spec):
        return spec, None
    terms = []
    for term in spec.split("+"):
        m = _WEIGHTED.match(term)
        weight, sub = (float(m.group(1)), m.group(2)) if m else (1.0, term)
        terms.append((weight, sub.strip()))
    return spec, terms


def check_reward_names(spec: str) -> None:
    """The one-line error :func:`build_reward` would give for an unknown reward name, without
    building anything (loading a model): for checks before long work."""
    spec, terms = _parse(spec)
    for _, sub in terms or []:
        check_reward_names(sub)
    if terms is None:
        REWARDS.get(spec.partition(":")[0])


def build_reward(spec: str, env: RewardEnv | None = None) -> Reward | PairwiseReward | StepReward:
    env = env or RewardEnv()
    spec, terms = _parse(spec)
    if terms is not None:
        parts = []
        for weight, sub in terms:
            reward = build_reward(sub, env)
            if not isinstance(reward, Reward):
                raise ConfigError(f"only outcome rewards can be summed; {sub!r} is {reward.kind}")
            parts.append((weight, reward))
        return WeightedSum(parts)
    name, _, arg = spec.partition(":")
    factory = REWARDS.get(name)
    if factory.arg_required and not arg:
        raise ConfigError(f"reward {name!r} needs an argument: {name}:{factory.arg}")
    return factory.build(arg or None, env)


def list_rewards(rewards_folder: Path | None = None) -> list[dict[str, Any]]:
    """Every reward factory, then each learned reward in ``rewards_folder`` as ``learned:NAME``."""
    from engines.rewards.learned import list_learned

    rows = [
        {
            "name": f.name,
            "kind": f.kind,
            "modality": f.modality,
            "help": f.help,
            "arg": f.arg,
            "needs_answer": f.needs_answer,
        }
        for _, f in REWARDS.items()
    ]
    for card in list_learned(rewards_folder):
        metrics = card.get("metrics") or {}
        accuracy = (metrics.get("heldout") or {}).get("rate")
        rows.append(
            {
                "name": f"learned:{card.get('name')}",
                "kind": "outcome",
                "modality": card.get("modality", "text"),
                "help": f"learned from {(card.get('votes') or {}).get('used', '?')} votes on {card.get('base')}"
                + (f", held-out accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""),
                "arg": None,
                "needs_answer": False,
            }
        )
    return rows


def _load_all() -> None:
    from engines.rewards import (  # noqa: F401
        arith,
        classifier,
        controls,
        direction,  # noqa: F401  (after the rewards it combines)
        image,
        judge,
        learned,
        steps,
        text,
        verifiable,
    )


_load_all()
