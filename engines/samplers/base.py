"""What every sampler shares: the run context, cost metering, budgets, cancel.

A sampler subclasses :class:`Sampler`, declares a frozen ``Config`` and
implements :meth:`Sampler.steps`, a generator of trace events that does its
model and reward work through the :class:`RunContext`. The context counts
every token, forward call and reward call into the run's :class:`Cost`,
refuses work past the :class:`Budget`, and raises :class:`Cancelled` at the
next model or reward call after the cancel flag is set, so a run stops within
one step.

:meth:`Sampler.run` is the public generator (``run(task, model, reward,
budget, rng)`` as DESIGN.md has it). It times only the work done inside the
sampler (not the time the consumer spends between events), keeps a shadow
trace, and always ends with exactly one ``done`` event: ``ok``, or ``budget``
/ ``cancelled`` with the best complete candidate found so far as the pick.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch

from engines.config import Config, param
from engines.errors import BudgetExhausted, Cancelled, ConfigError, EngineError
from engines.models.base import Generation, SamplingParams
from engines.rewards.base import PairwiseReward, Reward, StepReward
from engines.task import Task
from engines.trace import (
    Budget,
    Cost,
    CostEvent,
    DoneEvent,
    Event,
    NodeEvent,
    SelectEvent,
    Trace,
)


class GenerationConfig(Config):
    """Decoding fields every language-model sampler carries."""

    max_new_tokens: int = param(64, label="Max new tokens", min=1, max=4096, help="Per candidate (or per step).")
    temperature: float = param(1.0, label="Temperature", min=0.0, max=5.0, step=0.05, help="0 is greedy.")
    top_p: float = param(1.0, label="Top-p", min=0.01, max=1.0, step=0.01, help="Nucleus sampling mass.")
    top_k: int = param(0, label="Top-k", min=0, max=100000, help="0 keeps every token.", advanced=True)
    min_new_tokens: int = param(0, label="Min new tokens", min=0, max=4096, help="End-of-text is suppressed before this.", advanced=True)

    def validate(self) -> None:
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError("min_new_tokens cannot exceed max_new_tokens")

    def sampling(self, **overrides: Any) -> SamplingParams:
        values = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_new_tokens": self.min_new_tokens,
        }
        values.update(overrides)
        return SamplingParams(**values)


class RunContext:
    """Per-run state handed to a sampler: task, model, reward, rng, cost, budget."""

    def __init__(
        self,
        task: Task,
        model: Any,
        reward: Any,
        budget: Budget,
        rng: torch.Generator,
        cancel: threading.Event | None,
    ) -> None:
        self.task = task
        self.model = model
        self.reward = reward
        self.budget = budget
        self.rng = rng
        self.cancel = cancel
        self.cost = Cost()
        self.trace = Trace()
        self.metrics: dict[str, Any] = {}
        self._next_id = 0

    # -- bookkeeping -------------------------------------------------------------

    def new_id(self, prefix: str = "n") -> str:
        self._next_id += 1
        return f"{prefix}{self._next_id}"

    def check(self, *counters: str) -> None:
        """Raise if the run was cancelled or a budget counter reached its cap: any counter,
        or only ``counters`` (and wall time) when the work about to be done spends only those
        (scoring the candidates that used up the token or nfe budget is still allowed)."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("run cancelled")
        if not counters:
            exhausted = self.budget.exhausted(self.cost)
        else:
            exhausted = next((c for c in (*counters, "wall_seconds") if self.remaining(c) <= 0), None)
        if exhausted is not None:
            raise BudgetExhausted(f"budget exhausted: {exhausted}")

    def remaining(self, counter: str) -> float:
        return self.budget.remaining(self.cost, counter)

    def affordable(self, n: int, max_new_tokens: int) -> int:
        """How many of ``n`` new sequences of up to ``max_new_tokens`` fit the budget (worst case)."""
        fit = n
        tokens_left = self.remaining("generated_tokens")
        if tokens_left != float("inf"):
            fit = min(fit, int(tokens_left // max_new_tokens))
        calls_left = self.remaining("model_calls")
        if calls_left < max_new_tokens + 1:
            fit = 0
        if self.remaining("reward_calls") != float("inf"):
            fit = min(fit, int(self.remaining("reward_calls")))
        return max(fit, 0)

    # -- metered work ------------------------------------------------------------

    def generate(
        self,
        prefixes: Sequence[Sequence[int]],
        params: SamplingParams,
        n: int = 1,
    ) -> list[list[Generation]]:
        self._reserve("generated_tokens", len(prefixes) * n * params.max_new_tokens)
        return self.model.sample(prefixes, params, n=n, rng=self.rng, usage=self.cost)

    def spend(self, counter: str, amount: float) -> None:
        """Meter ``amount`` of ``counter`` for work a sampler does itself (not through :meth:`generate`,
        :meth:`score` or :meth:`denoise`), refused before it is done when it would pass the budget."""
        self._reserve(counter, amount, counter)
        self.cost.add(**{counter: amount})

    def _reserve(self, counter: str, amount: float, *spends: str) -> None:
        """The one budget guard before metered work: cancel, a spent counter among ``spends``
        (or wall time), or ``amount`` more of ``counter`` than is left."""
        self.check(*spends)
        if amount > self.remaining(counter):
            raise BudgetExhausted(f"budget exhausted: {counter}")

    def score(self, candidates: Sequence[Any], *, reward: Any = None) -> list[float]:
        """The run's reward (or ``reward``, e.g. one part of a weighted sum) of each candidate, one call each."""
        self._reserve("reward_calls", len(candidates), "reward_calls", "reward_tokens")
        values = (reward or self.reward).score(self.task, candidates, usage=self.cost)
        self.cost.add(reward_calls=len(candidates))
        return [float(v) for v in values]

    def compare(self, pairs: Sequence[tuple[Any, Any]]) -> list[float]:
        """P(a beats b) for each pair, from the pairwise reward (one reward call per pair)."""
        self._reserve("reward_calls", len(pairs), "reward_calls", "reward_tokens")
        values = self.pairwise.compare_many(self.task, pairs, usage=self.cost)
        self.cost.add(reward_calls=len(pairs))
        return [float(p) for p in values]

    def score_steps(self, candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Every step's score of each candidate, metered as the reward's own count of
        evaluations (one per prefix for an outcome reward or a judge on prefixes)."""
        calls = self.reward.evaluations(candidates)
        self._reserve("reward_calls", calls, "reward_calls", "reward_tokens")
        values = self.reward.score_steps(self.task, candidates, usage=self.cost)
        self.cost.add(reward_calls=calls)
        return values

    def score_last(self, candidates: Sequence[Sequence[str]]) -> list[float]:
        """The step reward after the last step of each candidate (one evaluation each)."""
        return self._score_newest(candidates, self.reward.score_last)

    def score_partial(self, candidates: Sequence[Sequence[str]]) -> list[float]:
        """The step reward of each candidate whose last step is cut mid-step (one evaluation each)."""
        return self._score_newest(candidates, self.reward.score_partial)

    def _score_newest(self, candidates: Sequence[Sequence[str]], read: Any) -> list[float]:
        calls = self.reward.evaluations(candidates, last=True)
        self._reserve("reward_calls", calls, "reward_calls", "reward_tokens")
        values = read(self.task, candidates, usage=self.cost)
        self.cost.add(reward_calls=calls)
        return [float(v) for v in values]

    def denoise(self, x: torch.Tensor, step: int, schedule: Any, *, grad: bool = False) -> Any:
        """One diffusion network evaluation per particle at inference step ``step``
        (the model's ``predict``), metered as ``nfe``; refuses a batch past the nfe budget."""
        self._reserve("nfe", x.shape[0] * self.model.nfe_for(self.task), "nfe", "model_calls")
        with torch.set_grad_enabled(grad):
            return self.model.predict(x, step, schedule, self.task, usage=self.cost)

    def score_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """A differentiable image reward's [B] values with their autograd graph, metered like :meth:`score`."""
        self._reserve("reward_calls", images.shape[0], "reward_calls", "reward_tokens")
        values = self.reward.score_tensor(self.task, images)
        self.cost.add(reward_calls=images.shape[0])
        return values

    @property
    def pairwise(self) -> PairwiseReward:
        if isinstance(self.reward, PairwiseReward):
            return self.reward
        raise ConfigError(f"reward {getattr(self.reward, 'name', self.reward)!r} is not pairwise")

    # -- event helpers -------------------------------------------------------------

    def root(self, text: str, tokens: int) -> NodeEvent:
        return NodeEvent(id="root", parent=None, depth=0, text=text, tokens=tokens)

    def cost_event(self) -> CostEvent:
        return CostEvent(cost=self.cost.as_dict())


class Sampler(ABC):
    """Base class: subclasses set ``name``, ``Config`` and implement :meth:`steps`."""

    name: ClassVar[str]
    Config: ClassVar[type[Config]]
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    #: which reward protocol the sampler consumes: "outcome", "pairwise" or "step"
    reward_kind: ClassVar[str] = "outcome"
    #: small named configurations, one per variant worth seeing (a few steps and particles,
    #: a fraction of a second on the embedded digits model); the shared diffusion behaviour
    #: suite runs every one, and a sampler for image models must declare at least one
    examples: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: Config | None = None) -> None:
        config = config if config is not None else self.Config()
        if not isinstance(config, self.Config):
            raise ConfigError(f"{self.name} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    def check_inputs(self, task: Task, model: Any, reward: Any) -> None:
        """Raise a one-line error when model or reward do not fit this sampler."""
        modality = getattr(model, "modality", None)
        if modality not in self.modalities:
            raise ConfigError(f"sampler {self.name!r} works on {'/'.join(self.modalities)} models, not {modality}")
        wanted = {"outcome": Reward, "pairwise": PairwiseReward, "step": StepReward}[self.reward_kind]
        if not isinstance(reward, wanted):
            got = getattr(reward, "kind", type(reward).__name__)
            raise ConfigError(
                f"sampler {self.name!r} needs a reward of kind {self.reward_kind!r}; "
                f"{getattr(reward, 'name', reward)!r} is a {got} reward"
            )
        if getattr(reward, "modality", modality) != modality:
            raise ConfigError(f"reward {reward.name!r} scores {reward.modality}, but the model makes {modality}")
        reward.check_task(task)
        if modality == "text" and not task.prompt.strip():
            raise ConfigError("the prompt is empty")

    def run(
        self,
        task: Task,
        model: Any,
        reward: Any,
        budget: Budget | None = None,
        rng: torch.Generator | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Yield the run's events; the last one is always ``done``."""
        self.check_inputs(task, model, reward)
        if not isinstance(rng, torch.Generator):  # no silent seed: a run is reproducible only from the caller's
            raise ConfigError(f"a run needs rng, a torch.Generator seeded with the run's seed; got {type(rng).__name__}")
        ctx = RunContext(task, model, reward, budget or Budget(), rng, cancel)
        return self._drive(ctx)

    def _drive(self, ctx: RunContext) -> Iterator[Event]:
        inner = self.steps(ctx)
        status, message = "ok", ""
        while True:
            started = time.perf_counter()
            try:
                event = next(inner)
            except StopIteration:
                ctx.cost.add(wall_seconds=time.perf_counter() - started)
                break
            except BudgetExhausted as exc:
                ctx.cost.add(wall_seconds=time.perf_counter() - started)
                status, message = "budget", str(exc)
                break
            except Cancelled as exc:
                ctx.cost.add(wall_seconds=time.perf_counter() - started)
                status, message = "cancelled", str(exc)
                break
            except EngineError as exc:  # a served model went away mid-run: keep what was done
                ctx.cost.add(wall_seconds=time.perf_counter() - started)
                status, message = "error", str(exc)
                break
            ctx.cost.add(wall_seconds=time.perf_counter() - started)
            ctx.trace.append(event)
            yield event
        picks = list(ctx.trace.selected)
        if not picks and status != "ok":
            picks = self.fallback_picks(ctx.trace)
            if picks:
                select = SelectEvent(nodes=picks, reason=f"best so far ({status})")
                ctx.trace.append(select)
                yield select
        yield DoneEvent(
            picks=picks,
            candidates=[i for i, n in ctx.trace.nodes.items() if n.final],
            cost=ctx.cost.as_dict(),
            status=status,  # type: ignore[arg-type]
            metrics=dict(ctx.metrics),
            message=message,
        )

    def fallback_picks(self, trace: Trace) -> list[str]:
        """The pick when the run stops early (budget, cancel): the best-scored complete candidate."""
        scored = [(trace.reward(i), i) for i in trace.nodes if trace.nodes[i].final and trace.reward(i) is not None]
        if not scored:
            return []
        return [max(scored, key=lambda pair: pair[0])[1]]

    @abstractmethod
    def steps(self, ctx: RunContext) -> Iterator[Event]:
        """The algorithm: yield events, do work through ``ctx``."""

