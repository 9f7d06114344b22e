"""Helpers the flat text samplers share: the root node and drawing scored candidates."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from engines.config import param
from engines.errors import BudgetExhausted
from engines.models.base import Generation
from engines.samplers.base import GenerationConfig, RunContext
from engines.trace import Event, NodeEvent, ScoreEvent


@dataclass
class Candidate:
    id: str
    text: str
    generation: Generation
    reward: float | None = None


def open_root(ctx: RunContext) -> tuple[list[int], NodeEvent]:
    """The prompt's token ids and its root node."""
    ids = ctx.model.encode_task(ctx.task)
    return ids, ctx.root(ctx.task.prompt, len(ids))


def draw_scored(
    ctx: RunContext,
    prefix: list[int],
    count: int,
    config: GenerationConfig,
    *,
    parent: str = "root",
    score: bool = True,
) -> Generator[Event, None, list[Candidate]]:
    """Generate ``count`` candidates of ``prefix`` (as many as the budget allows, else
    BudgetExhausted), yield their nodes, then their scores; returns the candidates
    (``batch = yield from draw_scored(...)``)."""
    affordable = ctx.affordable(count, config.max_new_tokens)
    if affordable == 0:
        raise BudgetExhausted("budget exhausted: no room for another candidate")
    generations = ctx.generate([prefix], config.sampling(), n=min(count, affordable))[0]
    batch = []
    for gen in generations:
        node = NodeEvent(
            id=ctx.new_id(),
            parent=parent,
            depth=1,
            text=gen.text,
            tokens=len(gen.token_ids),
            logprob=gen.logprob,
            final=True,
            meta={"finish": gen.finish_reason},
        )
        batch.append(Candidate(node.id, gen.text, gen))
        yield node
    if score:
        values = ctx.score([c.text for c in batch])
        for cand, value in zip(batch, values, strict=True):
            cand.reward = value
            yield ScoreEvent(node=cand.id, reward=ctx.reward.name, value=value)
    yield ctx.cost_event()
    return batch


def argmax(candidates: list[Candidate]) -> Candidate:
    """The highest-reward candidate; ties go to the earliest (deterministic)."""
    best = candidates[0]
    for cand in candidates[1:]:
        if cand.reward is not None and (best.reward is None or cand.reward > best.reward):
            best = cand
    return best


def answer_key(text: str, answer_format: str) -> str | None:
    """The answer a candidate commits to: its final number, or its normalised text."""
    if answer_format == "number":
        from engines.rewards.verifiable import extract_answer

        return extract_answer(text)
    key = " ".join(text.strip().lower().split()).rstrip(".!")
    return key or None


class VoteConfig(GenerationConfig):
    """Fields shared by the voting samplers."""

    n: int = param(16, label="N", min=1, max=1024, help="How many candidates to sample.")
    answer_format: str = param(
        "number",
        label="Answer",
        choices=("number", "text"),
        help="Vote on the final number (#### N, \\boxed{N}, ...) or on the whole normalised text.",
    )
    batch_size: int = param(16, label="Batch size", min=1, max=256, advanced=True, help="Candidates per model call.")


def draw_all(ctx: RunContext, prefix: list[int], cfg: VoteConfig) -> Generator[Event, None, list[Candidate]]:
    """``cfg.n`` scored candidates, drawn ``cfg.batch_size`` at a time."""
    found: list[Candidate] = []
    while len(found) < cfg.n:
        found += yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(found)), cfg)
    return found


def tally(candidates: list[Candidate], answer_format: str, weighted: bool) -> dict[str, float]:
    """Votes (or summed rewards) per answer; candidates without an answer do not vote."""
    votes: dict[str, float] = {}
    for cand in candidates:
        key = answer_key(cand.text, answer_format)
        if key is None:
            continue
        votes[key] = votes.get(key, 0.0) + (cand.reward if weighted else 1.0)
    return votes
