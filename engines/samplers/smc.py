"""Sequential Monte Carlo (particle filtering) over reasoning steps.

K particles grow one step at a time from the base model (the proposal). With
v_t the process reward of a particle after step t, its incremental weight is
the potential G_t = exp(λ·(v_t - v_{t-1})) (the "difference" potential of
twisted SMC, Naesseth et al., 2019; Zhao et al., 2024, "Probabilistic
Inference in Language Models via Twisted Sequential Monte Carlo",
arXiv:2404.17546; Puri et al., 2025, "A Probabilistic Inference Approach to
Inference-Time Scaling of LLMs using Particle-Based Monte Carlo Methods").
The potentials telescope: a finished particle x carries weight
exp(λ·(r(x) - v_0)), so the weighted particles target

    π(x) ∝ p(x) · exp(λ · r(x)),        r(x) = v_T(x),

exactly as K → ∞, whatever the intermediate v_t (better v_t, fewer particles
needed). When the effective sample size ESS = 1 / Σ w̄ᵢ² falls under
``ess_threshold`` · K the particles are resampled (multinomial or systematic)
and the weights reset; every ``resample`` event carries each new particle's
ancestor. Finished particles stay in the population with potential 1.

Symbols: K = ``particles``, λ = ``lam``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from engines.config import param
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.stepwise import Partial, StepConfig, StepSampler, expand, root_partial, score_last
from engines.trace import Event, PruneEvent, ResampleEvent, SelectEvent


class SMCConfig(StepConfig):
    size_field = "particles"
    label = "Sequential Monte Carlo"
    paper = "Zhao et al. 2024, Twisted Sequential Monte Carlo (arXiv:2404.17546); Puri et al. 2025 (arXiv:2502.01618)"
    summary = "Particles grow step by step, weighted by exp(λ·Δreward), resampled when the ESS drops."

    particles: int = param(8, label="Particles (K)", min=1, max=8192, help="Population size.")
    lam: float = param(1.0, label="λ", min=0.0, max=1000.0, help="Target p(x)·exp(λ·r(x)).")
    ess_threshold: float = param(0.5, label="ESS threshold", min=0.0, max=1.0, step=0.05, help="Resample when ESS < this · K.")
    resampling: str = param("systematic", label="Resampling", choices=("systematic", "multinomial"), help="How ancestors are drawn.")
    pick: str = param("sample", label="Pick", choices=("sample", "max_weight", "best_reward"),
                      help="Draw a particle by its final weight (a sample of the target), or the heaviest, or the best-scored.")


def normalise(log_weights: list[float]) -> list[float]:
    top = max(log_weights)
    w = [math.exp(lw - top) for lw in log_weights]
    total = sum(w)
    return [x / total for x in w]


def ess(log_weights: list[float]) -> float:
    return 1.0 / sum(w * w for w in normalise(log_weights))


def resample(weights: list[float], how: str, rng: torch.Generator) -> list[int]:
    """Ancestor indices for len(weights) new particles (multinomial or systematic)."""
    k = len(weights)
    w = torch.tensor(weights, dtype=torch.float64)
    if how == "multinomial":
        return torch.multinomial(w, k, replacement=True, generator=rng).tolist()
    u = (torch.rand((), generator=rng, dtype=torch.float64) + torch.arange(k, dtype=torch.float64)) / k
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u).clamp(max=k - 1).tolist()


@SAMPLERS.register("smc")
class SMC(StepSampler):
    name = "smc"
    Config = SMCConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: SMCConfig = self.config  # type: ignore[assignment]
        root, node = root_partial(ctx)
        yield node
        k = cfg.particles
        particles: list[Partial] = [root] * k
        values = [0.0] * k
        log_w = [0.0] * k
        log_evidence = 0.0
        resamples = 0
        for step in range(1, cfg.max_steps + 1):
            alive = [i for i, p in enumerate(particles) if not p.done]
            if not alive:
                break
            children: list[Partial] = []
            yield from expand(ctx, [particles[i] for i in alive], 1, cfg, children, distinct=False)
            yield from score_last(ctx, children)
            for i, child in zip(alive, children, strict=True):
                log_w[i] += cfg.lam * (child.value - values[i])
                values[i] = child.value
                particles[i] = child
            current = ess(log_w)
            ids = [p.id for p in particles]
            if current < cfg.ess_threshold * k and any(not p.done for p in particles):
                weights = normalise(log_w)
                top = max(log_w)
                log_evidence += top + math.log(sum(math.exp(lw - top) for lw in log_w) / k)
                ancestors = resample(weights, cfg.resampling, ctx.rng)
                yield ResampleEvent(step=step, particles=ids, ancestors=ancestors, log_weights=list(log_w), ess=current)
                for gone in sorted(set(range(k)) - set(ancestors)):
                    if ids[gone] not in ids_of(particles, ancestors):
                        yield PruneEvent(node=ids[gone], reason=f"resampled away at step {step}")
                particles = [particles[a] for a in ancestors]
                values = [values[a] for a in ancestors]
                log_w = [0.0] * k
                resamples += 1
            else:
                yield ResampleEvent(step=step, particles=ids, ancestors=list(range(k)), log_weights=list(log_w), ess=current, resampled=False)
            yield ctx.cost_event()
        weights = normalise(log_w)
        top = max(log_w)
        log_evidence += top + math.log(sum(math.exp(lw - top) for lw in log_w) / k)
        final_ids = [p.id for p in particles]
        yield ResampleEvent(step=cfg.max_steps + 1, particles=final_ids, ancestors=list(range(k)),
                            log_weights=list(log_w), ess=ess(log_w), resampled=False)
        ctx.metrics.update(resamples=resamples, final_ess=ess(log_w), log_evidence=log_evidence)
        if cfg.pick == "sample":
            index = int(torch.multinomial(torch.tensor(weights), 1, generator=ctx.rng))
        elif cfg.pick == "max_weight":
            index = max(range(k), key=lambda i: weights[i])
        else:
            index = max(range(k), key=lambda i: values[i])
        yield SelectEvent(nodes=[particles[index].id], reason=f"{cfg.pick} among {k} particles")


def ids_of(particles: list[Partial], ancestors: list[int]) -> set[str]:
    return {particles[a].id for a in ancestors}
