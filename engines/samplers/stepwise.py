"""What the step-level samplers share: steps, partial solutions, expansion, scoring.

A *step* is one segment of a continuation, cut by a delimiter (a newline, a
blank line), by next-token entropy as in CARDS (a segment ends before a token
whose entropy reaches a threshold, after a minimum length; the per-step token
cap is the maximum), or by a fixed number of tokens. A :class:`Partial` is a
node of the search: its token ids (prompt included, so the model's prefix
store finds its KV cache), its step texts and their process scores.

Step samplers consume a :class:`~engines.rewards.base.StepReward`; an outcome
reward is accepted too and applied to partial texts (``partial:`` semantics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from engines.config import param
from engines.errors import BudgetExhausted
from engines.models.base import SamplingParams
from engines.rewards.base import aggregate
from engines.rewards.steps import as_step_reward
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.trace import Event, NodeEvent, PruneEvent, ScoreEvent

STEP_MODES = ("newline", "blank_line", "entropy", "tokens")


class StepConfig(GenerationConfig):
    """Fields of every step-level sampler (``max_new_tokens`` caps one step)."""

    step: str = param("newline", label="Step", choices=STEP_MODES, help="How a continuation is cut into steps.")
    max_steps: int = param(8, label="Max steps", min=1, max=256, help="Depth limit of a solution.")
    entropy_threshold: float = param(3.0, label="Entropy threshold", min=0.01, max=20.0, advanced=True,
                                     help="step=entropy: a step ends before a token this uncertain (nats).")
    entropy_min_tokens: int = param(4, label="Min step tokens", min=1, max=512, advanced=True,
                                    help="step=entropy: no cut before this many tokens.")
    aggregate: str = param("last", label="Aggregate", choices=("last", "min", "product", "mean"),
                           help="How step scores become a solution's score.")

    def step_params(self, max_tokens: int | None = None) -> SamplingParams:
        stop: tuple[str, ...] = {"newline": ("\n",), "blank_line": ("\n\n",)}.get(self.step, ())
        return self.sampling(
            max_new_tokens=max_tokens or self.max_new_tokens,
            stop=stop,
            stop_entropy=self.entropy_threshold if self.step == "entropy" else None,
            entropy_min_tokens=self.entropy_min_tokens,
            keep_cache=True,
        )

    def final_params(self, max_tokens: int) -> SamplingParams:
        """The last iteration's sampling: no step delimiter, run to end-of-text (up to
        ``max_tokens``), as search-and-learn's beam search and DVTS finish."""
        return self.sampling(max_new_tokens=max_tokens, keep_cache=True)


@dataclass
class Partial:
    id: str
    ids: list[int]
    steps: list[str] = field(default_factory=list)
    done: bool = False
    scores: list[float] = field(default_factory=list)
    value: float | None = None
    logprob: float = 0.0  # log p of the steps under the base model (temperature 1, no truncation)
    proposal_logprob: float = 0.0  # log q of the steps under the distribution they were drawn from
    parent: Partial | None = None

    @property
    def depth(self) -> int:
        return len(self.steps)

    @property
    def text(self) -> str:
        return "".join(self.steps)


def root_partial(ctx: RunContext) -> tuple[Partial, NodeEvent]:
    ids = ctx.model.encode_task(ctx.task)
    return Partial(id="root", ids=ids), ctx.root(ctx.task.prompt, len(ids))


def fit_step(ctx: RunContext, parents: Sequence[Partial], k: int, params: SamplingParams) -> SamplingParams:
    """``params`` with ``max_new_tokens`` cut to the room the model's context has left after the
    longest parent; raises :class:`BudgetExhausted` when the context is full or the budget cannot
    pay for ``k`` worst-case continuations of every parent (``k = 0`` checks only the context)."""
    room = ctx.model.context_length
    if room is not None:  # a step never asks for more tokens than the context has left
        longest = max(len(p.ids) for p in parents)
        if longest + params.max_new_tokens > room:
            if longest >= room:
                raise BudgetExhausted(f"context full: {longest} tokens of the model's {room}")
            params = dataclasses.replace(params, max_new_tokens=room - longest)
    if ctx.affordable(len(parents) * k, params.max_new_tokens) < len(parents) * k:
        raise BudgetExhausted("budget exhausted: no room for another expansion")
    return params


