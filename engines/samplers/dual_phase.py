"""Reward-guided step search with dynamic budget allocation (DREAM+'s budget rule).

Cui et al., 2025, "Adaptive Test-Time Reasoning via Reward-Guided Dual-Phase Search"
(arXiv:2509.25420): a step-level search whose per-step sampling budget adapts to the
process reward: sampling at a step stops early once a candidate is confidently good, and
the samples it did not use go to later, harder steps.

What runs here, per step t (one path, greedy in the process reward):

1. the step's allowance is a_t = min(k + saved, cap): the base allocation k plus what
   earlier steps saved, at most ``max_per_step``;
2. next steps are drawn ``batch`` at a time and scored by the step reward; as soon as the
   best so far reaches τ the step stops early ("confident"), else it stops at a_t;
3. saved ← a_t - used; the best-scored candidate (the first of equals) is the step; the
   others are pruned. A step that ends the text ends the run.

The paper also splits every step into a *plan* and its *execution*, each searched with its
own reward model; the lab's step rewards are not trained on that format, so only the
budget rule is implemented (``dual_phase`` runs it on whatever steps ``step`` cuts). The
in-step early rejection of Accelerating LLM Reasoning via Early Rejection (partial-step
scores inside beam search) is ``beam_early_reject``; ``early_rejection`` is the flat
speculative rejection with partial rewards.

Symbols: k = ``samples_per_step``, τ = ``confidence``, cap = ``max_per_step``.
"""

from __future__ import annotations

from collections.abc import Iterator

from engines.config import param
from engines.errors import ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.stepwise import (
    Partial,
    StepConfig,
    StepSampler,
    expand,
    prune,
    root_partial,
    score_last,
)
from engines.trace import Event, SelectEvent


class DualPhaseConfig(StepConfig):
    label = "Dual-phase budget (DREAM+)"
    paper = "Cui et al. 2025, Adaptive Test-Time Reasoning via Reward-Guided Dual-Phase Search (arXiv:2509.25420)"
    summary = "Step search that stops a step once a candidate's step reward reaches τ and gives the unused samples to later steps."
    size_field = "samples_per_step"

    samples_per_step: int = param(4, label="Samples per step k", min=1, max=256, help="Base allocation of every step.")
    confidence: float = param(0.9, label="Confident τ", min=-1e9, max=1e9, step=0.01,
                              help="A step stops sampling once a candidate's step reward reaches this.")
    max_per_step: int = param(16, label="Cap per step", min=1, max=1024, help="Most samples one step may take (base plus savings).")
    batch: int = param(1, label="Batch", min=1, max=256, help="Samples drawn between two checks of τ.", advanced=True)

    def validate(self) -> None:
        super().validate()
        if self.max_per_step < self.samples_per_step:
            raise ConfigError("max_per_step cannot be below samples_per_step")


def allowance(base: int, saved: int, cap: int) -> int:
    return min(base + saved, cap)


@SAMPLERS.register("dual_phase")
class DualPhase(StepSampler):
    name = "dual_phase"
    Config = DualPhaseConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: DualPhaseConfig = self.config  # type: ignore[assignment]
        current, node = root_partial(ctx)
        yield node
        saved, confident_steps, spent = 0, 0, []
        while not current.done:
            allowed = allowance(cfg.samples_per_step, saved, cfg.max_per_step)
            children: list[Partial] = []
            while len(children) < allowed:
                batch = yield from expand(ctx, [current], min(cfg.batch, allowed - len(children)), cfg, distinct=False)
                yield from score_last(ctx, batch)
                children += batch
                if max(c.value for c in children) >= cfg.confidence:
                    confident_steps += 1
                    break
            saved = allowed - len(children)
            spent.append(len(children))
            best = max(children, key=lambda c: c.value)  # the first of equals
            yield from prune([c for c in children if c is not best], f"step {len(spent)}: not the best step")
            yield ctx.cost_event()
            current = best
        ctx.metrics.update(samples_per_step=spent, confident_steps=confident_steps, saved_at_end=saved)
        yield SelectEvent(nodes=[current.id], reason=f"{len(spent)} steps, {sum(spent)} samples ({confident_steps} stopped early)")
