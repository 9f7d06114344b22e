"""Feynman-Kac steering: sequential Monte Carlo over the denoising steps.

Singhal, Horvitz, Teehan, Ren, Yu, Cho & Ranganath, "A General Framework for
Inference-time Scaling and Steering of Diffusion Models" (ICML 2025,
arXiv:2501.06848); reference code: zacharyhorvitz/Fk-Diffusion-Steering.

N particles run the reverse chain together. At scheduled steps each particle's
intermediate reward r_t = r(x̂0(x_t)) is turned into a potential G_t, the
importance weights are multiplied by it, and when the effective sample size
falls below a threshold the particles are resampled in proportion to their
weights (ancestors are recorded in ``resample`` events). At the end a final
potential makes the product of potentials along every path exactly
exp(λ·r(x0)), so the weighted particles target

    p_θ(x0) · exp(λ·r(x0)) / Z

whatever intermediate potential is used; the intermediate potentials only
decide which particles survive along the way. Where this implementation
differs from the reference code, it follows the SMC algorithm of the paper:
weights carry over between resampling steps (the code drops them when
adaptive resampling is skipped), and the final weights are returned in the last
``resample`` event (``resampled=False``) instead of a forced final resampling.

With a differentiable reward, ``guidance`` s > 0 replaces the model's step by
the proposal τ = N(μ_θ(x_t) + s·σ_t²·∇_{x̂0} r(x̂0), σ_t²): the gradient is taken
with respect to the predicted clean sample x̂0 = x̂0(x_t), **not** with respect to
x_t -- the denoiser's Jacobian ∂x̂0/∂x_t is left out (no backward pass through
the network). So this is not the
locally optimal proposal of the twisted diffusion sampler (Wu et al. 2023),
which uses ∇_{x_t} of the twisting function through the denoiser; it is a
cheaper heuristic push. The weights multiply by p_θ(x_{t-1}|x_t)/τ(x_{t-1}|x_t),
so the target is unchanged; only the variance falls (or, for too strong a push,
rises).

Cost: N network evaluations per step; at every potential step and every guided
step one decode and one reward call per particle (a guided potential step
shares them), N more for the final samples; one reward backward pass per
particle per guided step (``backward_passes``). With a latent model the decodes
are VAE passes and are metered as ``decodes``.

Final ESS: the final weights are exp(λ·r(x0)) / Π G_t along each lineage, so
with ``max`` or ``sum`` potentials (whose product grows with every potential
step) they spread widely and the final ESS is often a handful of particles:
the weighted particles are then a poor sample of the target, though the best
particle may still be good. ``difference`` potentials telescope (Π G_t =
exp(λ·r at the last potential step)), so the final correction is only the
last stretch's reward change and the final ESS stays high; it is the default.

| code | paper | meaning |
|---|---|---|
| ``lam`` | λ | reward weight (inverse temperature) of the target |
| ``difference`` | G_t = exp(λ(r_t − r_{t+1})) | reward improvement since the last potential |
| ``max`` | G_t = exp(λ·max_{s≥t} r_s) | best intermediate reward so far |
| ``sum`` | G_t = exp(λ·Σ_{s≥t} r_s) | accumulated intermediate reward |
| ``lineage`` | Σ log G along the ancestry | used by the final potential |
| final potential | G_0 = exp(λ·r(x0)) / Π_{t≥1} G_t | makes every path's product exp(λ r(x0)) |
| ``guidance`` | the gradient-guided proposal τ | N(μ_θ + s·σ_t²·∇_{x̂0} r(x̂0), σ_t²) (gradient w.r.t. x̂0, not x_t); weights × p_θ/τ |
| ``log_evidence`` | log Ẑ | the SMC estimate of log E_{p_θ}[exp(λ r(x0))] |
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from typing import Literal

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.diffusion import transition_log_prob
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.diffusion_common import (
    DiffusionConfig,
    DiffusionSampler,
    decode,
    fit_particles,
    image_uris,
    preview_uris,
    reward_gradient,
    reward_name,
    scores,
    state_nodes,
    take,
)
from engines.samplers.particles import adaptive_resample, effective_sample_size, log_mean_exp
from engines.samplers.particles import resample as resample_indices  # noqa: F401 (tests import it from here)
from engines.trace import Event, ResampleEvent, SelectEvent


class FKSteeringConfig(DiffusionConfig):
    size_field = "particles"
    label = "Feynman-Kac steering"
    paper = "Singhal et al. 2025, A General Framework for Inference-time Scaling and Steering of Diffusion Models"
    summary = "Particles denoise together; potentials on intermediate rewards resample them toward p·exp(λr)."

    particles: int = param(8, label="Particles", min=1, max=4096, help="N particles run the chain together.")
    lam: float = param(10.0, label="λ (reward weight)", min=0.0, max=1000.0, help="Target p(x)·exp(λ·r(x)).")
    potential: Literal["max", "difference", "sum"] = param(
        "difference",
        label="Potential",
        choices=("difference", "max", "sum"),
        help="How intermediate rewards weigh particles. max / sum pile up tilt that the final weights must undo: "
        "their final ESS is often a few particles (the best pick still works; the weighted sample does not).",
    )
    resample_every: int = param(5, label="Resample every", min=1, max=1000, help="Steps between potentials.")
    resample_start: int = param(
        0, label="First resampling step", min=0, max=1000, advanced=True, help="Step index of the first potential."
    )
    resample_end: int | None = param(
        None, label="Last resampling step", min=0, max=1000, advanced=True, help="Empty: up to the last step."
    )
    ess_threshold: float = param(
        0.5, label="ESS threshold", min=0.0, max=1.0, step=0.05, help="Resample when ESS < threshold·N (1: always)."
    )
    resampling: Literal["systematic", "multinomial", "stratified"] = param(
        "systematic",
        label="Resampling",
        choices=("systematic", "multinomial", "stratified"),
        advanced=True,
        help="How ancestors are drawn from the weights (systematic has the least variance).",
    )
    guidance: float = param(
        0.0,
        label="Gradient guidance",
        min=0.0,
        max=100000.0,
        help="Proposal mean μ + s·σ²·∇r(x̂0), the gradient taken at the predicted x̂0, not at x_t (a heuristic push, "
        "not the locally optimal proposal); differentiable rewards only; the weights correct for it.",
        advanced=True,
    )
    pick: Literal["best", "sample"] = param(
        "best", label="Pick", choices=("best", "sample"), help="Highest-reward particle, or one drawn by weight."
    )

    def validate(self) -> None:
        if self.eta == 0:
            raise ConfigError("fk_steering needs stochastic steps (eta > 0): deterministic particles cannot diversify")
        if self.resample_end is not None and self.resample_end < self.resample_start:
            raise ConfigError("resample_end must be >= resample_start")


@SAMPLERS.register("fk_steering")
class FKSteering(DiffusionSampler):
    name = "fk_steering"
    Config = FKSteeringConfig
    examples = {
        "fk_max_systematic": {"particles": 4, "steps": 6, "resample_every": 2, "ess_threshold": 1.0},
        "fk_difference_multinomial": {
            "particles": 4, "steps": 6, "potential": "difference", "resampling": "multinomial", "pick": "sample",
        },
        "fk_sum_guided": {"particles": 3, "steps": 5, "potential": "sum", "guidance": 0.2},
    }

    def needs_gradient(self) -> bool:
        return self.config.guidance > 0

    def potential_steps(self, total: int) -> list[int]:
        cfg = self.config
        end = total - 1 if cfg.resample_end is None else min(cfg.resample_end, total - 1)
        return [i for i in range(cfg.resample_start, end + 1) if (i - cfg.resample_start) % cfg.resample_every == 0]

    def plan(self, total: int, std: list[float]) -> dict[str, int]:
        """Per-particle work of a chain of ``total`` steps: network evaluations, reward calls,
        decodes and reward backward passes (a guided potential step shares one decode and one
        reward call between the potential and the gradient)."""
        cfg = self.config
        scheduled = set(self.potential_steps(total))
        guided = {i for i in range(total) if cfg.guidance > 0 and std[i] > 0}
        looks = len(scheduled | guided)
        return {"nfe_each": total, "reward_calls_each": looks + 1, "decodes_each": looks + 1, "backward_each": len(guided)}

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg = self.config
        model = ctx.model
        sched = model.schedule(cfg.steps)
        total = len(sched)
        scheduled = set(self.potential_steps(total))
        std = [sched.std(i, cfg.eta) for i in range(total)]
        n = self._affordable_particles(ctx, total, std)
        if n < 1:
            raise BudgetExhausted("budget exhausted: not even one particle fits the nfe / reward / decode budget")
        rname = reward_name(ctx)
        x, running, lineage = yield from self._initial_particles(ctx, n, sched)
        log_w = torch.zeros(n, dtype=torch.float64)
        parents: list[str | None] = [None] * n
        log_evidence, resamples = 0.0, 0
        for i in range(total):
            pred = ctx.denoise(x, i, sched)
            ids, events = state_nodes(
                ctx, depth=i, parents=parents, images=preview_uris(ctx, pred.x0), timestep=sched.timesteps[i]
            )
            yield from events
            parents = list(ids)
            grad = None
            if cfg.guidance > 0 and std[i] > 0:
                values, grad = reward_gradient(ctx, pred.x0)
            if i in scheduled:
                if grad is not None:
                    r = values.double().cpu()
                else:
                    r = torch.tensor(ctx.score(decode(ctx, pred.x0)), dtype=torch.float64)
                yield from scores(ids, r.tolist(), rname, partial=True)
                log_g, running = self._potential(r, running)
                log_w += log_g
                lineage += log_g
                step_result = adaptive_resample(
                    log_w, ids, step=i, threshold=cfg.ess_threshold, method=cfg.resampling, rng=ctx.rng,
                    force=cfg.ess_threshold >= 1,
                )
                yield from step_result.events
                if step_result.resampled:
                    log_evidence += step_result.log_evidence
                    resamples += 1
                    anc = torch.tensor(step_result.ancestors, dtype=torch.int64)
                    dev = anc.to(x.device)
                    x, pred = x[dev], take(pred, dev)
                    grad = None if grad is None else grad[dev]
                    lineage, running = lineage[anc], running[anc]
                    log_w = self._weights_after_resampling(log_w, anc)
                    parents = [ids[j] for j in step_result.ancestors]
            x, log_ratio = self._move(ctx, x, i, sched, pred, grad)
            log_w += log_ratio
        images = decode(ctx, x)
        r = torch.tensor(ctx.score(images), dtype=torch.float64)
        log_w += self._final_log_potential(r, lineage)
        final_ids, events = state_nodes(ctx, depth=total, parents=parents, images=image_uris(ctx, images), timestep=None, final=True)
        yield from events
        yield from scores(final_ids, r.tolist(), rname, partial=False)
        ess = effective_sample_size(log_w)
        log_evidence += log_mean_exp(log_w)
        yield ResampleEvent(
            step=total, particles=final_ids, ancestors=list(range(n)), log_weights=log_w.tolist(), ess=ess, resampled=False
        )
        if cfg.pick == "best":
            index = int(torch.argmax(r))
        else:
            index = int(torch.multinomial(torch.softmax(log_w, 0), 1, generator=ctx.rng))
        ctx.metrics.update(
            {"particles": n, "resamples": resamples, "final_ess": ess, "log_evidence": log_evidence, "steps": total}
        )
        yield SelectEvent(nodes=[final_ids[index]], reason=f"{cfg.pick} of {n} particles (final ESS {ess:.1f})")

    # -- the pieces of the weight recursion (one place each, so a test can swap one for a wrong one) --

    def _affordable_particles(self, ctx: RunContext, total: int, std: list[float]) -> int:
        """How many particles the budgets allow for a chain of ``total`` steps."""
        return fit_particles(ctx, self.config.particles, **self.plan(total, std))

    def _initial_particles(
        self, ctx: RunContext, n: int, sched  # noqa: ANN001
    ) -> Generator[Event, None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(x_T, the running statistic before the first potential, the log-tilt the particles were
        drawn with): Gaussian noise, untilted. A generator, so that a sampler drawing x_T with work
        of its own (Ψ-Sampler's MCMC) yields that work's events; the final potential divides the
        initial tilt out along with the intermediate potentials, as it belongs to the lineage."""
        yield from ()
        return ctx.model.initial_noise(n, ctx.rng), self._initial_running(n), torch.zeros(n, dtype=torch.float64)

    def _initial_running(self, n: int) -> torch.Tensor:
        """The running statistic before the first potential: −∞ for max, 0 for sum / difference."""
        return torch.full((n,), -math.inf if self.config.potential == "max" else 0.0, dtype=torch.float64)

    def _weights_after_resampling(self, log_w: torch.Tensor, ancestors: torch.Tensor) -> torch.Tensor:
        """Resampled particles are equally weighted: the weights reset to 1."""
        return torch.zeros_like(log_w)

    def _final_log_potential(self, r: torch.Tensor, lineage: torch.Tensor) -> torch.Tensor:
        """log G_0 = λ·r(x0) − Σ log G_t along the ancestry: every path's product is exp(λ·r(x0))."""
        return self.config.lam * r - lineage

    def _potential(self, r: torch.Tensor, running: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log G_t, the updated running statistic) for intermediate rewards ``r``."""
        lam = self.config.lam
        if self.config.potential == "difference":
            return lam * (r - running), r.clone()  # running holds the previous reward (0 at first)
        if self.config.potential == "max":
            best = torch.maximum(r, running)
            return lam * best, best
        total = running + r
        return lam * total, total

    def _move(
        self, ctx: RunContext, x: torch.Tensor, i: int, sched, pred, grad: torch.Tensor | None  # noqa: ANN001
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step for every particle, and log p_θ/τ (zero without guidance).

        ``grad`` is ∇_{x̂0} r(decode(x̂0)) at the particles' predicted clean samples; the step's
        mean moves by s·σ_t²·grad. It is not ∇_{x_t} log E[exp(λ r) | x_t]: the denoiser's
        Jacobian ∂x̂0/∂x_t is left out, so this proposal is a cheap heuristic, not the locally
        optimal (twisted) proposal -- the weights p_θ/τ keep the target exact either way."""
        cfg, model = self.config, ctx.model
        zero = torch.zeros(x.shape[0], dtype=torch.float64)
        std = sched.std(i, cfg.eta)
        if grad is None or std == 0:
            return model.step(x, i, sched, pred, eta=cfg.eta, rng=ctx.rng).sample, zero
        base = model.step(x, i, sched, pred, eta=cfg.eta, rng=ctx.rng)
        mean = base.mean + cfg.guidance * std**2 * grad
        sample = mean + (base.sample - base.mean)  # the same noise, around the shifted mean
        log_p = transition_log_prob(sample, base.mean, std)
        log_q = transition_log_prob(sample, mean, std)
        return sample, (log_p - log_q).double().cpu()
