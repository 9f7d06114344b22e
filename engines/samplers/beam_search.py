"""Beam search over reasoning steps, guided by a process reward model.

As in search-and-learn (Beeching, Tunstall & Rush, 2024, "Scaling test-time
compute with open models"; Snell et al., 2024, arXiv:2408.03314): keep K
beams; at each step expand every beam into M candidate next steps (N = K·M
per step), score every candidate with the PRM (its steps' scores aggregated:
last, min, product or mean), keep the K best unfinished ones. Solutions that
end (end-of-text, or the step limit) leave the beam and join the finished
pool; the pick is the finished solution with the best score. The last
iteration (the one that reaches ``max_steps``) samples without the step
delimiter, so each beam finishes to end-of-text (up to ``final_tokens``), as
search-and-learn's ``beam_search`` does, instead of being cut mid-solution.
Only the newest step of each candidate is scored (its parent's scores are known).

No target law: beam search is an optimiser of the aggregated process score over
draws from the proposal (the model at the sampling temperature).

Each beam's prefix is in the model's prefix store, so expanding it prefills
only its newest step, not the whole prompt and history (see bench/beam_reuse.py).

Symbols: K = ``beams``, M = ``expand``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from engines.config import param
from engines.models.base import SamplingParams
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.stepwise import Partial, StepConfig, StepSampler, expand, prune, root_partial, score
from engines.trace import Event, SelectEvent


class BeamSearchConfig(StepConfig):
    size_field = "beams"
    label = "Beam search (PRM)"
    paper = "Snell et al. 2024, Scaling LLM Test-Time Compute Optimally (arXiv:2408.03314); search-and-learn"
    summary = "Keep K beams; expand each into M next steps, keep the K best by process reward."

    beams: int = param(4, label="Beams (K)", min=1, max=256, help="Beam width: partial solutions kept per step.")
    expand: int = param(4, label="Expansions (M)", min=1, max=64, help="Next steps sampled per beam.")
    final_tokens: int = param(256, label="Last-step tokens", min=1, max=8192, advanced=True,
                              help="The last iteration runs to end-of-text (no step delimiter), up to this many tokens.")


@SAMPLERS.register("beam_search")
class BeamSearch(StepSampler):
    name = "beam_search"
    Config = BeamSearchConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: BeamSearchConfig = self.config  # type: ignore[assignment]
        root, node = root_partial(ctx)
        yield node
        active: list[Partial] = [root]
        finished: list[Partial] = []
        while active:
            # the first expansion draws all K·M from the root, later ones M per beam
            k = cfg.beams * cfg.expand if active == [root] else cfg.expand
            last = active[0].depth == cfg.max_steps - 1
            children = yield from self.grow(ctx, active, k, cfg.final_params(cfg.final_tokens) if last else None)
            finished += [c for c in children if c.done]
            ranked = sorted((c for c in children if not c.done), key=lambda c: -c.value)
            active = ranked[: cfg.beams]
            yield from prune(ranked[cfg.beams :], "below the beam")
            yield ctx.cost_event()
        best = max(finished, key=lambda c: c.value)
        ctx.metrics.update(finished=len(finished))
        yield SelectEvent(nodes=[best.id], reason=f"best of {len(finished)} finished beams")

    def grow(self, ctx: RunContext, beams: list[Partial], k: int, params: SamplingParams | None) -> Generator[Event, None, list[Partial]]:
        """One step's scored children: ``k`` next steps of every beam (``params`` replaces the
        step's sampling on the last iteration). Subclasses change how a step is grown."""
        children = yield from expand(ctx, beams, k, self.config, params=params)  # type: ignore[arg-type]
        yield from score(ctx, children, self.config.aggregate)  # type: ignore[attr-defined]
        return children
