"""Reward protocols and the combinators every reward shares.

- :class:`Reward` scores complete candidates (outcome reward).
- :class:`PairwiseReward` gives P(a beats b) (pairwise reward models, LLM judges).
- :class:`StepReward` scores each step of partial candidates (process rewards).

Text candidates are the completion strings (the prompt is in the task); image
rewards take a batch tensor. Rewards that run a model add what they spent to
an optional ``usage`` (:class:`Cost`: ``reward_tokens``); the run tracker
counts ``reward_calls`` itself.

Combinators: :class:`ScalarAsPairwise` (the Bradley-Terry view of any scalar
reward, P(a > b) = σ((r_a - r_b)/τ)), :class:`WeightedSum`, and
:class:`KLRegularized` (r(x) - β·log(p(x)/p_ref(x))).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from engines.task import Task
from engines.trace import Cost

Aggregation = Literal["last", "min", "product", "mean"]


class Reward(ABC):
    """An outcome reward: one number per complete candidate, higher is better."""

    name: str = "reward"
    modality: ClassVar[Literal["text", "image"]] = "text"
    differentiable: ClassVar[bool] = False
    requires_answer: ClassVar[bool] = False
    kind: ClassVar[str] = "outcome"

    @abstractmethod
    def score(self, task: Task, candidates: Sequence[Any], *, usage: Cost | None = None) -> list[float]:
        """One reward per candidate."""

    def check_task(self, task: Task) -> None:
        """Raise ValueError when the task lacks what this reward needs."""
        if self.requires_answer and not task.answer:
            raise ValueError(f"reward {self.name!r} needs a reference answer (--answer or a task set)")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "modality": self.modality}


class PairwiseReward(ABC):
    """P(a beats b) for two candidates of one task."""

    name: str = "pairwise"
    modality: ClassVar[Literal["text", "image"]] = "text"
    requires_answer: ClassVar[bool] = False
    kind: ClassVar[str] = "pairwise"

    @abstractmethod
    def compare(self, task: Task, a: Any, b: Any, *, usage: Cost | None = None) -> float:
        """Probability that ``a`` is preferred to ``b``."""

    def compare_many(
        self, task: Task, pairs: Sequence[tuple[Any, Any]], *, usage: Cost | None = None
    ) -> list[float]:
        return [self.compare(task, a, b, usage=usage) for a, b in pairs]

    def check_task(self, task: Task) -> None:
        if self.requires_answer and not task.answer:
            raise ValueError(f"reward {self.name!r} needs a reference answer (--answer or a task set)")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "modality": self.modality}


class StepReward(ABC):
    """A process reward: a score after every step of a (partial) candidate.

    A step's score depends only on the steps up to it (the prefix), never on later ones,
    so a sampler may extend a parent's known scores by its child's newest one.
    """

    name: str = "steps"
    modality: ClassVar[Literal["text"]] = "text"
    requires_answer: ClassVar[bool] = False
    kind: ClassVar[str] = "step"
    #: True when every step's score is an evaluation of its own (an outcome reward or an
    #: LLM judge applied to each prefix); False when one pass over a candidate reads all
    #: its step scores (a PRM read at step tags).
    per_prefix: ClassVar[bool] = False

    @abstractmethod
    def score_steps(
        self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None
    ) -> list[list[float]]:
        """For each candidate (a list of step texts), one score per step."""

    def score_last(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[float]:
        """The score after the last step of each candidate (samplers that only need the newest value)."""
        return [scores[-1] for scores in self.score_steps(task, candidates, usage=usage)]

    def score_partial(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[float]:
        """The score of each candidate whose last step is cut mid-step (a partial step, as early
        rejection inside beam search reads it). By default the cut step is read as if it were
        complete (:meth:`score_last`); a reward that can read a prefix at any token overrides this."""
        return self.score_last(task, candidates, usage=usage)

    def evaluations(self, candidates: Sequence[Sequence[str]], *, last: bool = False) -> int:
        """Reward evaluations that :meth:`score_steps` (or, with ``last``, :meth:`score_last`)
        spends on ``candidates``: the run's ``reward_calls``. A per-prefix reward must
        override :meth:`score_last` so that it scores only the newest prefix."""
        if self.per_prefix and not last:
            return sum(len(steps) for steps in candidates)
        return len(candidates)

    def check_task(self, task: Task) -> None:
        if self.requires_answer and not task.answer:
            raise ValueError(f"reward {self.name!r} needs a reference answer (--answer or a task set)")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "modality": self.modality}


def aggregate(scores: Sequence[float], how: Aggregation) -> float:
    """Collapse per-step scores into one value (the search-and-learn aggregations)."""
    if not scores:
        raise ValueError("no step scores to aggregate")
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    if how == "product":
        return float(math.prod(scores))
    if how == "mean":
        return float(sum(scores) / len(scores))
    raise ValueError(f"unknown aggregation {how!r}; use last, min, product or mean")


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class ScalarAsPairwise(PairwiseReward):
    """Bradley-Terry view of a scalar reward: P(a beats b) = σ((r_a - r_b) / τ).

    Scores are memoised per candidate within one task, so a tournament costs
    one reward call per candidate, not two per match.
    """

    kind = "pairwise"

    def __init__(self, reward: Reward, tau: float = 1.0) -> None:
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.reward = reward
        self.tau = tau
        self.name = f"{reward.name}~bt"
        self.modality = reward.modality  # type: ignore[misc]
        self.requires_answer = reward.requires_answer  # type: ignore[misc]
        self._memo: dict[tuple[str, str | None, str], float] = {}

    def _value(self, task: Task, candidate: Any, usage: Cost | None) -> float:
        if not isinstance(candidate, str):  # tensors (images) are not hashable by value
            return self.reward.score(task, [candidate], usage=usage)[0]
        key = (task.prompt, task.answer, candidate)
        if len(self._memo) > 100_000:
            self._memo.clear()
        if key not in self._memo:
            self._memo[key] = self.reward.score(task, [candidate], usage=usage)[0]
        return self._memo[key]

    def compare(self, task: Task, a: Any, b: Any, *, usage: Cost | None = None) -> float:
        return self.p_beats(self._value(task, a, usage), self._value(task, b, usage))

    def p_beats(self, r_a: float, r_b: float) -> float:
        """P(a beats b) from the two scalar rewards."""
        return sigmoid((r_a - r_b) / self.tau)

    def score(self, task: Task, candidates: Sequence[Any], *, usage: Cost | None = None) -> list[float]:
        """The scalar reward this view compares by, one batched call (a tournament that scores its
        players once can show and meter those scores, then play every match from them)."""
        return self.reward.score(task, candidates, usage=usage)

    def check_task(self, task: Task) -> None:
        self.reward.check_task(task)


class WeightedSum(Reward):
    """Σ w_i · r_i(x) over several outcome rewards."""

    def __init__(self, parts: Sequence[tuple[float, Reward]]) -> None:
        if not parts:
            raise ValueError("a weighted sum needs at least one reward")
        modalities = {r.modality for _, r in parts}
        if len(modalities) != 1:
            raise ValueError("cannot sum rewards of different modalities")
        self.parts = list(parts)
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in parts)
        self.modality = modalities.pop()  # type: ignore[misc]
        self.requires_answer = any(r.requires_answer for _, r in parts)  # type: ignore[misc]

    def score(self, task: Task, candidates: Sequence[Any], *, usage: Cost | None = None) -> list[float]:
        total = [0.0] * len(candidates)
        for weight, reward in self.parts:
            for i, value in enumerate(reward.score(task, candidates, usage=usage)):
                total[i] += weight * value
        return total

    def check_task(self, task: Task) -> None:
        for _, reward in self.parts:
            reward.check_task(task)


class KLRegularized(Reward):
    """r(x) - β · [log p(x) - log p_ref(x)]: the KL-regularised objective's per-sample reward.

    ``policy`` and ``reference`` are text models; the log-probs are of the
    candidate's tokens after the task's prompt under each model.
    """

    def __init__(self, reward: Reward, policy: Any, reference: Any, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.reward, self.policy, self.reference, self.beta = reward, policy, reference, beta
        self.name = f"{reward.name}-{beta:g}*kl"
        self.requires_answer = reward.requires_answer  # type: ignore[misc]

    def _logp(self, model: Any, task: Task, candidates: Sequence[str], usage: Cost | None) -> list[float]:
        prefix = model.encode_task(task)
        conts = [model.encode(c) for c in candidates]
        per_token = model.score([prefix] * len(conts), conts, usage=usage)
        return [float(sum(lp)) for lp in per_token]

    def score(self, task: Task, candidates: Sequence[str], *, usage: Cost | None = None) -> list[float]:
        base = self.reward.score(task, candidates, usage=usage)
        if self.beta == 0:
            return base
        lp = self._logp(self.policy, task, candidates, usage)
        lr = self._logp(self.reference, task, candidates, usage)
        return [r - self.beta * (p - q) for r, p, q in zip(base, lp, lr, strict=True)]

    def check_task(self, task: Task) -> None:
        self.reward.check_task(task)
