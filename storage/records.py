"""Current votes joined with everything exports and statistics need.

One query returns every *current* vote (the head of each (comparison,
annotator) chain: no later vote supersedes it) with its comparison, prompt,
both candidates and the runs that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from storage.models import Annotator, Candidate, Comparison, Prompt, Run, Vote
from storage.votes import current_vote_filter


@dataclass(frozen=True)
class Side:
    """One candidate of a comparison and the run that produced it."""

    candidate_id: int
    run_id: int
    text: str
    image: str | None
    reward: float | None
    model: str
    sampler: str
    reward_name: str

    def player(self, by: str) -> str:
        """The name that plays in battles: the sampler or the model."""
        return self.sampler if by == "sampler" else self.model


@dataclass(frozen=True)
class VoteRecord:
    vote_id: int
    comparison_id: int
    annotator: str
    outcome: str
    rationale: str | None
    left_side: str
    blind: bool
    strategy: str
    prompt: str
    a: Side
    b: Side
    voted_at: datetime
    latency_ms: int | None

    @property
    def decisive(self) -> bool:
        return self.outcome in ("a", "b")

    @property
    def winner(self) -> Side | None:
        return self.a if self.outcome == "a" else self.b if self.outcome == "b" else None

    @property
    def loser(self) -> Side | None:
        return self.b if self.outcome == "a" else self.a if self.outcome == "b" else None

    @property
    def left(self) -> Side:
        return self.a if self.left_side == "a" else self.b

    @property
    def right(self) -> Side:
        return self.b if self.left_side == "a" else self.a


def vote_records(session: Session, *, include_skips: bool = False) -> list[VoteRecord]:
    """Every current vote, oldest first (skips left out unless asked for)."""
    cand_a, cand_b = aliased(Candidate), aliased(Candidate)
    run_a, run_b = aliased(Run), aliased(Run)
    query = (
        select(Vote, Annotator.name, Comparison, Prompt.text, cand_a, run_a, cand_b, run_b)
        .join(Annotator, Annotator.id == Vote.annotator_id)
        .join(Comparison, Comparison.id == Vote.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .join(cand_a, cand_a.id == Comparison.candidate_a_id)
        .join(run_a, run_a.id == cand_a.run_id)
        .join(cand_b, cand_b.id == Comparison.candidate_b_id)
        .join(run_b, run_b.id == cand_b.run_id)
        .where(current_vote_filter())
        .order_by(Vote.id)
    )
    if not include_skips:
        query = query.where(Vote.outcome != "skip")

    def side(cand: Candidate, run: Run) -> Side:
        return Side(
            candidate_id=cand.id,
            run_id=run.id,
            text=cand.text,
            image=cand.image,
            reward=cand.reward,
            model=run.model,
            sampler=run.sampler,
            reward_name=run.reward,
        )

    return [
        VoteRecord(
            vote_id=vote.id,
            comparison_id=comparison.id,
            annotator=name,
            outcome=vote.outcome,
            rationale=vote.rationale,
            left_side=comparison.left_side,
            blind=comparison.blind,
            strategy=comparison.strategy,
            prompt=prompt,
            a=side(ca, ra),
            b=side(cb, rb),
            voted_at=vote.voted_at,
            latency_ms=vote.latency_ms,
        )
        for vote, name, comparison, prompt, ca, ra, cb, rb in session.execute(query)
    ]