def expand(
    ctx: RunContext,
    parents: Sequence[Partial],
    k: int,
    cfg: StepConfig,
    *,
    distinct: bool = True,
    max_tokens: int | None = None,
    ends: Callable[[Partial], bool] | None = None,
    params: SamplingParams | None = None,
) -> Generator[Event, None, list[Partial]]:
    """Sample ``k`` next steps of every parent (one batched call); returns the children
    (``children = yield from expand(...)``), parent by parent.

    Children of one parent with identical tokens are merged when ``distinct``.
    A child is done when it ends on end-of-text, reaches ``max_steps``, or
    ``ends(child)`` says so (a sampler's own length limit). ``params`` replaces the
    step's sampling parameters (a last step that runs to end-of-text).
    """
    params = fit_step(ctx, parents, k, params or cfg.step_params(max_tokens))
    generations = ctx.generate([p.ids for p in parents], params, n=k)
    out: list[Partial] = []
    for parent, gens in zip(parents, generations, strict=True):
        seen: set[tuple[int, ...]] = set()
        for gen in gens:
            key = tuple(gen.token_ids)
            if distinct and key in seen:
                continue
            seen.add(key)
            child = Partial(
                id=ctx.new_id(),
                ids=parent.ids + gen.token_ids,
                steps=[*parent.steps, gen.text],
                logprob=parent.logprob + gen.logprob,
                proposal_logprob=parent.proposal_logprob + float(sum(gen.sample_logprobs)),
                parent=parent,
            )
            child.done = gen.finish_reason == "eos" or child.depth >= cfg.max_steps or bool(ends and ends(child))
            out.append(child)
            yield NodeEvent(
                id=child.id, parent=parent.id, depth=child.depth, text=gen.text, tokens=len(gen.token_ids),
                logprob=gen.logprob, final=child.done, meta={"finish": gen.finish_reason},
            )
    return out


def _scored_history(p: Partial) -> list[float] | None:
    """The scores of every step before ``p``'s newest one, when its parent's are all known."""
    if p.depth <= 1:
        return []
    parent = p.parent
    if parent is not None and parent.depth == p.depth - 1 and len(parent.scores) == parent.depth:
        return list(parent.scores)
    return None


def score(ctx: RunContext, partials: Sequence[Partial], how: str) -> Iterator[Event]:
    """Process scores of every step of each partial; its value is their aggregate.

    Only the newest step is scored where the parent's step scores are known (a step's score
    depends only on its prefix), or when ``how`` is ``last``; other partials (a rollout's
    end, whose intermediate steps were never scored) get every step scored. Each evaluation
    is metered (:meth:`RunContext.score_steps` / :meth:`RunContext.score_last`).
    """
    if not partials:
        return
    histories = [_scored_history(p) for p in partials]
    newest = [p for p, h in zip(partials, histories, strict=True) if h is not None or how == "last"]
    full = [p for p, h in zip(partials, histories, strict=True) if h is None and how != "last"]
    lasts = dict(zip((id(p) for p in newest), ctx.score_last([p.steps for p in newest]) if newest else [], strict=True))
    alls = dict(zip((id(p) for p in full), ctx.score_steps([p.steps for p in full]) if full else [], strict=True))
    for p, history in zip(partials, histories, strict=True):
        if id(p) in alls:
            p.scores = list(alls[id(p)])
        elif history is not None:
            p.scores = [*history, lasts[id(p)]]
        else:  # how == "last" without a scored history: only the newest score is known
            p.scores = [lasts[id(p)]]
        p.value = aggregate(p.scores, how)  # type: ignore[arg-type]
        yield ScoreEvent(node=p.id, reward=ctx.reward.name, value=p.value, partial=not p.done)


def score_last(ctx: RunContext, partials: Sequence[Partial]) -> Iterator[Event]:
    """Only the newest step's score (for samplers that weigh by the latest value)."""
    if not partials:
        return
    values = ctx.score_last([p.steps for p in partials])
    for p, value in zip(partials, values, strict=True):
        history = _scored_history(p)
        p.scores = [*history, value] if history is not None else [value]
        p.value = value
        yield ScoreEvent(node=p.id, reward=ctx.reward.name, value=value, partial=not p.done)


def prune(partials: Sequence[Partial], reason: str) -> Iterator[Event]:
    for p in partials:
        yield PruneEvent(node=p.id, reason=reason)


class StepSampler(Sampler):
    """Base of the step-level samplers: takes a step reward (or an outcome one, applied to prefixes)."""

    reward_kind: ClassVar[str] = "step"

    def run(self, task, model, reward, budget=None, rng=None, cancel=None):
        return super().run(task, model, as_step_reward(reward), budget, rng, cancel)
