"""Diverse Verifier Tree Search (DVTS).

Beeching, Tunstall & Rush, 2024 ("Scaling test-time compute with open
models", search-and-learn): split the N first steps into N/M independent
subtrees; each subtree then searches greedily on its own — expand its single
beam into M next steps, keep the one the PRM scores best — so the subtrees
stay diverse where a shared beam would collapse onto one prefix. The pick is
the best finished solution across subtrees. As in search-and-learn, the last
iteration (the one that reaches ``max_steps``) samples without the step
delimiter, so every subtree finishes to end-of-text (up to ``final_tokens``).
No target law: an optimiser of the process score over draws from the proposal.

Symbols: N = ``n``, M = ``expand``; N/M subtrees.
"""

from __future__ import annotations

from collections.abc import Iterator

from engines.config import param
from engines.errors import ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.stepwise import Partial, StepConfig, StepSampler, expand, prune, root_partial, score
from engines.trace import Event, SelectEvent


class DVTSConfig(StepConfig):
    label = "Diverse verifier tree search"
    paper = "Beeching, Tunstall & Rush 2024, Scaling test-time compute with open models (search-and-learn)"
    summary = "N/M independent greedy subtrees, each keeping its best of M next steps."

    n: int = param(8, label="N", min=1, max=1024, help="First steps sampled; also the expansions per step in total.")
    expand: int = param(4, label="Expansions (M)", min=1, max=64, help="Next steps per subtree per step.")
    final_tokens: int = param(256, label="Last-step tokens", min=1, max=8192, advanced=True,
                              help="The last iteration runs to end-of-text (no step delimiter), up to this many tokens.")

    def validate(self) -> None:
        super().validate()
        if self.n % self.expand:
            raise ConfigError(f"n ({self.n}) must be a multiple of expand ({self.expand})")


@SAMPLERS.register("dvts")
class DVTS(StepSampler):
    name = "dvts"
    Config = DVTSConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: DVTSConfig = self.config  # type: ignore[assignment]
        root, node = root_partial(ctx)
        yield node
        first = yield from expand(ctx, [root], cfg.n, cfg, distinct=False, params=self._params(cfg, 0))
        yield from score(ctx, first, cfg.aggregate)
        finished: list[Partial] = []
        beams: list[Partial] = []
        for start in range(0, len(first), cfg.expand):  # subtree t owns first steps [tM, (t+1)M)
            group = first[start : start + cfg.expand]
            best = max(group, key=lambda c: c.value)
            (finished if best.done else beams).append(best)
            yield from prune([c for c in group if c is not best], "not the subtree's best")
        while beams:
            children = yield from expand(ctx, beams, cfg.expand, cfg, params=self._params(cfg, beams[0].depth))
            yield from score(ctx, children, cfg.aggregate)
            survivors = []
            for beam in beams:
                mine = [c for c in children if c.parent is beam]
                best = max(mine, key=lambda c: c.value)
                (finished if best.done else survivors).append(best)
                yield from prune([c for c in mine if c is not best], "not the subtree's best")
            beams = survivors
            yield ctx.cost_event()
        best = max(finished, key=lambda c: c.value)
        ctx.metrics.update(subtrees=cfg.n // cfg.expand, finished=len(finished))
        yield SelectEvent(nodes=[best.id], reason=f"best of {len(finished)} subtrees")

    @staticmethod
    def _params(cfg: DVTSConfig, depth: int):
        """The step's sampling parameters; None (the step's own) except at the last iteration."""
        return cfg.final_params(cfg.final_tokens) if depth == cfg.max_steps - 1 else None
