"""Sequential Monte Carlo (particle filtering) over reasoning steps.

K particles grow one step at a time, each step drawn from the proposal q: the model
as it samples here (temperature, top-p, top-k). Two weightings:

``twisted`` (default): twisted SMC with difference potentials (Naesseth, Lindsten &
Schön, 2019, "Elements of Sequential Monte Carlo"; Zhao, Brekelmans, Makhzani &
Grosse, 2024, "Probabilistic Inference in Language Models via Twisted Sequential
Monte Carlo", arXiv:2404.17546). With v_t the process reward of a particle after
step t and s_t its new step, the incremental log weight is

    λ·(v_t - v_{t-1}) + log p(s_t | s_<t) - log q(s_t | s_<t),

the second part the proposal correction (p the base model at temperature 1 without
truncation; it vanishes at temperature 1, top-p 1, top-k 0). The potentials
telescope: a finished particle x carries weight exp(λ·(r(x) - v_0))·p(x)/q(x), so
the weighted particles target, relative to the *base model*,

    π(x) ∝ p(x) · exp(λ · r(x)),        r(x) = v_T(x),

exactly as K → ∞, whatever the intermediate v_t (better v_t, fewer particles
needed), on the support of q (top-p / top-k truncation removes what q cannot draw).
When the effective sample size falls under ``ess_threshold`` · K the particles are
resampled and the weights reset (adaptive resampling). Finished particles stay in
the population with potential 1.

``puri``: the particle filter of Puri, Sudalairaj, Xu, Xu & Srivastava, 2025, "A
Probabilistic Inference Approach to Inference-Time Scaling of LLMs using
Particle-Based Monte Carlo Methods" (arXiv:2502.01618): after every step all K
particles are resampled with probabilities softmax(logit(v_i)/T) over their
latest process rewards v_i ∈ [0, 1] (finished particles included, with their last
score; scores are clipped to [1e-6, 1 - 1e-6]), and the weights reset. There is no
proposal correction and no λ: when all particles take the same number of steps S,
the final population targets, relative to the *proposal* q,

    π(x) ∝ q(x) · Π_{t=1..S} exp(logit(v_t(x)) / T),

the Feynman-Kac law of those potentials. (Puri et al. use it as a heuristic
filter; it is not p·exp(λr).)

Every ``resample`` event carries each new particle's ancestor and the log weights;
the last one holds the final weights. Resampling and ESS come from
:mod:`engines.samplers.particles`. ``log_evidence`` is the SMC estimate of log Z.

| code | symbol | meaning |
|---|---|---|
| ``particles`` | K | population size |
| ``lam`` | λ | twisted: target p(x)·exp(λ r(x)) |
| ``softmax_temperature`` | T | puri: resampling weights softmax(logit(v)/T) |
| ``ess_threshold`` | | twisted: resample when ESS < this · K |
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.particles import (
    RESAMPLING_METHODS,
    adaptive_resample,
    effective_sample_size,
    log_mean_exp,
    normalised_weights,
)
from engines.samplers.stepwise import Partial, StepConfig, StepSampler, expand, root_partial, score_last
from engines.trace import Event, ResampleEvent, SelectEvent

CLIP = 1e-6


class SMCConfig(StepConfig):
    size_field = "particles"
    label = "Sequential Monte Carlo"
    paper = ("Zhao et al. 2024, Twisted Sequential Monte Carlo (arXiv:2404.17546) [twisted]; "
             "Puri et al. 2025, Particle-Based Monte Carlo inference-time scaling (arXiv:2502.01618) [puri]")
    summary = ("Particles grow step by step. twisted: weights exp(λ·Δreward)·p/q, resampled when the ESS drops, "
               "targeting p(x)·exp(λ·r(x)) of the base model. puri: resampled every step by softmax(logit(PRM)/T).")

    weighting: str = param("twisted", label="Weights", choices=("twisted", "puri"),
                           help="twisted: exp(λ·Δv)·p/q, target p·exp(λr) of the base model; "
                                "puri: resample every step by softmax(logit(v)/T) (no fixed target of p).")
    particles: int = param(8, label="Particles (K)", min=1, max=8192, help="Population size.")
    lam: float = param(1.0, label="λ", min=0.0, max=1000.0, help="twisted: target p(x)·exp(λ·r(x)), p the base model.")
    softmax_temperature: float = param(1.0, label="Softmax T", min=1e-3, max=1000.0,
                                       help="puri: resampling probabilities softmax(logit(v)/T).")
    ess_threshold: float = param(0.5, label="ESS threshold", min=0.0, max=1.0, step=0.05,
                                 help="twisted: resample when ESS < this · K (puri resamples every step).")
    resampling: str = param("systematic", label="Resampling", choices=RESAMPLING_METHODS, help="How ancestors are drawn.")
    pick: str = param("sample", label="Pick", choices=("sample", "max_weight", "best_reward"),
                      help="Draw a particle by its final weight (a sample of the target), or the heaviest, or the best-scored.")

    def validate(self) -> None:
        super().validate()
        if self.temperature == 0:
            raise ConfigError("smc needs a stochastic proposal (temperature > 0): greedy particles have no density")


def logit(v: float) -> float:
    v = min(max(v, CLIP), 1 - CLIP)
    return math.log(v / (1 - v))


@SAMPLERS.register("smc")
class SMC(StepSampler):
    name = "smc"
    Config = SMCConfig

    # -- the weights (overridable, so tests can define deliberately wrong variants) ----------

    def increment(self, parent: Partial, child: Partial) -> float:
        """twisted: log G_t of one new step, λ·(v_t - v_{t-1}) plus the proposal correction."""
        cfg: SMCConfig = self.config  # type: ignore[assignment]
        return cfg.lam * (child.value - (parent.value or 0.0)) + self.correction(parent, child)

    @staticmethod
    def correction(parent: Partial, child: Partial) -> float:
        """log p(s_t | s_<t) - log q(s_t | s_<t) of the child's new step."""
        return (child.logprob - parent.logprob) - (child.proposal_logprob - parent.proposal_logprob)

    def puri_log_weights(self, particles: list[Partial]) -> list[float]:
        cfg: SMCConfig = self.config  # type: ignore[assignment]
        for p in particles:
            if p.value is not None and not -1e-9 <= p.value <= 1 + 1e-9:
                raise ConfigError(f"weighting=puri needs step scores in [0, 1] (a PRM's probabilities), got {p.value:g}")
        return [logit(p.value if p.value is not None else 0.5) / cfg.softmax_temperature for p in particles]

    def reset(self, log_w: list[float], ancestors: list[int]) -> list[float]:
        """Weights after resampling: equal."""
        return [0.0] * len(ancestors)

    # -- the algorithm ----------------------------------------------------------------------------

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: SMCConfig = self.config  # type: ignore[assignment]
        root, node = root_partial(ctx)
        yield node
        k = cfg.particles
        particles: list[Partial] = [root] * k
        log_w = [0.0] * k
        log_evidence = 0.0
        resamples = 0
        puri = cfg.weighting == "puri"
        for step in range(1, cfg.max_steps + 1):
            alive = [i for i, p in enumerate(particles) if not p.done]
            if not alive:
                break
            children = yield from expand(ctx, [particles[i] for i in alive], 1, cfg, distinct=False)
            yield from score_last(ctx, children)
            for i, child in zip(alive, children, strict=True):
                if not puri:
                    log_w[i] += self.increment(particles[i], child)
                particles[i] = child
            if puri:
                log_w = self.puri_log_weights(particles)
            step_result = adaptive_resample(
                log_w, [p.id for p in particles], step=step, threshold=cfg.ess_threshold, method=cfg.resampling,
                rng=ctx.rng, force=puri, allowed=any(not p.done for p in particles),
                prune_reason=f"resampled away at step {step}",
            )
            yield from step_result.events
            if step_result.resampled:
                log_evidence += step_result.log_evidence
                particles = [particles[a] for a in step_result.ancestors]
                log_w = self.reset(log_w, step_result.ancestors)
                resamples += 1
            yield ctx.cost_event()
        log_evidence += log_mean_exp(log_w)
        final_ess = effective_sample_size(log_w)
        yield ResampleEvent(step=cfg.max_steps + 1, particles=[p.id for p in particles], ancestors=list(range(k)),
                            log_weights=list(log_w), ess=final_ess, resampled=False)
        ctx.metrics.update(resamples=resamples, final_ess=final_ess, log_evidence=log_evidence, weighting=cfg.weighting)
        if cfg.pick == "sample":
            index = int(torch.multinomial(normalised_weights(log_w), 1, generator=ctx.rng))
        elif cfg.pick == "max_weight":
            index = max(range(k), key=lambda i: log_w[i])
        else:
            index = max(range(k), key=lambda i: particles[i].value if particles[i].value is not None else -math.inf)
        yield SelectEvent(nodes=[particles[index].id], reason=f"{cfg.pick} among {k} particles")
