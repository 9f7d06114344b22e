"""Current votes joined with everything exports and statistics need.

One query returns every *current* vote (the head of each (comparison,
annotator) chain: no later vote supersedes it) with its comparison, prompt,
both candidates, the runs that produced them, and the comparison's label-quality
role (``storage.quality``): the comparison it repeats, its gold answer.

:func:`training_records` is what exports and rankings count. Side-swapped
repeats exist to measure each annotator's position bias and self-consistency;
counted as labels they would put a repeated pair into training data twice and
weigh it double in a ranking. So, as labelling tools do with their consistency
checks, one label is kept per (original comparison, annotator), by the
``repeats`` policy:

============  ===============================================================
``original``  (default) the vote on the original; a vote on a repeat counts
              only where the annotator has none on the original (the pair's
              one label from them)
``consistent`` as ``original``, but a pair whose votes from one annotator
              disagree (original against repeat) is left out: a preference
              they did not reproduce is noise
``all``       every current vote, repeats included (to study position
              effects; a repeated pair then appears once per vote)
============  ===============================================================

Gold pairs (a known answer, mixed into queues to check annotators) are real
comparisons: the annotators' votes on them are exported and counted like any
other, and the known answer itself is never added as a vote. ``gold=False``
leaves gold pairs (and their repeats) out, e.g. to keep them as a check set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from storage.errors import InvalidInput
from storage.models import Annotator, Candidate, Comparison, ComparisonQuality, Prompt, Run, Vote
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
    repeat_of: int | None = None  # the comparison this one repeats with the sides swapped
    gold: str | None = None  # the pair's known answer if it is a gold pair (a repeat: its original's)

    @property
    def original_id(self) -> int:
        """The comparison this vote labels: the original of a repeat, else its own."""
        return self.repeat_of if self.repeat_of is not None else self.comparison_id

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
    own, original = aliased(ComparisonQuality), aliased(ComparisonQuality)
    query = (
        select(
            Vote,
            Annotator.name,
            Comparison,
            Prompt.text,
            cand_a,
            run_a,
            cand_b,
            run_b,
            own.repeat_of_id,
            func.coalesce(original.gold, own.gold),
        )
        .join(Annotator, Annotator.id == Vote.annotator_id)
        .join(Comparison, Comparison.id == Vote.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .join(cand_a, cand_a.id == Comparison.candidate_a_id)
        .join(run_a, run_a.id == cand_a.run_id)
        .join(cand_b, cand_b.id == Comparison.candidate_b_id)
        .join(run_b, run_b.id == cand_b.run_id)
        .outerjoin(own, own.comparison_id == Comparison.id)
        .outerjoin(original, original.comparison_id == own.repeat_of_id)
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
            repeat_of=repeat_of,
            gold=gold,
        )
        for vote, name, comparison, prompt, ca, ra, cb, rb, repeat_of, gold in session.execute(query)
    ]


REPEAT_POLICIES = ("original", "consistent", "all")


def training_records(
    records: Sequence[VoteRecord], *, repeats: str = "original", gold: bool = True
) -> list[VoteRecord]:
    """The votes that count as labels (see the module docstring), in their original order."""
    if repeats not in REPEAT_POLICIES:
        raise InvalidInput(f"unknown repeat policy {repeats!r}; choose one of {', '.join(REPEAT_POLICIES)}")
    if not isinstance(gold, bool):
        raise InvalidInput(f"gold must be true or false, got {gold!r}")
    kept = [r for r in records if gold or r.gold is None]
    if repeats == "all":
        return kept
    groups: dict[tuple[int, str], list[VoteRecord]] = {}
    for rec in kept:
        groups.setdefault((rec.original_id, rec.annotator), []).append(rec)
    chosen: set[int] = set()
    for votes in groups.values():
        originals = [r for r in votes if r.repeat_of is None]
        label = originals[0] if originals else min(votes, key=lambda r: r.vote_id)
        # outcomes name candidates, not sides, so a consistent annotator gives the same outcome twice
        if repeats == "consistent" and any(other.outcome != label.outcome for other in votes):
            continue
        chosen.add(label.vote_id)
    return [r for r in kept if r.vote_id in chosen]
