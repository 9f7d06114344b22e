"""single_sde: one stochastic (SDE) step in an otherwise deterministic (ODE) chain, GRPO within branches.

Zhang, Zhang, Dai & Duan, "E-GRPO: High Entropy Steps Drive Effective Reinforcement Learning
for Flow Models" (arXiv:2601.00423; code github.com/shengjun-zhang/VisualGRPO), and the
one-SDE-step rollouts of MixGRPO / G2RPO. What is followed here, on the DDPM/DDIM step protocol:

- every step is a deterministic DDIM step (η = 0) except one, ``sde_step``, which is stochastic
  with ``eta``; E-GRPO *merges consecutive low-entropy steps into one high-entropy step*: with
  ``merge = m`` the stochastic step jumps from step ``sde_step``'s ᾱ to the ᾱ after step
  ``sde_step + m − 1`` in one DDIM step (its σ is the DDPM posterior std of the whole jump: in
  E-GRPO's flow SDE a longer step is noisier; on the DDPM chain σ is bounded by √(1 − ᾱ_after),
  so merging late steps can lower it), and the chain is one evaluation shorter per merged step;
- a group of ``group_size`` samples shares one prefix: one x_T per group, the deterministic steps
  up to the stochastic one taken once, then ``group_size`` branches from that shared state;
- advantages are group-relative *within the branches of one prefix* (E-GRPO's advantage
  "within samples sharing the same consolidated SDE step"): ``group_mean_std`` (GRPO's
  normalisation, the paper's) or ``group_loo`` (leave-one-out inside the group: no rescaling,
  so the gradient is the unbiased gradient of E[α·r]);
- the only log-prob term is the stochastic step's Gaussian transition (deterministic steps have
  no density), so the loss is ``−(1/N) Σ_i A_i · log p_θ(x^i_{after} | x_{prefix})``.

Not implemented: choosing the step automatically from measured entropy (E-GRPO's adaptive
threshold; here the step is chosen by index), G2RPO's aggregation over several granularities,
PPO-style ratios and clipping (one on-policy gradient step per batch), and a KL term.
"""

from __future__ import annotations

from typing import Any

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.diffusion import Schedule
from engines.training.diffusion import SCHEMES
from engines.training.diffusion.base import (
    DiffusionPolicy,
    DiffusionScheme,
    SchemeConfig,
    SchemeContext,
    batch_events,
)

GROUP_BASELINES = ("group_mean_std", "group_loo")


class SingleSDEConfig(SchemeConfig):
    label = "One SDE step (E-GRPO)"
    paper = "Zhang et al. 2026, E-GRPO: High Entropy Steps Drive Effective Reinforcement Learning for Flow Models"
    summary = "ODE steps except one (merged) stochastic step; GRPO advantages among branches of one shared prefix."

    sde_step: int = param(0, label="Stochastic step", min=0, max=999, help="Index of the one SDE step (0: the noisiest).")
    merge: int = param(
        1, label="Steps merged", min=1, max=1000, help="Consecutive steps merged into the one stochastic step (E-GRPO)."
    )
    group_size: int = param(4, label="Branches per prefix", min=2, max=4096, help="Samples branched from one shared state.")
    baseline: str = param(
        "group_mean_std", label="Advantage", choices=GROUP_BASELINES,
        help="Within one prefix's branches: GRPO's (r − mean)/std, or leave-one-out (unbiased, no rescaling).",
    )

    def validate(self) -> None:
        super().validate()
        if self.eta_steps.strip():
            raise ConfigError("single_sde sets η per step itself (ODE everywhere but sde_step); leave eta_steps empty")
        if self.eta_shape != "constant":
            raise ConfigError("single_sde has one stochastic step: eta_shape must be 'constant'")
        if self.batch_size % self.group_size:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of group_size {self.group_size}")

    def eta_schedule(self, sched: Schedule) -> tuple[float, ...]:
        """η of the unmerged chain (what the loop's evaluation samples): ``eta`` on ``sde_step``, 0 elsewhere."""
        return tuple(self.eta if i == self.sde_step else 0.0 for i in range(len(sched)))


