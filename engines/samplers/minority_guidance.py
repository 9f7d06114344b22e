"""Self-guided minority generation: steer the reverse chain toward samples the model finds unlikely.

Um & Ye, "Self-Guided Generation of Minority Samples Using Diffusion Models" (ECCV 2024,
arXiv:2407.11555); reference code: soobin-um/sg-minority (``compute_mg_grad`` in
``guided_diffusion/gaussian_diffusion.py``, defaults in ``image_sample.py``).

Low-likelihood (minority) samples are the ones the model reconstructs badly: perturb a
clean estimate to a fixed noise level and denoise it again, and a sample from a dense region
comes back close to itself while a rare one is pulled toward the majority. At step t the
minority score of x_t is that reconstruction loss against the posterior mean,

    L(x_t) = ‖ x̂0(x_t) − sg[ x̂0( √ᾱ_p·x̂0(x_t) + √(1−ᾱ_p)·ε ) ] ‖_q,

with the perturbation level p = ``perturb_ratio``·T (T: training timesteps; here the step of
the run's own schedule closest to it), one noise draw ε, the second denoising held constant
(sg: stop-gradient) and q = ``norm``. Its gradient, taken through the first denoising back to
x_t, is normalised by its largest absolute entry per sample, scaled by ``scale`` and (the
``variance`` schedule, the paper's default) by the step's variance σ_t², and added to the
step's mean:

    x_{t-1} = μ_θ(x_t) + s·σ_t²·∇L / max|∇L| + σ_t·z.

The time schedules of the paper: guidance only while t > ``stop_ratio``·T (its ``t_mid``; 0:
to the end), and only at every ``every``-th step (its ``inter_rate``; the reference's default
is 5 of 250 steps, i.e. 50 guided steps; here 1 of the run's steps).

No reward steers this sampler: the run's reward only scores the final samples for display.
It draws samples and does not select among them, so every sample is a pick.

Cost per guided step and particle: two network evaluations (the prediction at x_t, taken with
gradient and reused for the step, and the re-denoising at the perturbation level), one
backward pass through the minority score and one denoiser evaluation differentiated through
(``backward_passes`` and ``backward_nfe``); one per unguided step.

| code | paper | meaning |
|---|---|---|
| ``scale`` | w (``mg_scale``) | guidance strength |
| ``perturb_ratio`` | t_p / T (``p_ratio``) | perturbation level of the reconstruction |
| ``stop_ratio`` | t_mid / T | no guidance at t ≤ t_mid |
| ``every`` | ``inter_rate`` | guide every k-th step |
| ``norm`` | (``norm_for_mg``) | the q of the L_q reconstruction loss (LPIPS in the paper's image runs) |
| ``schedule`` | ``mg_scale_type`` | ``variance``: the push scales with σ_t²; ``fixed``: it does not |
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.diffusion import Schedule
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
from engines.trace import Event, SelectEvent


class MinorityGuidanceConfig(DiffusionConfig):
    size_field = "particles"
    label = "Minority guidance (self-guided)"
    paper = "Um & Ye 2024, Self-Guided Generation of Minority Samples Using Diffusion Models"
    summary = "Push each step toward a larger reconstruction loss against the posterior mean: rarer samples."

    particles: int = param(8, label="Samples", min=1, max=4096, help="Independent guided chains.")
    scale: float = param(0.4, label="Guidance scale", min=0.0, max=1000.0, step=0.05, help="w: 0 is the plain model.")
    perturb_ratio: float = param(
        0.8, label="Perturbation level", min=0.0, max=1.0, step=0.05,
        help="t_p / T: how far the clean estimate is re-noised before it is denoised again.",
    )
    stop_ratio: float = param(
        0.0, label="Stop guiding below", min=0.0, max=1.0, step=0.05, help="No guidance at t ≤ this·T (0: to the end)."
    )
    every: int = param(1, label="Guide every k-th step", min=1, max=1000, help="The paper's inter_rate.")
    norm: float = param(2.0, label="Loss norm q", min=1.0, max=10.0, step=0.5, advanced=True, help="L_q reconstruction loss.")
    schedule: Literal["variance", "fixed"] = param(
        "variance", label="Scale schedule", choices=("variance", "fixed"), advanced=True,
        help="variance: the push is s·σ_t² (the paper's default); fixed: s.",
    )

    def validate(self) -> None:
        if self.schedule == "variance" and self.eta == 0 and self.scale > 0:
            raise ConfigError("minority guidance scaled by the step variance needs eta > 0 (σ_t = 0 would cancel it)")


def perturbation_step(sched: Schedule, ratio: float, train_steps: int) -> Schedule:
    """A one-step schedule at the run's timestep nearest ``ratio``·T, for the re-denoising."""
    target = ratio * train_steps
    j = min(range(len(sched)), key=lambda k: abs(sched.timesteps[k] - target))
    return Schedule((sched.timesteps[j],), (sched.alpha_bars[j],), (sched.alpha_bars_prev[j],))


