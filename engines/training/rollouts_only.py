"""The rollout side of a training run, without updates: what would each strategy keep, at what cost?

``rollouts_only(config, strategy_params)`` draws batch after batch with the strategy's
``collect`` from a policy that never changes (any text model: a served one through
:class:`~engines.training.rollout_policy.TextModelPolicy`, or the lab's in-process policy
left untrained), under the run's budget (samples, tokens, seconds; ``max_updates`` caps the
batches). It yields the same rollout events as a training run (sample ``node``s, their
``score``s, one ``group`` per prompt, kept or dropped with the rule), one ``cost`` event
per batch (spend so far, and what that batch drew and kept as ``batch_*``) and a ``done`` event whose metrics are the
summary (:func:`kept_summary`); never an ``update`` or ``eval`` event, and it writes nothing.

Because the policy does not move, every batch is a draw from the same distribution: the
kept share and the samples spent per kept sample estimate what the strategy's filter costs
on this model and these prompts at the start of training. Determinism: every draw comes
from one ``torch.Generator`` seeded from ``config.seed`` (a served model gets its request
seeds from it, engines/models/served/openai_compatible.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from engines.errors import BudgetExhausted, Cancelled, ConfigError
from engines.task import Task
from engines.trace import CostEvent, DoneEvent, Event, GroupEvent
from engines.training import build_strategy
from engines.training.base import Allowance, Policy, PromptPool
from engines.training.rewards import TrainingReward
from engines.training.tree import TreeStrategy

#: strategies whose rollouts need the policy's weights in process, and why (tree strategies: every TreeStrategy)
NEEDS_WEIGHTS = {"eepo": "takes an unlearning step on the policy's weights between its two half-groups"}


def kept_summary(groups: Iterable[GroupEvent]) -> dict[str, Any]:
    """Groups and samples drawn and kept, the kept share of samples, the groups dropped by each rule and
    the mean reward of every sample drawn."""
    groups = list(groups)
    drawn = sum(len(g.rewards) for g in groups)
    kept = sum(int(g.meta.get("kept_samples", len(g.rewards) if g.kept else 0)) for g in groups)
    rules: dict[str, int] = {}
    for g in groups:
        if not g.kept:
            rules[g.rule or "dropped"] = rules.get(g.rule or "dropped", 0) + 1
    rewards = [r for g in groups for r in g.rewards]
    return {
        "groups_drawn": len(groups),
        "groups_kept": sum(1 for g in groups if g.kept),
        "samples_drawn": drawn,
        "samples_kept": kept,
        "kept_share": kept / drawn if drawn else None,
        "reward_mean": sum(rewards) / len(rewards) if rewards else None,
        "drop_rules": rules,
    }


def rollouts_only(
    config: Any,
    strategy_params: dict[str, Any] | None = None,
    *,
    cancel: threading.Event | None = None,
    policy: Policy | None = None,
    reward: TrainingReward | None = None,
    prompts: list[Task] | None = None,
) -> Iterator[Event]:
    """Run the strategy's rollouts on ``config`` (a :class:`~engines.training.loop.TrainConfig`) without
    updates; see the module docstring. Bad input raises before any event."""
    strategy = build_strategy(config.strategy, strategy_params)
    if policy is None:
        from engines.training.rollout_policy import load_rollout_policy

        policy = load_rollout_policy(config.policy)
    if reward is None:
        from engines.training.rewards import training_reward

        reward = training_reward(config.reward, config.reward_control)
    if prompts is None:
        from engines.training.prompts import load_prompts

        prompts = load_prompts(config.prompts)
    pool = PromptPool(tuple(prompts))
    if not getattr(policy, "trainable", False):
        name = getattr(policy, "name", config.policy)
        if isinstance(strategy, TreeStrategy):
            raise ConfigError(f"{config.strategy} grows rollout trees from token prefixes of an in-process policy; "
                              f"{name} gives whole responses only: pick a strategy that draws whole responses")
        if config.strategy in NEEDS_WEIGHTS:
            raise ConfigError(f"{config.strategy} {NEEDS_WEIGHTS[config.strategy]}; {name} is rollout-only")
    budget = Allowance(config.samples, config.tokens, config.seconds, cancel=cancel)
    rng = torch.Generator().manual_seed(config.seed)
    groups: list[GroupEvent] = []
    batches, status, message = 0, "ok", ""
    try:
        while config.max_updates is None or batches < config.max_updates:
            strategy.step = batches
            generator = strategy.collect(policy, pool, reward, budget, rng)
            first = len(groups)
            while True:
                try:
                    event = next(generator)
                except StopIteration as stop:
                    batch = stop.value
                    break
                if event.kind == "group":
                    groups.append(event)
                yield event
            if not batch.samples_drawn:
                raise BudgetExhausted("budget exhausted before a batch could be drawn")
            batches += 1
            batch_summary = _numbers(kept_summary(groups[first:]))
            yield CostEvent(cost={"batch": batches, **budget.as_dict(), **{f"batch_{k}": v for k, v in batch_summary.items()}})
    except BudgetExhausted as exc:
        status, message = "budget", str(exc)
    except Cancelled as exc:
        status, message = "cancelled", str(exc)
    summary = kept_summary(groups)
    kept = summary["samples_kept"]
    metrics = {
        "mode": "rollouts_only", "policy": getattr(policy, "name", config.policy), "strategy": config.strategy,
        "batches": batches, **budget.as_dict(), **summary,
        "samples_per_kept_sample": budget.spent_samples / kept if kept else None,
        "tokens_per_kept_sample": budget.spent_tokens / kept if kept else None,
    }
    yield DoneEvent(
        picks=[], candidates=[], status=status, message=message, metrics=metrics,
        cost={"generated_tokens": budget.spent_tokens, "reward_calls": budget.spent_samples,
              "wall_seconds": budget.spent_seconds},
    )


def _numbers(summary: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a summary (a cost event carries numbers only)."""
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and v is not None}
