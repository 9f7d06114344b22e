"""Ψ-Sampler: SMC over denoising steps from initial particles drawn from the reward-aware posterior.

Yoon, Min, Yeo & Sung, "Ψ-Sampler: Initial Particle Sampling for SMC-Based Inference-Time
Reward Alignment in Score Models" (NeurIPS 2025, arXiv:2506.01320); reference code:
KAIST-Visual-AI-Group/Psi-Sampler (``src/mcmc.py`` for pCNL and the chain thinning,
``src/runner.py`` for the SMC).

Feynman-Kac steering (``fk_steering``) starts its particles from the prior x_T ~ N(0, I) and
leaves all the steering to the potentials. Ψ-Sampler first draws x_T from the reward-aware
posterior over the initial noise,

    π(x_T) ∝ N(x_T; 0, I) · exp(λ·r(x̂0(x_T))),

the tilted target pushed back to the start of the chain with the clean-sample estimate x̂0
(the paper's one-step Tweedie estimate), by the preconditioned Crank-Nicolson Langevin
algorithm (pCNL; Cotter, Roberts, Stuart & White 2013), a Metropolis-Hastings chain whose
proposal keeps the Gaussian prior invariant, so it mixes in high dimension:

    x' = ρ·x + √(1−ρ²)·(ξ + ½·√h·∇Φ(x)),   ξ ~ N(0, I),   Φ = λ·r∘x̂0,   h = 4(1−ρ)/(1+ρ),

accepted with probability min(1, π(x')q(x|x') / π(x)q(x'|x)). ``chains`` chains run
``burn_in`` proposals, then ``mcmc_steps`` more; each chain's share of the particles is
thinned from those last states (the reference's ``chains_thinning``). The particles then run
FK steering's SMC (this class *is* :class:`FKSteering` with another start): because they
already carry the initial tilt exp(λ·r̂_T), their weights start equal, and that tilt joins
the lineage that the final potential divides out, so the weighted particles still target
p_θ(x0)·exp(λ·r(x0))/Z exactly (the reference sets the initial weights to 1 after MCMC and
to r̂_T/α after a prior start, as here). With the ``difference`` potential and
``guidance`` s = λ this is the reference's SMC (intermediate targets p_t·exp(λ r̂_t), the
gradient-guided proposal, weights × p_θ/τ).

The look-ahead. On a DDPM the Tweedie estimate at the noisiest step is close to the data
mean whatever x_T is (ᾱ_T ≈ 0), so its posterior is nearly the prior and pCNL changes little:
the paper's setting is a few-step flow model, whose one-step estimate is already a sample.
``lookahead`` L > 1 replaces x̂0(x_T) by L deterministic DDIM steps along the run's own
schedule (the probability-flow map, approximately), so the posterior over x_T sees where the
noise actually goes; L = 1 is the paper. The SMC stays exact for any L (the estimate only
decides how good the start is).

Cost (metered; ``backward_passes`` are the gradient evaluations): each chain evaluates its
start and every proposal: per evaluation L network evaluations with gradient (``nfe``), one
reward call (and decode), one reward backward pass and L denoiser evaluations
differentiated through (``backward_nfe``). Chains × (1 + burn_in + mcmc_steps) evaluations,
then FK steering's cost for the particles. A budget shrinks particles and chains up front.

| code | paper | meaning |
|---|---|---|
| ``lam`` | 1/α | reward weight of the target p·exp(λ r) (the paper's α = 0.1 is λ = 10) |
| ``rho`` | ρ | pCN autocorrelation; step h = 4(1−ρ)/(1+ρ) |
| ``chains``, ``burn_in``, ``mcmc_steps`` | num_chains, burn_in, num_mcmc_steps | the MCMC plan |
| ``lookahead`` | (1: Tweedie x̂0) | DDIM steps from x_T to the clean estimate r is read on |
| ``log_evidence_ratio`` | | SMC estimate of log Z − log Z_T (the MCMC does not estimate Z_T) |
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from typing import Any

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.models.diffusion import Schedule
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.diffusion_common import count_backward, decode, fit_particles
from engines.samplers.fk_steering import FKSteering, FKSteeringConfig
from engines.trace import Event


class PsiSamplerConfig(FKSteeringConfig):
    label = "Ψ-Sampler (pCNL start + SMC)"
    paper = (
        "Yoon, Min, Yeo & Sung 2025, Ψ-Sampler: Initial Particle Sampling for SMC-Based Inference-Time "
        "Reward Alignment in Score Models"
    )
    summary = "Initial noise drawn from the reward-aware posterior by pCNL MCMC, then Feynman-Kac SMC toward p·exp(λr)."

    chains: int = param(5, label="MCMC chains", min=1, max=4096, help="pCNL chains; the particles are thinned from them.")
    burn_in: int = param(25, label="Burn-in", min=0, max=10000, help="Proposals per chain before any state is kept.")
    mcmc_steps: int = param(
        25, label="MCMC steps", min=1, max=10000, help="Proposals per chain after burn-in; particles are thinned from them."
    )
    rho: float = param(
        0.9, label="ρ (pCN autocorrelation)", min=0.0, max=0.999, step=0.01,
        help="x' = ρx + √(1−ρ²)(ξ + ½√h∇Φ); larger ρ: smaller moves, higher acceptance.",
    )
    lookahead: int = param(
        1, label="Look-ahead steps", min=1, max=1000, advanced=True,
        help="DDIM steps from x_T to the clean estimate the posterior reads the reward on (1: the paper's Tweedie x̂0).",
    )

    def validate(self) -> None:
        super().validate()
        per_chain = math.ceil(self.particles / min(self.chains, self.particles))
        if per_chain > self.mcmc_steps:
            raise ConfigError(
                f"psi_sampler thins {per_chain} particles per chain from {self.mcmc_steps} MCMC steps: "
                "raise mcmc_steps or chains"
            )


def lookahead_schedule(sched: Schedule, steps: int) -> Schedule:
    """``steps`` evenly spaced steps of ``sched`` from its first (noisiest) one, as a schedule that
    jumps between them and ends where ``sched`` ends: the deterministic DDIM path x_T → x̂0."""
    total = len(sched)
    if not 1 <= steps <= total:
        raise ConfigError(f"lookahead must be between 1 and the run's {total} steps, got {steps}")
    index = [k * total // steps for k in range(steps)]
    prev = tuple(sched.alpha_bars[j] for j in index[1:]) + (sched.alpha_bars_prev[-1],)
    return Schedule(
        tuple(sched.timesteps[j] for j in index), tuple(sched.alpha_bars[j] for j in index), prev
    )


def thinned_positions(kept: int, count: int) -> list[int]:
    """``count`` positions among ``kept`` post-burn-in states, evenly strided back from the last."""
    stride = max(1, kept // count)
    return [kept - 1 - j * stride for j in range(count)]


@SAMPLERS.register("psi_sampler")
class PsiSampler(FKSteering):
    name = "psi_sampler"
    Config = PsiSamplerConfig
    examples = {
        "psi_tweedie": {"particles": 4, "chains": 2, "burn_in": 2, "mcmc_steps": 2, "steps": 5, "lam": 10.0},
        "psi_lookahead_guided": {
            "particles": 3, "chains": 3, "burn_in": 1, "mcmc_steps": 1, "steps": 4, "lookahead": 2, "guidance": 0.2,
        },
    }

    def needs_gradient(self) -> bool:
        return True  # pCNL's proposal and acceptance use ∇r

    # -- budget ----------------------------------------------------------------------------

    def _mcmc_plan(self, chains: int) -> dict[str, int]:
        cfg = self.config
        evaluations = chains * (1 + cfg.burn_in + cfg.mcmc_steps)
        look = cfg.lookahead
        return {
            "nfe_each": evaluations * look,
            "reward_calls_each": evaluations,
            "decodes_each": evaluations,
            "backward_each": evaluations,
            "backward_nfe_each": evaluations * look,
        }

    def _affordable_particles(self, ctx: RunContext, total: int, std: list[float]) -> int:
        """The most particles (with at most ``chains`` chains) whose MCMC and SMC both fit the budgets."""
        smc = self.plan(total, std)
        for n in range(self.config.particles, 0, -1):
            mcmc = self._mcmc_plan(min(self.config.chains, n))
            plan = {key: mcmc[key] + n * smc.get(key, 0) for key in mcmc}
            if fit_particles(ctx, 1, **plan) == 1:
                return n
        return 0

    # -- the initial particles ---------------------------------------------------------------

    def _initial_particles(
        self, ctx: RunContext, n: int, sched: Schedule
    ) -> Generator[Event, None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        cfg = self.config
        chains = min(cfg.chains, n)
        look = lookahead_schedule(sched, cfg.lookahead)
        x = ctx.model.initial_noise(chains, ctx.rng)
        reward, grad = self._reward_and_gradient(ctx, x, look)
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        accepted = 0
        for it in range(cfg.burn_in + cfg.mcmc_steps):
            x, reward, grad, moved = self._pcnl_step(ctx, x, reward, grad, look)
            accepted += int(moved.sum())
            if it >= cfg.burn_in:
                kept.append((x.clone(), reward.clone()))
            yield ctx.cost_event()
        counts = [n // chains + (1 if c < n % chains else 0) for c in range(chains)]
        xs, rs = [], []
        for c, count in enumerate(counts):
            for pos in thinned_positions(len(kept), count):
                xs.append(kept[pos][0][c])
                rs.append(kept[pos][1][c])
        proposals = chains * (cfg.burn_in + cfg.mcmc_steps)
        ctx.metrics.update({"mcmc_chains": chains, "mcmc_acceptance": accepted / proposals if proposals else None})
        r_start = torch.stack(rs).double().cpu()
        # the running statistic starts at r̂_T for every potential (difference: the last reward;
        # max: the best so far; sum: the total so far): any positive potentials keep the target
        return torch.stack(xs), r_start.clone(), cfg.lam * r_start

    def _reward_and_gradient(self, ctx: RunContext, x: torch.Tensor, look: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
        """(r̂(x_T), ∇_{x_T} r̂) per chain, r̂ = r(decode(x̂0)) with x̂0 from ``len(look)`` DDIM
        steps, the gradient back-propagated through those network evaluations."""
        model = ctx.model
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            state = z
            for i in range(len(look)):
                pred = ctx.denoise(state, i, look, grad=True)
                if i < len(look) - 1:
                    state = model.step(state, i, look, pred, eta=0.0).sample
            values = ctx.score_tensor(decode(ctx, pred.x0))
            count_backward(ctx, x.shape[0], denoiser_evaluations=len(look))
            (grad,) = torch.autograd.grad(values.sum(), z)
        return values.detach().to(x.dtype), grad.detach()

    def _pcnl_step(
        self, ctx: RunContext, x: torch.Tensor, reward: torch.Tensor, grad: torch.Tensor, look: Schedule
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pCNL proposal per chain and its Metropolis-Hastings decision: (x, r̂, ∇r̂, accepted)."""
        rho, lam = self.config.rho, self.config.lam
        proposal = ctx.model.randn_like(x, ctx.rng)
        proposal = self._proposal_mean(x, lam * grad) + math.sqrt(1 - rho**2) * proposal
        new_reward, new_grad = self._reward_and_gradient(ctx, proposal, look)
        log_alpha = self._log_acceptance(x, reward, grad, proposal, new_reward, new_grad)
        u = torch.rand(x.shape[0], generator=ctx.rng, dtype=torch.float64)
        accept = torch.log(u) < log_alpha
        mask = accept.to(x.device).view(-1, *([1] * (x.dim() - 1)))
        keep = lambda new, old: torch.where(mask, new, old)  # noqa: E731
        return keep(proposal, x), torch.where(accept.to(x.device), new_reward, reward), keep(new_grad, grad), accept

    def _proposal_mean(self, x: torch.Tensor, grad_phi: torch.Tensor) -> torch.Tensor:
        """ρx + √(1−ρ²)·½√h·∇Φ(x): the pCNL proposal's mean (its variance is 1−ρ²)."""
        rho = self.config.rho
        h = 4 * (1 - rho) / (1 + rho)
        return rho * x + math.sqrt(1 - rho**2) * 0.5 * math.sqrt(h) * grad_phi

    def _log_acceptance(
        self, x: torch.Tensor, r: torch.Tensor, g: torch.Tensor, y: torch.Tensor, r_y: torch.Tensor, g_y: torch.Tensor
    ) -> torch.Tensor:
        """log [π(y)·q(x|y)] − log [π(x)·q(y|x)] with π = N(0, I)·exp(λ r̂) and q the pCNL proposal."""
        lam, var = self.config.lam, 1 - self.config.rho**2

        def log_target(z: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            return -0.5 * (z.double() ** 2).flatten(1).sum(1) + lam * value.double()

        def log_q(to: torch.Tensor, start: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            diff = (to - self._proposal_mean(start, lam * grad)).double()
            return -0.5 * (diff**2).flatten(1).sum(1) / var

        forward = log_target(y, r_y) + log_q(x, y, g_y)
        backward = log_target(x, r) + log_q(y, x, g)
        return (forward - backward).cpu()

    # -- the run -------------------------------------------------------------------------------

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        yield from super().steps(ctx)
        # FK's log Ẑ here estimates log Z − log Z_T: the MCMC start has no estimate of Z_T
        ratio: Any = ctx.metrics.pop("log_evidence", None)
        ctx.metrics["log_evidence_ratio"] = ratio
