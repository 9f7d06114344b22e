"""The rollout-strategy protocol: what every training-time sampling strategy shares.

A strategy subclasses :class:`RolloutStrategy`, declares a frozen ``Config``
(a :class:`StrategyConfig`, with UI metadata and its paper) and implements
:meth:`RolloutStrategy.collect`::

    batch = yield from strategy.collect(policy, prompts, reward, budget, rng)

``collect`` is a generator: it yields trace events (each sample as a ``node``
under its prompt's root node, its ``score``, one ``group`` event per prompt
group drawn, kept or dropped with the rule that dropped it) and *returns* a
:class:`TrainingBatch`: token ids, old log-probs, rewards, advantages and
per-sample / per-token weights. The update (engines.training.update) is
separate and reads only the batch.

Every sample a strategy draws goes through :meth:`Allowance.draw`, which
counts it (and its tokens) before the strategy decides anything: dropped
groups and discarded extras cost as much as kept ones, and a strategy can
never draw past the budget (it asks :meth:`Allowance.fit` first).

Symbols: G = group size (samples per prompt), r_i a sample's reward,
A_i its advantage, w_i its per-sample weight. A batch's surrogate loss is
``-sum_i sum_t token_weight[i][t] * A_i * ratio_it`` (engines.training.update), so
the expected gradient of a strategy is ``E[sum_i w_i A_i grad log p(x_i)]`` with the
aggregation factor folded into the token weights (:func:`token_weights`).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch

from engines.config import Config, param
from engines.errors import BudgetExhausted, Cancelled, ConfigError
from engines.task import Task
from engines.trace import Event, GroupEvent, NodeEvent, ScoreEvent

Aggregation = Literal["token_mean", "sequence_mean", "sample_sum"]


# ---------------------------------------------------------------------------
# What a policy offers


@dataclass(frozen=True)
class Rollout:
    """One sampled completion: token ids (end-of-text included when emitted) and the
    sampling policy's log-prob of each token (the "old" log-probs of the ratio)."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    finished: bool = True

    @property
    def tokens(self) -> int:
        return len(self.completion_ids)


