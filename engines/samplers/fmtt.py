"""Flow Map Trajectory Tilting (FMTT): reward guidance that looks ahead through the flow map.

Sabour, Albergo, Domingo-Enrich, Boffi, Fidler, Kreis & Vanden-Eijnden, "Test-time scaling of
diffusions with flow maps" (2025, arXiv:2511.22688). No public code was found; this follows
the paper's construction (its Proposition 2.2 and the NETS / Jarzynski estimator it builds on,
Albergo & Vanden-Eijnden 2024, arXiv:2410.02711), written out below.

Guidance methods read the reward at a denoiser's estimate x̂0(x_t), which early in the chain
is a blurry mean. A flow map X_{t,1} carries x_t to where the probability-flow ODE lands, a
real sample, so the look-ahead reward R_t(x) = r(X_{t,1}(x)) is meaningful at every step.
FMTT walks the reverse chain toward the tilted densities

    ρ̃_k(x) ∝ p_k(x)·exp(λ·τ_k·R_k(x)),   τ_k = k/K (the tilt grows from 0 at x_T to 1 at x0),

with the Langevin drift of the tilt added to every step (the chain's noise σ_k² is twice the
step of its Langevin part, hence the ½):

    x_{k+1} = μ_θ(x_k) + ½·σ_k²·λ·τ_{k+1}·∇R_k(x_k) + σ_k·z.

Weights (``weights``):
- ``jarzynski`` (the paper's): log w = λ·Σ_k (τ_{k+1} − τ_k)·R_k(x_k). In continuous time the
  Jarzynski weight of this dynamics is ∫ λ·(R_t + t·(∂_t R_t + b_t·∇R_t)) dt, and along an
  exact flow map R_t is constant on ODE paths, so the bracket vanishes and only the integral of
  the look-ahead reward remains (Proposition 2.2). Exact as the steps shrink; with a denoiser
  x̂0 in place of the flow map the cancellation fails and so does the law.
- ``exact``: the discrete-time importance weight, log w = Σ_k [λτ_{k+1}R_{k+1}(x_{k+1}) −
  λτ_kR_k(x_k)] + log p_θ(x_{k+1}|x_k) − log q(x_{k+1}|x_k), which telescopes to
  λ·r(x0)·(p_θ/q along the path): exact for any number of steps.
- ``none`` (the paper's search use): no weights.

The pick is always the highest-reward particle (search), whatever ``weights`` says: the weights
do not choose it and nothing is resampled by them, along the way or at the end. They are
diagnostic output: the weighted *particle set* targets p_θ(x0)·exp(λ·r(x0))/Z (the paper's exact
sampling by importance weighting), read through the last ``resample`` event's log-weights
(``resampled=False``, as FK steering's), ``final_ess`` and ``log_evidence``; the pick alone is not
a sample of that law.

Flow maps. A model offers one as ``flow_map(x, alpha_bar)`` with its cost ``flow_map_nfe``
(network evaluations per call). Only the Gaussian-mixture toy has one: its exact
probability-flow ODE integrated by RK4 (``engines.models.gaussian_mixture``). **The embedded
digits DDPM has no flow map** (a DDPM's network is a denoiser, and integrating its ODE inside
every step would cost a whole chain per step), so FMTT refuses it with one line.

Cost per step and particle: one network evaluation (the step), one flow-map call with
gradient (``flow_map_nfe`` evaluations, as many differentiated through: ``backward_nfe``), one
reward call and one reward backward pass (the ``exact`` weights reuse the next step's
look-ahead, so they cost the same).

| code | paper | meaning |
|---|---|---|
| ``lam`` | reward weight of the tilt | target p·exp(λ r) |
| R_k | r(X_{t,1}(x_t)) | the look-ahead reward through the flow map |
| τ_k | t | tilt schedule (the paper's interpolant time; here the fraction of steps taken) |
| ``jarzynski`` | A_t = ∫ r(X_{s,1}(x_s)) ds (Prop. 2.2) | the importance weight |
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.diffusion import transition_log_prob
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.diffusion_common import (
    DiffusionConfig,
    DiffusionSampler,
    count_backward,
    decode,
    fit_particles,
    image_uris,
    preview_uris,
    reward_name,
    scores,
    state_nodes,
)
from engines.samplers.particles import effective_sample_size, log_mean_exp
from engines.trace import Event, ResampleEvent, SelectEvent


class FMTTConfig(DiffusionConfig):
    size_field = "particles"
    label = "FMTT (flow-map trajectory tilting)"
    paper = "Sabour, Albergo, Domingo-Enrich et al. 2025, Test-time scaling of diffusions with flow maps"
    summary = ("Tilt every step by the reward of where the flow map lands; pick the best reward (importance weights "
               "reaching p·exp(λr) are reported, not used for the pick). Flow-map models only.")

    particles: int = param(8, label="Particles", min=1, max=100000, help="Independent weighted chains.")
    lam: float = param(1.0, label="λ (reward weight)", min=0.0, max=1000.0, help="Target p(x)·exp(λ·r(x)).")
    weights: Literal["jarzynski", "exact", "none"] = param(
        "jarzynski",
        label="Weights",
        choices=("jarzynski", "exact", "none"),
        help="Diagnostic importance weights (in the last resample event and the metrics); the pick is the highest "
        "reward either way. jarzynski: ∫λR dt (the paper); exact: the discrete-time importance ratio; none: no weights.",
    )

    def validate(self) -> None:
        if self.eta == 0:
            raise ConfigError("fmtt tilts the chain's noise (eta > 0); with eta = 0 there is no Langevin part to tilt")


@SAMPLERS.register("fmtt")
class FMTT(DiffusionSampler):
    name = "fmtt"
    Config = FMTTConfig
    needs_flow_map = True  # the shared digits suite skips it: no image model has a flow map
    examples: dict[str, dict[str, Any]] = {}

    def needs_gradient(self) -> bool:
        return True

    def check_inputs(self, task: Any, model: Any, reward: Any) -> None:
        super().check_inputs(task, model, reward)
        if not callable(getattr(model, "flow_map", None)):
            raise ConfigError(
                f"fmtt needs a model with a flow map; {getattr(model, 'name', model)!r} has none "
                "(a DDPM's network is a denoiser: only the Gaussian-mixture toy offers one)"
            )

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg, model = self.config, ctx.model
        sched = model.schedule(cfg.steps)
        total = len(sched)
        looks = total  # R at x_T and at every state but the last (the exact weights reuse the next step's)
        flow = int(model.flow_map_nfe)
        n = fit_particles(
            ctx, cfg.particles, nfe_each=total + looks * flow, reward_calls_each=looks + 1, decodes_each=looks + 1,
            backward_each=total, backward_nfe_each=total * flow,
        )
        if n < 1:
            raise BudgetExhausted("budget exhausted: not even one particle fits the nfe / backward budget")
        x = model.initial_noise(n, ctx.rng)
        log_w = torch.zeros(n, dtype=torch.float64)
        parents: list[str | None] = [None] * n
        look, grad = self._look_ahead(ctx, x, sched.alpha_bars[0])
        for k in range(total):
            tau, tau_next = k / total, (k + 1) / total
            pred = ctx.denoise(x, k, sched)
            parents, events = state_nodes(
                ctx, depth=k, parents=parents, images=preview_uris(ctx, pred.x0), timestep=sched.timesteps[k],
                meta=[{"look_ahead_reward": v} for v in look.tolist()],
            )
            yield from events
            base = model.step(x, k, sched, pred, eta=cfg.eta, rng=ctx.rng)
            std = base.std
            mean = base.mean + 0.5 * std**2 * cfg.lam * tau_next * grad
            x_next = mean + (base.sample - base.mean)
            last = k == total - 1
            if cfg.weights == "jarzynski":
                log_w += cfg.lam * (tau_next - tau) * look.double().cpu()
            if not last:
                next_look, next_grad = self._look_ahead(ctx, x_next, sched.alpha_bars[k + 1])
            if cfg.weights == "exact":
                at_next = next_look if not last else None
                log_w += self._exact_increment(ctx, x_next, base.mean, mean, std, tau, tau_next, look, at_next)
            x = x_next
            if not last:
                look, grad = next_look, next_grad
        images = decode(ctx, x)
        r = torch.tensor(ctx.score(images), dtype=torch.float64)
        if cfg.weights == "exact":
            log_w += cfg.lam * r  # τ_K·R_K(x0) = r(x0): the last term of the telescoping sum
        ids, events = state_nodes(ctx, depth=total, parents=parents, images=image_uris(ctx, images), timestep=None, final=True)
        yield from events
        yield from scores(ids, r.tolist(), reward_name(ctx), partial=False)
        ess = effective_sample_size(log_w)
        yield ResampleEvent(step=total, particles=ids, ancestors=list(range(n)), log_weights=log_w.tolist(), ess=ess, resampled=False)
        ctx.metrics.update({"particles": n, "final_ess": ess, "steps": total, "flow_map_nfe": flow})
        if cfg.weights != "none":
            ctx.metrics["log_evidence"] = log_mean_exp(log_w)
        best = int(torch.argmax(r))
        yield SelectEvent(nodes=[ids[best]], reason=f"highest reward of {n} FMTT particles (final ESS {ess:.1f})")

    def _look_ahead(self, ctx: RunContext, x: torch.Tensor, alpha_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(R(x) = r(X_{t,1}(x)), ∇_x R) per particle: one flow-map call back-propagated through."""
        model = ctx.model
        flow = int(model.flow_map_nfe)
        ctx.check("nfe")
        if x.shape[0] * flow > ctx.remaining("nfe"):
            raise BudgetExhausted("budget exhausted: nfe")
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            landed = model.flow_map(z, alpha_bar)
            ctx.cost.add(nfe=x.shape[0] * flow)
            values = ctx.score_tensor(decode(ctx, landed))
            count_backward(ctx, x.shape[0], denoiser_evaluations=flow)
            (grad,) = torch.autograd.grad(values.sum(), z)
        return values.detach(), grad.detach()

    def _exact_increment(  # noqa: PLR0913
        self, ctx: RunContext, x_next: torch.Tensor, base_mean: torch.Tensor, mean: torch.Tensor, std: float,
        tau: float, tau_next: float, look: torch.Tensor, next_look: torch.Tensor | None,
    ) -> torch.Tensor:
        """λτ_{k+1}R_{k+1}(x_{k+1}) − λτ_kR_k(x_k) + log p_θ/q of the move (the final reward is
        added by the caller, where R_K is the reward itself)."""
        lam = self.config.lam
        increment = -lam * tau * look.double().cpu()
        if next_look is not None:
            increment += lam * tau_next * next_look.double().cpu()
        if std > 0:
            ratio = transition_log_prob(x_next, base_mean, std) - transition_log_prob(x_next, mean, std)
            increment += ratio.double().cpu()
        return increment
