"""ReNO: reward-based noise optimisation of the initial noise.

Eyring, Karthik, Roth, Dosovitskiy & Akata, "ReNO: Enhancing One-step
Text-to-Image Models through Reward-based Noise Optimization" (NeurIPS 2024,
arXiv:2406.04312); reference code: ExplainableML/ReNO.

The sampler G maps an initial noise z = x_T to an image (here: the model's
reverse chain with ``steps`` steps, deterministic DDIM by default; with η > 0
the step noises are drawn once and held fixed, as ReNO re-seeds its generator
every iteration). ReNO adjusts z by gradient descent on

    L(z) = −w·r(G(z)) + γ·( ½‖z‖² − (d − 1)·log‖z‖ )

where the second term is the negative log-density of ‖z‖ under the χ_d
distribution that ‖z‖ follows for z ~ N(0, I_d): it keeps z where Gaussian
noise lives, so the optimisation cannot drift into noise the model never saw.
The optimiser is SGD with Nesterov momentum (0.9) and the gradient norm is
clipped per particle, as in the paper. Every iteration's image is a candidate;
the pick is the highest-reward image seen.

| code | paper | meaning |
|---|---|---|
| ``reward_weight`` | λ (per-reward weighting) | w, the reward's weight in the loss |
| ``reg_weight`` | λ_reg | γ, weight of the norm regulariser K(z) |
| ``lr`` | learning rate | SGD step size (paper: 5.0) |
| ``grad_clip`` | gradient clipping | max gradient norm per particle (paper: 0.1) |
| ``iterations`` | number of optimisation steps | (paper: 50) |

Cost: every iteration runs the chain forward (``steps`` evaluations per
particle, metered as ``nfe``), decodes its images (``decodes``, VAE passes
for latent models) and, except the last, back-propagates through the reward,
the decoder and the whole chain: one ``backward_passes`` per particle and
``steps`` denoiser evaluations differentiated through per particle
(``backward_nfe``; a backward pass costs about two forward ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from engines.config import param
from engines.errors import BudgetExhausted
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.diffusion_common import (
    DiffusionConfig,
    DiffusionSampler,
    count_backward,
    decode,
    fit_particles,
    image_uris,
    reward_name,
    scores,
    state_nodes,
)
from engines.trace import Event, SelectEvent


class ReNOConfig(DiffusionConfig):
    size_field = "particles"
    label = "ReNO (noise optimisation)"
    paper = "Eyring et al. 2024, ReNO: Enhancing One-step Text-to-Image Models through Reward-based Noise Optimization"
    summary = "Gradient ascent on the initial noise through the sampler, with a χ-norm regulariser."

    eta: float = param(
        0.0,
        label="η (step noise)",
        min=0.0,
        max=1.0,
        step=0.05,
        help="0: deterministic DDIM chain; > 0: step noises drawn once and held fixed.",
        advanced=True,
    )
    particles: int = param(1, label="Particles", min=1, max=256, help="Initial noises optimised in parallel.")
    iterations: int = param(20, label="Iterations", min=1, max=1000, help="Optimisation steps (each one a full chain).")
    lr: float = param(5.0, label="Learning rate", min=1e-6, max=1000.0, help="SGD step size (Nesterov momentum 0.9).")
    reward_weight: float = param(1.0, label="Reward weight", min=0.0, max=10000.0, help="w in −w·r(G(z)).")
    reg_weight: float = param(
        0.01, label="Norm regulariser", min=0.0, max=100.0, step=0.001, help="γ on −log χ_d(‖z‖); 0 turns it off."
    )
    grad_clip: float = param(0.1, label="Gradient clip", min=1e-6, max=1000.0, help="Max gradient norm per particle.")


def chi_norm_penalty(z: torch.Tensor) -> torch.Tensor:
    """½‖z‖² − (d − 1)·log‖z‖ per particle: −log χ_d(‖z‖) up to a constant."""
    d = z[0].numel()
    norm = z.flatten(1).norm(dim=1)
    return 0.5 * norm**2 - (d - 1) * torch.log(norm)


@SAMPLERS.register("reno")
class ReNO(DiffusionSampler):
    name = "reno"
    Config = ReNOConfig
    examples = {"reno": {"iterations": 3, "steps": 4, "particles": 2}}

    def needs_gradient(self) -> bool:
        return True

    @staticmethod
    def _fits(ctx: RunContext, iterations: int, n: int, total: int) -> bool:
        """Whether ``iterations`` forward chains of ``n`` particles and one backward pass fewer fit the budget."""
        forward = fit_particles(ctx, iterations, nfe_each=n * total, reward_calls_each=n, decodes_each=n) == iterations
        backward = iterations - 1
        return forward and fit_particles(
            ctx, backward, nfe_each=0, reward_calls_each=0, backward_each=n, backward_nfe_each=n * total
        ) == backward

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg = self.config
        model = ctx.model
        sched = model.schedule(cfg.steps)
        total = len(sched)
        n = fit_particles(ctx, cfg.particles, nfe_each=total, reward_calls_each=1, decodes_each=1)
        if n < 1:
            raise BudgetExhausted("budget exhausted: not even one chain fits the nfe / reward / decode budget")
        iterations = next((k for k in range(cfg.iterations, 0, -1) if self._fits(ctx, k, n, total)), 0)
        rname = reward_name(ctx)
        z = model.initial_noise(n, ctx.rng).clone().requires_grad_(True)
        step_noise = [model.randn_like(z, ctx.rng) if sched.std(i, cfg.eta) > 0 else None for i in range(total)]
        optimizer = torch.optim.SGD([z], lr=cfg.lr, momentum=0.9, nesterov=True)
        parents: list[str | None] = [None] * n
        best_value, best_id = -math.inf, None
        first_values: list[float] = []
        for it in range(iterations):
            with torch.enable_grad():  # the consumer may iterate under no_grad
                x = z
                for i in range(total):
                    pred = ctx.denoise(x, i, sched, grad=True)
                    x = model.step(x, i, sched, pred, eta=cfg.eta, noise=step_noise[i]).sample
                images = decode(ctx, x)
                rewards = ctx.score_tensor(images)
            values = rewards.detach().float().cpu().tolist()
            norms = z.detach().flatten(1).norm(dim=1).tolist()
            ids, events = state_nodes(
                ctx,
                depth=it,
                parents=parents,
                images=image_uris(ctx, images.detach()),
                timestep=None,
                final=True,
                meta=[{"iteration": it, "noise_norm": norm} for norm in norms],
            )
            yield from events
            yield from scores(ids, values, rname, partial=False)
            if it == 0:
                first_values = values
            for node_id, value in zip(ids, values, strict=True):
                if value > best_value:
                    best_value, best_id = value, node_id
            parents = list(ids)
            if it == iterations - 1:
                break
            with torch.enable_grad():
                loss = -cfg.reward_weight * rewards.sum()
                if cfg.reg_weight > 0:
                    loss = loss + cfg.reg_weight * chi_norm_penalty(z).sum()
            optimizer.zero_grad(set_to_none=True)
            count_backward(ctx, n, denoiser_evaluations=total)
            loss.backward()
            with torch.no_grad():
                norms = z.grad.flatten(1).norm(dim=1).clamp(min=1e-12)
                factor = (cfg.grad_clip / norms).clamp(max=1.0).view(-1, *([1] * (z.dim() - 1)))
                z.grad.mul_(factor)
            optimizer.step()
        if best_id is None:
            raise BudgetExhausted("budget exhausted: no iteration fits the nfe / reward budget")
        ctx.metrics.update(
            {
                "particles": n,
                "iterations": iterations,
                "initial_reward": max(first_values) if first_values else None,
                "best_reward": best_value,
            }
        )
        yield SelectEvent(nodes=[best_id], reason=f"highest reward over {iterations} iteration(s) of {n} noise(s)")
