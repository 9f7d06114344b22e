"""Knockout tournament over N candidates with a pairwise reward.

Liu et al., 2025, "PairJudge RM / Pairwise RM: Perform Best-of-N Sampling with
Knockout Tournament" (arXiv:2501.13007). N candidates are paired at random;
a pairwise judge gives P(a beats b) for each match, the winner advances, the
loser is eliminated, until one remains: N - 1 matches in ⌈log₂ N⌉ rounds.
When N is not a power of two, the first round has N - 2^⌊log₂ N⌋ matches and
the other candidates get byes, so every later round is full.

Any outcome reward works too, through its Bradley-Terry view
P(a beats b) = σ((r_a - r_b)/τ). With ``stochastic`` set the winner is drawn
with probability P(a beats b) instead of taken as the likelier one.

A reward with a scalar behind it (an outcome reward, ``pairwise:REWARD``)
scores each player once, as it is drawn (N metered reward calls, ``score``
events for the histogram and the table), and every match is played from those
scores. A purely pairwise judge has no per-candidate score: each of its N - 1
matches is one metered call, and the bracket is the only record of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from engines.config import param
from engines.rewards.base import Reward, ScalarAsPairwise
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.candidates import Candidate, draw_scored, open_root
from engines.trace import Event, MatchEvent, PruneEvent, ScoreEvent, SelectEvent


class KnockoutConfig(GenerationConfig):
    label = "Knockout tournament"
    paper = "Liu et al. 2025, Pairwise RM: Perform Best-of-N Sampling with Knockout Tournament (arXiv:2501.13007)"
    summary = "Pair candidates at random, a pairwise judge eliminates the loser of each match until one is left."

    n: int = param(8, label="N", min=2, max=1024, help="Candidates in the tournament.")
    stochastic: bool = param(False, label="Stochastic winners", help="Draw each winner with P(a beats b).")
    tau: float = param(1.0, label="τ", min=1e-6, max=1e6, help="Temperature of the Bradley-Terry view of an outcome reward.")
    batch_size: int = param(16, label="Batch size", min=1, max=256, advanced=True, help="Candidates per model call.")


@SAMPLERS.register("knockout")
class Knockout(Sampler):
    name = "knockout"
    Config = KnockoutConfig
    reward_kind = "pairwise"

    def run(self, task, model, reward, budget=None, rng=None, cancel=None):
        if isinstance(reward, Reward):  # an outcome reward plays through its Bradley-Terry view
            reward = ScalarAsPairwise(reward, tau=self.config.tau)
        return super().run(task, model, reward, budget, rng, cancel)

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: KnockoutConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        scalar = ctx.reward if isinstance(ctx.reward, ScalarAsPairwise) else None
        found: list[Candidate] = []
        while len(found) < cfg.n:
            batch = yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(found)), cfg, score=False)
            if scalar is not None:
                for cand, value in zip(batch, ctx.score([c.text for c in batch]), strict=True):
                    cand.reward = value
                    yield ScoreEvent(node=cand.id, reward=scalar.reward.name, value=value)
                yield ctx.cost_event()
            found += batch
        order = torch.randperm(len(found), generator=ctx.rng).tolist()
        alive = [found[i] for i in order]
        round_no = 0
        while len(alive) > 1:
            round_no += 1
            full = 1 << (len(alive).bit_length() - 1)
            playing = 2 * (len(alive) - full) if len(alive) != full else len(alive)
            byes, players = alive[playing:], alive[:playing]
            pairs = [(players[i], players[i + 1]) for i in range(0, len(players), 2)]
            if scalar is not None:  # the players' scores are in hand: no further reward call
                probs = [scalar.p_beats(a.reward, b.reward) for a, b in pairs]
            else:
                probs = ctx.compare([(a.text, b.text) for a, b in pairs])
            winners = []
            for (a, b), p_a in zip(pairs, probs, strict=True):
                a_wins = float(torch.rand((), generator=ctx.rng)) < p_a if cfg.stochastic else p_a >= 0.5
                winner, loser = (a, b) if a_wins else (b, a)
                winners.append(winner)
                yield MatchEvent(round=round_no, a=a.id, b=b.id, p_a=p_a, winner=winner.id, reward=ctx.reward.name)
                yield PruneEvent(node=loser.id, reason=f"lost in round {round_no}")
            for bye in byes:
                yield MatchEvent(round=round_no, a=bye.id, b=None, p_a=1.0, winner=bye.id, reward=ctx.reward.name)
            alive = winners + byes
            yield ctx.cost_event()
        ctx.metrics.update(rounds=round_no, matches=len(found) - 1)
        yield SelectEvent(nodes=[alive[0].id], reason=f"won {round_no} rounds")

    def fallback_picks(self, trace) -> list[str]:
        # stopped mid-tournament: the candidate with the most match wins so far
        wins: dict[str, int] = {}
        for m in trace.matches:
            if m.b is not None:
                wins[m.winner] = wins.get(m.winner, 0) + 1
        return [max(wins, key=lambda k: wins[k])] if wins else super().fallback_picks(trace)