def training_timesteps(model: object) -> int:
    """T, the number of training timesteps the ratios refer to (from the model's noise scheduler)."""
    config = getattr(getattr(model, "scheduler", None), "config", None)
    if config is None or "num_train_timesteps" not in config:
        raise ConfigError(f"minority guidance needs the training noise schedule of {getattr(model, 'name', model)!r}")
    return int(config["num_train_timesteps"])


@SAMPLERS.register("minority_guidance")
class MinorityGuidance(DiffusionSampler):
    name = "minority_guidance"
    Config = MinorityGuidanceConfig
    examples = {
        "minority": {"particles": 3, "steps": 5},
        "minority_sparse_fixed": {"particles": 2, "steps": 6, "every": 2, "stop_ratio": 0.3, "schedule": "fixed"},
    }

    def guided(self, sched: Schedule, i: int, train_steps: int) -> bool:
        cfg = self.config
        if cfg.schedule == "variance" and sched.std(i, cfg.eta) == 0:
            return False  # a noiseless step (the last DDIM step) would push by s·0: skip the work
        return cfg.scale > 0 and i % cfg.every == 0 and sched.timesteps[i] > cfg.stop_ratio * train_steps

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg, model = self.config, ctx.model
        sched = model.schedule(cfg.steps)
        total = len(sched)
        train_steps = training_timesteps(model)
        perturb = perturbation_step(sched, cfg.perturb_ratio, train_steps)
        guided = [self.guided(sched, i, train_steps) for i in range(total)]
        n = fit_particles(
            ctx, cfg.particles, nfe_each=total + sum(guided), reward_calls_each=1, decodes_each=1,
            backward_each=sum(guided), backward_nfe_each=sum(guided),
        )
        if n < 1:
            raise BudgetExhausted("budget exhausted: not even one chain fits the nfe / backward budget")
        x = model.initial_noise(n, ctx.rng)
        parents: list[str | None] = [None] * n
        for i in range(total):
            push = torch.zeros_like(x)
            if guided[i]:
                pred, grad, loss = self._minority_gradient(ctx, x, i, sched, perturb)
                push = self._push(grad, sched.std(i, cfg.eta))
                meta = [{"minority_score": v} for v in loss.tolist()]
            else:
                pred, meta = ctx.denoise(x, i, sched), None
            parents, events = state_nodes(
                ctx, depth=i, parents=parents, images=preview_uris(ctx, pred.x0), timestep=sched.timesteps[i], meta=meta
            )
            yield from events
            x = model.step(x, i, sched, pred, eta=cfg.eta, rng=ctx.rng).sample + push
        images = decode(ctx, x)
        ids, events = state_nodes(ctx, depth=total, parents=parents, images=image_uris(ctx, images), timestep=None, final=True)
        yield from events
        yield from scores(ids, ctx.score(images), reward_name(ctx), partial=False)
        ctx.metrics.update({"particles": n, "guided_steps": sum(guided), "steps": total})
        yield SelectEvent(nodes=ids, reason=f"all {n} minority-guided samples (the method draws, it does not select)")

    def _minority_gradient(self, ctx: RunContext, x: torch.Tensor, i: int, sched: Schedule, perturb: Schedule):  # noqa: ANN202
        """(the detached prediction at x_t, ∇_{x_t} L, L) with L the reconstruction loss above."""
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            pred = ctx.denoise(z, i, sched, grad=True)
            a = perturb.alpha_bars[0]
            noised = math.sqrt(a) * pred.x0 + math.sqrt(1 - a) * ctx.model.randn_like(x, ctx.rng)
            with torch.no_grad():
                again = ctx.denoise(noised.detach(), 0, perturb).x0
            loss = self._loss(pred.x0, again)
            count_backward(ctx, x.shape[0], denoiser_evaluations=1)
            (grad,) = torch.autograd.grad(loss.sum(), z)
        detached = type(pred)(eps=pred.eps.detach(), x0=pred.x0.detach())
        return detached, grad, loss.detach()

    def _loss(self, x0: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """‖x̂0 − reconstruction‖_q per sample: the minority score (larger: rarer)."""
        return (x0 - reconstruction).flatten(1).norm(p=self.config.norm, dim=1)

    def _push(self, grad: torch.Tensor, std: float) -> torch.Tensor:
        """s·(σ_t² or 1)·∇L / max|∇L|: the shift of the step's mean toward a larger minority score."""
        cfg = self.config
        peak = grad.flatten(1).abs().amax(dim=1).clamp(min=1e-12).view(-1, *([1] * (grad.dim() - 1)))
        factor = cfg.scale * (std**2 if cfg.schedule == "variance" else 1.0)
        return factor * grad / peak
