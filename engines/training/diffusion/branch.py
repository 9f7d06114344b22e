"""branch: backward progressive training with branch-based sampling (B²-DiffuRL).

Hu, Zhang, Chen, Kuang, Li, Gao, Xiao, Wang & Zhu, "Towards Better Alignment: Training Diffusion
Models with Reinforcement Learning Against Sparse Rewards" (CVPR 2025, arXiv:2503.11240; code
github.com/hu-zijing/B2-DiffuRL, read for the rules below). Two strategies against a sparse,
final-image reward:

- **Backward progressive training.** Only the *last* m steps of the K-step chain are trained (the
  trained interval [K − m, K)); m starts at ``first_interval`` and grows over training towards
  ``last_interval`` (the whole chain when empty). The schedule is the released code's stage
  schedule (``run_process.sh``: ``split_step = left + ⌊i·(right − left + 1)/stages⌋``) with one
  stage per update: at update u, m = min(last, first + ⌊u·(last − first + 1)/U⌋), U =
  ``curriculum_updates``. Log-prob terms are taken only for the stochastic steps inside the
  interval (the code's ``t_left:t_right`` slice).
- **Branch-based sampling.** Each group draws one chain down to the interval's first step, then
  ``branch_size`` branches continue from that exact state (the code's ``split_time`` copies at
  ``split_step``); samples are compared *within their branch*, so the advantage measures what the
  interval's own policy contributed, not the prefix: GRPO's (r − mean)/std among the branches
  (``group_mean_std``) or leave-one-out (``group_loo``).

The loss, with G the groups, g = ``branch_size`` and I the interval's stochastic steps::

    loss = −(1/N) Σ_i A_i · Σ_{t∈I} log p_θ(x^i_{t-1} | x^i_t)

The prefix steps (before the interval) draw their noise with the same η but carry no log-prob
term. Because the branches of a group share their prefix exactly and their advantages sum to 0,
a prefix log-prob term would cancel within the group anyway: comparing within the branch is what
isolates the interval. With ``group_loo`` the expected gradient is ∇θ E[α·r] through the
interval's stochastic steps only (E over the prefix state x_b of ∇θ E[α·r | x_b]); with
``group_mean_std`` each group is also divided by its std.

Differences from the released code, said plainly: it standardises rewards per prompt with a
history of past stages and then trains only on the best and the worst sample of each branch when
they pass thresholds, with PPO ratios and clipping over several inner epochs; here every branch
sample is used with its within-branch advantage, one on-policy gradient step per batch, no KL.
"""

from __future__ import annotations

from typing import Any

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.diffusion import Schedule
from engines.training.diffusion import SCHEMES
from engines.training.diffusion.base import DiffusionPolicy, DiffusionScheme, SchemeConfig, SchemeContext
from engines.training.diffusion.single_sde import GROUP_BASELINES
from engines.training.diffusion.tree import grow_trees, learn_from_trees


class BranchConfig(SchemeConfig):
    label = "Backward progressive + branches (B²-DiffuRL)"
    paper = "Hu et al. 2025, Towards Better Alignment: Training Diffusion Models with Reinforcement Learning Against Sparse Rewards"
    summary = "Train the last steps first and extend backwards; branch samples from one state and compare within the branch."

    branch_size: int = param(4, label="Branches per state", min=2, max=4096, help="Samples continued from one shared state.")
    first_interval: int = param(
        3, label="Trained steps at first", min=1, max=1000, help="The last m steps of the chain trained at the first update."
    )
    last_interval: int | None = param(
        None, label="Trained steps at last", min=1, max=1000, help="Where the interval stops growing; empty: the whole chain."
    )
    curriculum_updates: int = param(
        20, label="Curriculum length (updates)", min=1, max=10**6, help="Updates over which the interval grows from first to last."
    )
    baseline: str = param(
        "group_mean_std", label="Advantage", choices=GROUP_BASELINES,
        help="Within one branch point: GRPO's (r − mean)/std, or leave-one-out (unbiased, no rescaling).",
    )

    def validate(self) -> None:
        super().validate()
        if self.last_interval is not None and self.last_interval < self.first_interval:
            raise ConfigError(f"last_interval {self.last_interval} is shorter than first_interval {self.first_interval}")
        if self.batch_size % self.branch_size:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of branch_size {self.branch_size}")

    def trained_steps(self, update: int, steps: int) -> int:
        """m at update ``update``: how many of the chain's last steps are trained (the curriculum)."""
        last = min(self.last_interval or steps, steps)
        first = min(self.first_interval, last)
        return min(last, first + update * (last - first + 1) // self.curriculum_updates)


@SCHEMES.register("branch")
class Branch(DiffusionScheme):
    name = "branch"
    Config = BranchConfig

    def interval(self, update: int, sched: Schedule) -> range:
        """The chain steps trained at update ``update``: [K − m, K)."""
        k = len(sched)
        return range(k - self.config.trained_steps(update, k), k)

    def check_inputs(self, policy: DiffusionPolicy, reward: Any) -> None:
        super().check_inputs(policy, reward)
        cfg = self.config
        sched = policy.schedule(cfg.steps)
        if cfg.first_interval > len(sched):
            raise ConfigError(f"first_interval {cfg.first_interval} is longer than the {len(sched)}-step chain")
        stochastic = sched.stochastic(cfg.eta_schedule(sched))
        if not any(stochastic[i] for i in self.interval(0, sched)):
            raise ConfigError(f"the last {cfg.first_interval} steps have σ = 0 (η, noise floor): the first interval has nothing "
                              "to train or branch; raise first_interval")

    def plan(self, sched: Schedule) -> dict[str, int]:
        # An upper bound per sample: the prefix is shared by a group, and the interval is at its widest.
        stochastic = sched.stochastic(self.config.eta_schedule(sched))
        widest = self.interval(self.config.curriculum_updates, sched)
        return {"nfe": len(sched), "backward_nfe": sum(stochastic[i] for i in widest), "backward_passes": 0}

    def loss(self, ctx: SchemeContext, n: int):
        cfg = self.config
        g = cfg.branch_size
        if n < g:  # the loop shrank the batch to what the budget allows
            raise BudgetExhausted(f"budget exhausted: no room for a branch of {g} samples")
        sched = ctx.policy.schedule(cfg.steps)
        eta = cfg.eta_schedule(sched)
        interval = self.interval(ctx.step, sched)
        tree = grow_trees(ctx, sched, eta, n // g, [interval.start], [g], lambda i: i in interval)
        loss, metrics = yield from learn_from_trees(ctx, tree, sched, eta, weight=cfg.reward_weight, baseline=cfg.baseline,
                                                    meta={"interval": [interval.start, interval.stop], "branch_size": g})
        return loss, {**metrics, "interval_start": interval.start}