class Policy(Protocol):
    """A text policy the lab can draw rollouts from (and train, when ``trainable``)."""

    name: str
    trainable: bool

    def rollout(
        self, prompts: Sequence[str], *, temperature: float, max_new_tokens: int, rng: torch.Generator
    ) -> list[Rollout]:
        """One completion per prompt, drawn with ``rng``."""

    def token_logprobs(self, rollouts: Sequence[Rollout]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs [B, T] with grad, entropies [B, T] detached, mask [B, T]) of the completions."""


# ---------------------------------------------------------------------------
# Budget


class Allowance:
    """The sample / token / wall-second budget of a training run, and the cancel flag.

    Strategies draw through :meth:`draw`; :meth:`fit` says how many new samples fit
    (worst case: every sample uses ``max_new_tokens``), so caps are never passed.
    Wall seconds are checked between draws, so they may be passed by one draw.
    """

    def __init__(
        self,
        samples: int | None = None,
        tokens: int | None = None,
        seconds: float | None = None,
        *,
        cancel: threading.Event | None = None,
        spent_samples: int = 0,
        spent_tokens: int = 0,
        spent_seconds: float = 0.0,
    ) -> None:
        for name, cap in (("samples", samples), ("tokens", tokens), ("seconds", seconds)):
            if cap is not None and cap <= 0:
                raise ConfigError(f"budget {name} must be positive, got {cap!r}")
        self.samples, self.tokens, self.seconds = samples, tokens, seconds
        self.cancel = cancel
        self.spent_samples, self.spent_tokens = spent_samples, spent_tokens
        self._seconds_before = spent_seconds
        self._start = time.perf_counter()

    @property
    def spent_seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._start

    def check(self) -> None:
        """Raise Cancelled or BudgetExhausted when the run must stop now."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("run cancelled")
        if self.seconds is not None and self.spent_seconds >= self.seconds:
            raise BudgetExhausted("budget exhausted: seconds")

    def fit(self, n: int, max_new_tokens: int) -> int:
        """How many of ``n`` new samples fit the sample and token caps."""
        fit = n
        if self.samples is not None:
            fit = min(fit, self.samples - self.spent_samples)
        if self.tokens is not None:
            fit = min(fit, (self.tokens - self.spent_tokens) // max_new_tokens)
        return max(0, fit)

    def draw(
        self, policy: Policy, prompts: Sequence[str], *, temperature: float, max_new_tokens: int, rng: torch.Generator
    ) -> list[Rollout]:
        """Draw one rollout per prompt, all or none: raise BudgetExhausted when they do not fit."""
        self.check()
        if self.fit(len(prompts), max_new_tokens) < len(prompts):
            raise BudgetExhausted("budget exhausted: samples" if self.samples is not None else "budget exhausted: tokens")
        rollouts = policy.rollout(prompts, temperature=temperature, max_new_tokens=max_new_tokens, rng=rng)
        self.spent_samples += len(rollouts)
        self.spent_tokens += sum(r.tokens for r in rollouts)
        return rollouts

    def as_dict(self) -> dict[str, float]:
        return {"samples": self.spent_samples, "tokens": self.spent_tokens, "seconds": round(self.spent_seconds, 3)}


# ---------------------------------------------------------------------------
# Rewards and prompts


class RewardFn(Protocol):
    """Scores completions of one task; ``rng`` feeds the random-reward controls."""

    name: str

    def __call__(self, task: Task, completions: Sequence[str], rng: torch.Generator) -> list[float]: ...


@dataclass(frozen=True)
class PromptPool:
    """The training prompts; strategies draw from it uniformly with replacement through the run's rng."""

    tasks: tuple[Task, ...]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("the prompt set is empty")

    def draw(self, k: int, rng: torch.Generator) -> list[int]:
        return torch.randint(len(self.tasks), (k,), generator=rng).tolist()


# ---------------------------------------------------------------------------
# Groups and the batch


@dataclass
class Group:
    """A prompt's rollouts with their rewards; ``kept`` marks the ones in the batch."""

    prompt_index: int
    task: Task
    rollouts: list[Rollout]
    rewards: list[float]
    node_ids: list[str] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    rule: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingBatch:
    """What an update consumes: one row per kept sample."""

    rollouts: list[Rollout]
    rewards: list[float]
    advantages: list[float]
    sample_weights: list[float]
    token_weights: list[list[float]]
    objective: Literal["pg", "sft"] = "pg"
    groups_drawn: int = 0
    groups_kept: int = 0
    samples_drawn: int = 0
    samples_kept: int | None = None  # responses kept, where rows are not responses (tree segments, split samples)

    def __len__(self) -> int:
        return len(self.rollouts)

    @property
    def kept_samples(self) -> int:
        """Responses this batch trains on (its rows, unless a row is a piece of a response)."""
        return len(self.rollouts) if self.samples_kept is None else self.samples_kept


def token_weights(rollouts: Sequence[Rollout], sample_weights: Sequence[float], aggregation: Aggregation) -> list[list[float]]:
    """Per-token weights of the loss ``-sum w_it A_i ratio_it`` for an aggregation rule:

    - ``token_mean`` (DAPO): every token of the batch counts once, 1 / (tokens in the batch);
    - ``sequence_mean`` (GRPO as in DeepSeekMath): mean over each sequence's tokens, then over sequences;
    - ``sample_sum`` (Dr. GRPO's unbiased form): sum over a sequence's tokens, mean over sequences.

    A sample's weight ``w_i`` multiplies all its tokens; an empty completion gets no tokens.
    """
    n = len(rollouts)
    total = sum(r.tokens for r in rollouts)
    return [[token_weight(aggregation, weight, rollout.tokens, n, total)] * rollout.tokens
            for rollout, weight in zip(rollouts, sample_weights, strict=True)]


def token_weight(aggregation: Aggregation, weight: float, length: int, sequences: int, total: int) -> float:
    """The weight of each token of a sequence of ``length`` tokens and sample weight ``weight``, among
    ``sequences`` sequences of ``total`` tokens in all, under ``aggregation`` (see :func:`token_weights`)."""
    if aggregation == "token_mean":
        return weight / total if total else 0.0
    if aggregation == "sequence_mean":
        return weight / (sequences * length) if length else 0.0
    return weight / sequences


def newline_token(policy: Policy, needed_by: str) -> int:
    """The policy's newline token id, for strategies that cut at step lines; one line when it has none."""
    encode = getattr(policy, "encode", None)
    ids = encode("\n") if encode is not None else []
    if len(ids) != 1:
        raise ConfigError(f"{needed_by} needs a policy whose newline is one token; {policy.name} has none")
    return ids[0]


# ---------------------------------------------------------------------------
# Strategies


class StrategyConfig(Config):
    """Fields every rollout strategy carries."""

    size_field: ClassVar[str | None] = "group_size"

    prompts_per_batch: int = param(8, label="Prompts per batch", min=1, max=4096, help="Groups per update.")
    group_size: int = param(8, label="Group size", min=1, max=1024, help="Samples per prompt (G).")
    temperature: float = param(1.0, label="Temperature", min=0.01, max=5.0, step=0.05, help="Rollout temperature.")
    max_new_tokens: int = param(96, label="Max new tokens", min=1, max=4096, help="Per rollout.")
    aggregation: str = param(
        "token_mean",
        label="Loss aggregation",
        choices=("token_mean", "sequence_mean", "sample_sum"),
        help="How token losses are averaged (DAPO token mean, GRPO sequence mean, Dr. GRPO sum).",
        advanced=True,
    )


class RolloutStrategy(ABC):
    """A training-time sampling rule: which rollouts to draw, keep and how to weight them."""

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    name: ClassVar[str] = "strategy"

    def __init__(self, config: StrategyConfig | None = None) -> None:
        config = config or self.Config()
        if not isinstance(config, self.Config):
            raise ConfigError(f"{self.name} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.step = 0  # the update index, set by the loop; used in node ids
        self._groups_per_step: dict[int, int] = {}

    @abstractmethod
    def collect(
        self, policy: Policy, prompts: PromptPool, reward: RewardFn, budget: Allowance, rng: torch.Generator
    ) -> Generator[Event, None, TrainingBatch]:
        """Yield the trace events of one batch and return the batch."""

    # -- helpers shared by the strategies --------------------------------------------

    def draw_groups(
        self,
        policy: Policy,
        prompts: PromptPool,
        indices: Sequence[int],
        n: int,
        reward: RewardFn,
        budget: Allowance,
        rng: torch.Generator,
        *,
        groups: Sequence[Group] | None = None,
    ) -> Generator[Event, None, list[Group]]:
        """Draw ``n`` rollouts for each prompt in ``indices`` in one batched call (into
        ``groups`` when given, else new groups), score them, and yield the root node of
        each new group and a node and a score event per sample."""
        cfg = self.config
        if groups is None:
            groups = []
            for index in indices:
                task = prompts.tasks[index]
                drawn = self._groups_per_step.get(self.step, 0)
                self._groups_per_step[self.step] = drawn + 1
                group = Group(prompt_index=index, task=task, rollouts=[], rewards=[], meta={"root": f"b{self.step}.g{drawn}"})
                yield NodeEvent(id=group.meta["root"], parent=None, text=task.prompt, meta={"prompt": index})
                groups.append(group)
        groups = list(groups)
        flat = [g.task.prompt for g in groups for _ in range(n)]
        rollouts = budget.draw(policy, flat, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, rng=rng)
        for k, group in enumerate(groups):
            mine = rollouts[k * n : (k + 1) * n]
            values = reward(group.task, [r.text for r in mine], rng)
            for rollout, value in zip(mine, values, strict=True):
                node_id = f"{group.meta['root']}.s{len(group.rollouts)}"
                group.rollouts.append(rollout)
                group.rewards.append(float(value))
                group.node_ids.append(node_id)
                yield NodeEvent(
                    id=node_id,
                    parent=group.meta["root"],
                    depth=1,
                    text=rollout.text,
                    tokens=rollout.tokens,
                    logprob=float(sum(rollout.logprobs)),
                    final=True,
                    meta={"prompt": group.prompt_index},
                )
                yield ScoreEvent(node=node_id, reward=reward.name, value=float(value))
        return groups

    def group_event(self, group: Group) -> GroupEvent:
        kept = group.kept or [group.rule is None] * len(group.rollouts)
        return GroupEvent(
            step=self.step,
            prompt=group.meta.get("root", str(group.prompt_index)),
            nodes=list(group.node_ids),
            rewards=list(group.rewards),
            advantages=list(group.advantages),
            kept=any(kept),
            rule=group.rule,
            meta={"prompt_index": group.prompt_index, "kept_samples": sum(kept), **{
                k: v for k, v in group.meta.items() if k != "root"
            }},
        )

    def build_batch(self, groups: Sequence[Group], *, objective: Literal["pg", "sft"] = "pg", samples_drawn: int = 0) -> TrainingBatch:
        """The batch of every kept sample of ``groups`` (their advantages and weights set)."""
        rollouts, rewards, advantages, weights = [], [], [], []
        kept_groups = 0
        for group in groups:
            kept = group.kept or [group.rule is None] * len(group.rollouts)
            if any(kept):
                kept_groups += 1
            for i, keep in enumerate(kept):
                if keep:
                    rollouts.append(group.rollouts[i])
                    rewards.append(group.rewards[i])
                    advantages.append(group.advantages[i] if group.advantages else 0.0)
                    weights.append(group.weights[i] if group.weights else 1.0)
        return TrainingBatch(
            rollouts=rollouts,
            rewards=rewards,
            advantages=advantages,
            sample_weights=weights,
            token_weights=token_weights(rollouts, weights, self.config.aggregation),  # type: ignore[arg-type]
            objective=objective,
            groups_drawn=len(groups),
            groups_kept=kept_groups,
            samples_drawn=samples_drawn or sum(len(g.rollouts) for g in groups),
        )


# ---------------------------------------------------------------------------
# Advantage rules shared by several strategies


def mean_baseline(rewards: Sequence[float], *, std: bool = False, eps: float = 1e-6) -> list[float]:
    """r_i - mean(r), divided by the group's sample std (unbiased, as torch.std and TRL) when ``std``."""
    t = torch.tensor(rewards, dtype=torch.float64)
    centred = t - t.mean()
    if std:
        spread = t.std() if len(rewards) > 1 else torch.tensor(0.0, dtype=torch.float64)
        centred = centred / (spread + eps)
    return centred.tolist()


def is_degenerate(rewards: Sequence[float]) -> bool:
    """All rewards of the group equal: a group baseline gives every sample advantage 0."""
    return max(rewards) == min(rewards)


Baseline = Callable[[Sequence[float]], list[float]]


class FixedGroupStrategy(RolloutStrategy):
    """Draw ``prompts_per_batch`` prompts, ``group_size`` samples each, in one batched call;
    :meth:`shape` then sets each group's advantages, weights, kept samples and drop rule.

    When the budget cannot fit every group, only the groups that fit are drawn."""

    objective: ClassVar[Literal["pg", "sft"]] = "pg"

    @abstractmethod
    def shape(self, group: Group) -> None:
        """Set ``group.advantages`` (and ``weights``, ``kept``, ``rule`` where the rule drops)."""

    def collect(self, policy, prompts, reward, budget, rng):
        cfg = self.config
        indices = prompts.draw(cfg.prompts_per_batch, rng)
        fit = budget.fit(len(indices) * cfg.group_size, cfg.max_new_tokens) // cfg.group_size
        if fit == 0:
            return self.build_batch([], objective=self.objective)
        groups = yield from self.draw_groups(policy, prompts, indices[:fit], cfg.group_size, reward, budget, rng)
        for group in groups:
            self.shape(group)
            yield self.group_event(group)
        return self.build_batch(groups, objective=self.objective)
