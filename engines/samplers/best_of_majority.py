"""Best-of-Majority (BoM): filter answers by frequency, then take the top-k by reward.

Di et al., 2025, "Best-of-Majority: Minimax-Optimal Strategy for Pass@k
Inference Scaling" (arXiv:2510.03199). Sample N responses; keep only the
answers whose empirical frequency π̂(a) = count(a)/N is at least α; among
them return the k with the highest reward (one response per answer: its
highest-reward holder). The frequency filter keeps BoM from chasing rare
reward-model errors, so, unlike best-of-N and majority voting, it does not
degrade as N grows. If no answer reaches α, the most frequent answers fill
the k slots.

Symbols: N = ``n``, k = ``k``, α = ``alpha``.
"""

from __future__ import annotations

from collections.abc import Iterator

from engines.config import param
from engines.errors import ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext, Sampler
from engines.samplers.candidates import Candidate, VoteConfig, answer_key, draw_all, open_root, tally
from engines.trace import Event, PruneEvent, SelectEvent


class BestOfMajorityConfig(VoteConfig):
    label = "Best-of-Majority (pass@k)"
    paper = "Di et al. 2025, Best-of-Majority: Minimax-Optimal Strategy for Pass@k Inference Scaling (arXiv:2510.03199)"
    summary = "Keep answers with frequency >= α, return the k best of them by reward."

    k: int = param(1, label="k", min=1, max=64, help="How many answers to submit (pass@k).")
    alpha: float = param(0.1, label="α", min=0.0, max=1.0, step=0.01, help="Minimum answer frequency to be considered.")

    def validate(self) -> None:
        super().validate()
        if self.k > self.n:
            raise ConfigError(f"k ({self.k}) cannot exceed n ({self.n})")


@SAMPLERS.register("best_of_majority")
class BestOfMajority(Sampler):
    name = "best_of_majority"
    Config = BestOfMajorityConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: BestOfMajorityConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        found = yield from draw_all(ctx, prefix, cfg)
        counts = tally(found, cfg.answer_format, weighted=False)
        ctx.metrics["votes"] = counts
        if not counts:
            ctx.metrics["note"] = "no candidate gave an extractable answer"
            return
        frequent = [a for a, c in counts.items() if c / len(found) >= cfg.alpha]
        if not frequent:
            frequent = sorted(counts, key=lambda a: -counts[a])[: cfg.k]
        # each surviving answer is represented by its highest-reward holder
        best_of: dict[str, Candidate] = {}
        for cand in found:
            key = answer_key(cand.text, cfg.answer_format)
            if key in frequent and (key not in best_of or cand.reward > best_of[key].reward):
                best_of[key] = cand
        ranked = sorted(best_of.values(), key=lambda c: -c.reward)[: cfg.k]
        for cand in found:
            key = answer_key(cand.text, cfg.answer_format)
            if key not in frequent:
                yield PruneEvent(node=cand.id, reason=f"answer frequency below α={cfg.alpha:g}")
        ctx.metrics["kept_answers"] = frequent
        yield SelectEvent(nodes=[c.id for c in ranked], reason=f"top-{cfg.k} by reward among {len(frequent)} frequent answers")
