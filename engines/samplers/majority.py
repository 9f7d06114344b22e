"""Self-consistency: sample N reasoning paths, answer with the most common final answer.

Wang et al., 2023, "Self-Consistency Improves Chain of Thought Reasoning in
Language Models" (arXiv:2203.11171). The vote ignores the reward; candidates
are still scored so the run shows whether the majority was right. Ties between
answers go to the answer seen first; the pick is the first candidate giving
the winning answer. Candidates with no extractable answer do not vote.
"""

from __future__ import annotations

from collections.abc import Iterator

from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext, Sampler
from engines.samplers.candidates import Candidate, VoteConfig, answer_key, draw_all, open_root, tally
from engines.trace import Event, SelectEvent


class MajorityConfig(VoteConfig):
    label = "Majority vote (self-consistency)"
    paper = "Wang et al. 2023, Self-Consistency Improves Chain of Thought Reasoning (arXiv:2203.11171)"
    summary = "Sample N answers, return the most frequent one."


def pick_by_votes(found: list[Candidate], votes: dict[str, float], fmt: str, by_reward: bool) -> tuple[str, Candidate]:
    winner = max(votes, key=lambda k: votes[k])  # dicts keep insertion order: ties go to the first seen
    holders = [c for c in found if answer_key(c.text, fmt) == winner]
    chosen = max(holders, key=lambda c: c.reward) if by_reward else holders[0]
    return winner, chosen


@SAMPLERS.register("majority")
class Majority(Sampler):
    name = "majority"
    Config = MajorityConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: MajorityConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        found = yield from draw_all(ctx, prefix, cfg)
        votes = tally(found, cfg.answer_format, weighted=False)
        ctx.metrics["votes"] = votes
        if not votes:
            ctx.metrics["note"] = "no candidate gave an extractable answer"
            return
        winner, chosen = pick_by_votes(found, votes, cfg.answer_format, by_reward=False)
        yield SelectEvent(nodes=[chosen.id], reason=f"answer {winner!r} with {votes[winner]:g} of {len(found)} votes")
