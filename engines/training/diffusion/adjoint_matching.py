"""Adjoint Matching: KL-regularised reward fine-tuning as memoryless stochastic optimal control, on the DDPM step protocol.

Domingo-Enrich, Drozdzal, Karrer & Chen, "Adjoint Matching: Fine-tuning Flow and Diffusion
Generative Models with Memoryless Stochastic Optimal Control" (ICLR 2025, arXiv:2409.08861).

The problem. Fine-tuning maximises E[α·r(x_0)] − β·KL(p_θ ‖ p_pre) over whole chains, i.e. it
solves the control problem min_u E[Σ_t ½‖u_t‖² − λ·r(x_0)], λ = α/β, where the control is the
fine-tuned step's mean shift in units of the step noise, u_t = (μ_θ(x_t) − μ_pre(x_t))/σ_t
(½‖u_t‖² is the step's KL, so Σ_t ½‖u_t‖² is the chain's KL by the chain rule). Its optimum
tilts the *path* law: p*(x_T … x_0) ∝ p_pre(x_T … x_0)·exp(λ·r(x_0) − V(x_T)), with V the value
at the start. The terminal law is the tilted law p_pre(x_0)·exp(λ·r(x_0))/Z only when x_0 and
x_T are independent under p_pre: the paper's *memoryless* noise schedule. On the DDIM family
that is η = 1 on every step (DDPM's ancestral steps) from a start where ᾱ ≈ 0; with η < 1 the
chain remembers x_T and the optimum is biased by V(x_T) (the paper's "initial value function
bias"). ``memoryless`` in every update's metrics says which of the two a run is.

What is implemented (the discrete-time counterpart of the paper's Algorithm 1 on the step
protocol; our derivation, stated so it can be checked):

1. draw chains with the current policy under the scheme's η schedule (no graph through the
   states: the paper's trajectories are detached);
2. the lean adjoint, backward from the final sample: a_K = −λ·∇_x r(x_0) (the terminal cost's
   gradient; the reward must be differentiable), and a_t = (∂μ_pre(x_t)/∂x_t)ᵀ·a_{t+1} through
   every step, deterministic ones included: a vector-Jacobian product through the *pretrained*
   step's mean (the paper's lean adjoint ODE uses the base drift's Jacobian only, dropping the
   control's terms, whose expectation vanishes at the optimum);
3. the regression on the control at every stochastic step:
   ``loss = (1/N)·Σ_i Σ_{t∈S} ‖u_θ(x^i_t) + σ_t·a^i_{t+1}‖²``. Its minimiser is
   u_t(x) = −σ_t·E[a_{t+1} | x_t], and for the optimal (Gaussian-tilted) transition the exact
   discrete relation is mean = μ_pre − σ_t²·E[∇V_{t+1}(x_{t+1}) | x_t] with E[a_{t+1} | x_{t+1}]
   = ∇V_{t+1}(x_{t+1}) by the tower property, so the fixed point is the optimal control wherever
   the optimal transition is the Gaussian the policy can express.

What is not: the paper's flow-matching parametrisation and its own σ(t) for flow models (the
step protocol is DDPM/DDIM, where the memoryless schedule is η = 1); its timestep subsampling
for the loss (every stochastic step is regressed); its loss clipping; the "full" (non-lean)
adjoint and the comparison methods (DRaFT, ReFL, DPO variants are elsewhere or absent).
Steps whose σ falls below ``noise_floor`` run deterministically and carry no control term (their
KL would be infinite): they are transported by the adjoint only.

Cost per sample: ``steps`` policy evaluations (those of stochastic steps keep their graph),
``steps`` reference evaluations (all but the first back-propagated for the adjoint's
vector-Jacobian products), one reward backward pass.

| code | paper | meaning |
|---|---|---|
| ``reward_weight / kl_coef`` | λ (the reward multiplier; the KL weight is 1) | α/β |
| ``adjoint`` a_t | ã(t), the lean adjoint | gradient of the cost-to-go along the drawn chain |
| ``control`` u_t | u(X_t, t) | (μ_θ − μ_pre)/σ_t |
| η = 1 | the memoryless schedule σ(t) = √(2η_t) for DDIM | DDPM's ancestral steps |
"""

from __future__ import annotations

from typing import Any

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.models.diffusion import Eta, Schedule
from engines.training.diffusion import SCHEMES
from engines.training.diffusion.base import (
    DiffusionPolicy,
    DiffusionScheme,
    SchemeConfig,
    SchemeContext,
    batch_events,
)

#: ᾱ of the first step at or below which x_T carries (almost) nothing of x_0
MEMORYLESS_START = 1e-3