def merged_schedule(sched: Schedule, start: int, merge: int) -> Schedule:
    """The schedule with steps ``start … start+merge−1`` merged into one step from ᾱ(start) to the ᾱ after the last."""
    if not 0 <= start < len(sched):
        raise ConfigError(f"sde_step {start} is outside a {len(sched)}-step chain")
    if start + merge > len(sched):
        raise ConfigError(f"sde_step {start} + merge {merge} runs past a {len(sched)}-step chain")
    end = start + merge - 1
    return Schedule(
        timesteps=sched.timesteps[: start + 1] + sched.timesteps[end + 1:],
        alpha_bars=sched.alpha_bars[: start + 1] + sched.alpha_bars[end + 1:],
        alpha_bars_prev=sched.alpha_bars_prev[:start] + (sched.alpha_bars_prev[end],) + sched.alpha_bars_prev[end + 1:],
    )


def group_advantages(rewards: torch.Tensor, group_size: int, baseline: str) -> torch.Tensor:
    """Advantages of rewards laid out group after group (``group_size`` branches of one prefix each)."""
    r = rewards.reshape(-1, group_size)
    if baseline == "group_loo":
        adv = r - (r.sum(1, keepdim=True) - r) / (group_size - 1)
    elif baseline == "group_mean_std":
        adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)
    else:
        raise ConfigError(f"baseline must be one of {', '.join(GROUP_BASELINES)}, got {baseline!r}")
    return adv.reshape(-1)


@SCHEMES.register("single_sde")
class SingleSDE(DiffusionScheme):
    name = "single_sde"
    Config = SingleSDEConfig

    def chain(self, policy: DiffusionPolicy) -> tuple[Schedule, tuple[float, ...]]:
        """The (merged) schedule and its η: ``eta`` on the stochastic step, 0 elsewhere."""
        cfg = self.config
        sched = merged_schedule(policy.schedule(cfg.steps), cfg.sde_step, cfg.merge)
        eta = tuple(cfg.eta if i == cfg.sde_step else 0.0 for i in range(len(sched)))
        return sched, eta

    def check_inputs(self, policy: DiffusionPolicy, reward: Any) -> None:
        super().check_inputs(policy, reward)
        sched, eta = self.chain(policy)
        if not sched.stochastic(eta)[self.config.sde_step]:
            raise ConfigError(f"step {self.config.sde_step} (merged {self.config.merge}) has σ = 0 at η = {self.config.eta}: "
                              "a step ending at t = 0 draws no noise; choose an earlier or shorter step, or η > 0")

    def plan(self, sched: Schedule) -> dict[str, int]:
        # An upper bound per sample: the shared prefix is evaluated once per group, so it costs less.
        steps = len(sched) - (self.config.merge - 1)
        return {"nfe": steps, "backward_nfe": 1, "backward_passes": 0}

    def loss(self, ctx: SchemeContext, n: int):
        cfg = self.config
        policy = ctx.policy
        g = cfg.group_size
        if n < g:  # the loop shrank the batch to what the budget allows
            raise BudgetExhausted(f"budget exhausted: no room for a group of {g} branches")
        n -= n % g  # whole groups only
        sched, eta = self.chain(policy)
        j = cfg.sde_step
        x = policy.initial_noise(n // g, ctx.rng)  # one x_T per group: the shared prefix
        for i in range(j):
            x = policy.step(x, i, sched, ctx.denoise(policy, x, i, sched), eta=eta).sample
        x = x.repeat_interleave(g, dim=0)  # the branches
        pred = ctx.denoise(policy, x, j, sched, grad=True)
        with torch.enable_grad():
            trans = policy.step(x, j, sched, pred, eta=eta, rng=ctx.rng)
            log_prob = trans.log_prob(trans.sample.detach())
        x = trans.sample.detach()
        for i in range(j + 1, len(sched)):
            x = policy.step(x, i, sched, ctx.denoise(policy, x, i, sched), eta=eta).sample
        ctx.budget.spend(samples=n)
        images = policy.decode(x)
        rewards = ctx.score(images)
        advantages = group_advantages(cfg.reward_weight * rewards, g, cfg.baseline).to(log_prob.dtype)
        loss = -(advantages * log_prob).mean()
        yield from batch_events(ctx, images, rewards.tolist(), advantages.tolist(), stochastic=sched.stochastic(eta),
                                meta={"group_size": g, "merged_steps": cfg.merge})
        return loss, {"loss": float(loss.detach()), "reward_mean": float(rewards.mean()), "logprob_terms": 1}
