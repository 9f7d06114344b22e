"""Reward-weighted majority vote: each candidate votes for its answer with its reward.

The weighted self-consistency of Li et al., 2023 ("Making Language Models
Better Reasoners with Step-Aware Verifier", DiVeRSe) and Uesato et al., 2022:
score(a) = Σ_{i: answer(y_i) = a} r(y_i); return the answer with the largest
total, and the highest-reward candidate holding it. Rewards should be
non-negative (probabilities from a verifier or reward model); negative
rewards vote against their answer.
"""

from __future__ import annotations

from collections.abc import Iterator

from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext, Sampler
from engines.samplers.candidates import VoteConfig, draw_all, open_root, tally
from engines.samplers.majority import pick_by_votes
from engines.trace import Event, SelectEvent


class WeightedMajorityConfig(VoteConfig):
    label = "Reward-weighted majority"
    paper = "Li et al. 2023, Making Language Models Better Reasoners with Step-Aware Verifier (arXiv:2206.02336)"
    summary = "Sum each answer's rewards over N samples; return the answer with the largest total."


@SAMPLERS.register("weighted_majority")
class WeightedMajority(Sampler):
    name = "weighted_majority"
    Config = WeightedMajorityConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: WeightedMajorityConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        found = yield from draw_all(ctx, prefix, cfg)
        votes = tally(found, cfg.answer_format, weighted=True)
        ctx.metrics["votes"] = votes
        if not votes:
            ctx.metrics["note"] = "no candidate gave an extractable answer"
            return
        winner, chosen = pick_by_votes(found, votes, cfg.answer_format, by_reward=True)
        yield SelectEvent(nodes=[chosen.id], reason=f"answer {winner!r} with total reward {votes[winner]:.3g}")