class AdjointMatchingConfig(SchemeConfig):
    label = "Adjoint Matching (memoryless SOC)"
    paper = ("Domingo-Enrich et al. 2025, Adjoint Matching: Fine-tuning Flow and Diffusion Generative Models "
             "with Memoryless Stochastic Optimal Control")
    summary = "Regress the fine-tuned step's mean shift on the lean adjoint of −λ·r, under DDPM's memoryless noise (η = 1)."

    kl_coef: float = param(
        1.0, label="KL coefficient (β)", min=1e-9, max=1e6,
        help="The target law is p_pre·exp(α·r/β)/Z: λ = α/β. Must be > 0.",
    )

    def validate(self) -> None:
        super().validate()
        if not self.kl_coef > 0:
            raise ConfigError("adjoint_matching needs kl_coef > 0 (the tilt is exp(α·r/β))")


def is_memoryless(sched: Schedule, eta: Eta, noise_floor: float) -> bool:
    """Whether the chain is the memoryless schedule: η = 1 on every step whose DDPM σ reaches the
    noise floor (the others run deterministically either way), starting from ᾱ ≤ ``MEMORYLESS_START``."""
    if sched.alpha_bars[0] > MEMORYLESS_START:
        return False
    return all(sched.eta_at(i, eta) == 1.0 or sched.std(i, 1.0) < noise_floor for i in range(len(sched)))


@SCHEMES.register("adjoint_matching")
class AdjointMatching(DiffusionScheme):
    name = "adjoint_matching"
    Config = AdjointMatchingConfig
    needs_reference = True
    needs_gradient = True

    def check_inputs(self, policy: DiffusionPolicy, reward: Any) -> None:
        super().check_inputs(policy, reward)
        sched = policy.schedule(self.config.steps)
        if not any(sched.stochastic(self.config.eta_schedule(sched))):
            raise ConfigError("adjoint_matching needs at least one stochastic step (η > 0 on a step with σ > 0)")

    def plan(self, sched: Schedule) -> dict[str, int]:
        stochastic = sum(sched.stochastic(self.config.eta_schedule(sched)))
        return {"nfe": 2 * len(sched), "backward_nfe": stochastic + len(sched) - 1, "backward_passes": 1}

    def loss(self, ctx: SchemeContext, n: int):
        cfg = self.config
        policy, reference = ctx.policy, ctx.reference
        sched = policy.schedule(cfg.steps)
        eta = cfg.eta_schedule(sched)
        stochastic = sched.stochastic(eta)
        lam = cfg.reward_weight / cfg.kl_coef
        # 1. the chains; the stochastic steps' means keep their graph into θ (their states do not)
        x = policy.initial_noise(n, ctx.rng)
        states, means = [], {}
        for i in range(len(sched)):
            states.append(x)
            pred = ctx.denoise(policy, x, i, sched, grad=stochastic[i])
            with torch.set_grad_enabled(stochastic[i]):
                trans = policy.step(x, i, sched, pred, eta=eta, rng=ctx.rng)
            if stochastic[i]:
                means[i] = trans.mean
            x = trans.sample.detach()
        ctx.budget.spend(samples=n)
        # 2. the terminal adjoint: the gradient of the terminal cost −λ·r at the final sample
        with torch.enable_grad():
            final = x.detach().requires_grad_(True)
            values = ctx.score_tensor(policy.decode(final))
            (grad_r,) = torch.autograd.grad(values.sum(), final)
        rewards = values.detach().double()
        adjoint = -lam * grad_r
        # 3. backward through the chain: the control regression at x_t needs a_{t+1}, then a_t = J_pre(x_t)ᵀ a_{t+1}
        terminal_norm = float(adjoint.flatten(1).norm(dim=1).mean())
        terms, kls = [], []
        for i in reversed(range(len(sched))):
            x_i = states[i].detach().requires_grad_(i > 0)
            ref_pred = ctx.denoise(reference, x_i, i, sched, grad=i > 0)
            with torch.set_grad_enabled(i > 0):
                ref_mean = reference.step(x_i, i, sched, ref_pred, eta=eta, noise=torch.zeros_like(x_i)).mean
            if stochastic[i]:
                std = sched.std(i, eta)
                control = (means[i] - ref_mean.detach()) / std
                terms.append(((control + std * adjoint) ** 2).flatten(1).sum(1))
                kls.append(0.5 * (control.detach() ** 2).flatten(1).sum(1))
            if i > 0:
                (adjoint,) = torch.autograd.grad(ref_mean, x_i, grad_outputs=adjoint)
        loss = torch.stack(terms, dim=1).sum(1).mean()
        kl = torch.stack(kls, dim=1).sum(1)
        memoryless = is_memoryless(sched, eta, cfg.noise_floor)
        yield from batch_events(ctx, policy.decode(x), rewards.tolist(), [], stochastic=stochastic,
                                meta={"memoryless": memoryless, "lambda": lam})
        metrics = {
            "loss": float(loss.detach()),
            "reward_mean": float(rewards.mean()),
            "kl": float(kl.mean()),
            "terminal_adjoint_norm": terminal_norm,
            "memoryless": memoryless,
        }
        return loss, metrics
