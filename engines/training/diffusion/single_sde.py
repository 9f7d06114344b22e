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

Multi-granularity advantages (``granularities``, G2RPO: Zhou, Ling, Bu, Wang, Zang, Wang, Niu &
Zhai, "G²RPO: Granular GRPO for Precise Reward in Flow Models", arXiv:2510.01982; code
github.com/bcmi/Granular-GRPO). Its *Multi-Granularity Advantage Integration* scores one SDE
perturbation by the images the ODE makes from it at several denoising granularities. Here: after
the stochastic step, the remaining deterministic steps are run once per granularity s, each run
merging every s consecutive steps into one DDIM step (from the ᾱ at the run's start to the ᾱ after
its last step; the last run may be shorter); each run gives its own final image and reward, the
group advantages are computed per granularity (within one prefix's branches, as above) and summed:
``A_i = Σ_s A_i^(s)``. ``granularities = 1`` (the default) is the single chain above, unchanged.
The sum is how we read the paper's integration (its method text was not available to us in full;
the abstract and summaries say the advantages "computed at multiple diffusion scales" are
aggregated). Events and ``reward_mean`` show the first granularity's images and rewards; each
granularity's mean reward is in the metrics. Budget: a branch is one sample; every granularity's
ODE run is metered as network evaluations.

Not implemented: choosing the step automatically from measured entropy (E-GRPO's adaptive
threshold; here the step is chosen by index), G2RPO's *Singular Stochastic Sampling* moving the
one SDE step across the chain during training (here it stays at ``sde_step``), PPO-style ratios
and clipping (one on-policy gradient step per batch), and a KL term.
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
    granularities: str = param(
        "1", label="ODE granularities (G2RPO)",
        help="Comma-separated step-merge factors for the ODE steps after the stochastic one; each gives its own image "
        "and reward, and the advantages are summed over them (G2RPO). 1: one chain (E-GRPO).",
        advanced=True,
    )

    def validate(self) -> None:
        super().validate()
        if self.eta_steps.strip():
            raise ConfigError("single_sde sets η per step itself (ODE everywhere but sde_step); leave eta_steps empty")
        if self.eta_shape != "constant":
            raise ConfigError("single_sde has one stochastic step: eta_shape must be 'constant'")
        if self.batch_size % self.group_size:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of group_size {self.group_size}")
        self.granularity_list()

    def granularity_list(self) -> tuple[int, ...]:
        """The granularities as positive integers, in the order given (the first is the one shown)."""
        try:
            scales = tuple(int(v) for v in self.granularities.split(","))
        except ValueError:
            raise ConfigError(f"granularities must be comma-separated whole numbers, got {self.granularities!r}") from None
        if not scales or any(v < 1 for v in scales) or len(set(scales)) != len(scales):
            raise ConfigError(f"granularities must be distinct whole numbers >= 1, got {self.granularities!r}")
        return scales

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


def coarsened_tail(sched: Schedule, first: int, scale: int) -> Schedule:
    """The schedule with steps ``first …`` grouped ``scale`` at a time, each group one step from the
    ᾱ at its start to the ᾱ after its last step (the last group may be shorter); earlier steps unchanged."""
    starts = range(first, len(sched), scale)
    ends = [min(start + scale, len(sched)) - 1 for start in starts]
    return Schedule(
        timesteps=sched.timesteps[:first] + tuple(sched.timesteps[s] for s in starts),
        alpha_bars=sched.alpha_bars[:first] + tuple(sched.alpha_bars[s] for s in starts),
        alpha_bars_prev=sched.alpha_bars_prev[:first] + tuple(sched.alpha_bars_prev[e] for e in ends),
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
        after = len(sched) - (self.config.merge - 1) - self.config.sde_step - 1  # ODE steps after the stochastic one
        tails = sum(-(-after // s) for s in self.config.granularity_list())
        return {"nfe": self.config.sde_step + 1 + tails, "backward_nfe": 1, "backward_passes": 0}

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
        branched = trans.sample.detach()
        finals = {}
        for scale in cfg.granularity_list():  # G2RPO: the same perturbation, denoised at several granularities
            tail = sched if scale == 1 else coarsened_tail(sched, j + 1, scale)
            x = branched
            for i in range(j + 1, len(tail)):
                x = policy.step(x, i, tail, ctx.denoise(policy, x, i, tail), eta=0.0).sample
            finals[scale] = x
        ctx.budget.spend(samples=n)
        images = {scale: policy.decode(x) for scale, x in finals.items()}
        rewards = {scale: ctx.score(image) for scale, image in images.items()}
        advantages = sum(group_advantages(cfg.reward_weight * r, g, cfg.baseline) for r in rewards.values())
        advantages = advantages.to(log_prob.dtype)
        loss = -(advantages * log_prob).mean()
        shown = cfg.granularity_list()[0]
        yield from batch_events(ctx, images[shown], rewards[shown].tolist(), advantages.tolist(),
                                stochastic=sched.stochastic(eta),
                                meta={"group_size": g, "merged_steps": cfg.merge, "granularities": list(rewards)})
        metrics = {"loss": float(loss.detach()), "reward_mean": float(rewards[shown].mean()), "logprob_terms": 1}
        if len(rewards) > 1:
            metrics.update({f"reward_mean_g{scale}": float(r.mean()) for scale, r in rewards.items()})
        return loss, metrics
