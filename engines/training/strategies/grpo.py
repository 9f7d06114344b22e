"""``grpo``: group-relative advantages, the reference strategy.

Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
Language Models" (GRPO). Per prompt, G samples; A_i = (r_i - mean(r)) / (std(r) + eps)
with the group's sample std (unbiased, as ``torch.std`` in TRL's ``GRPOTrainer`` and
verl's ``compute_grpo_outcome_advantage``); ``scale_by_std=False`` gives Dr. GRPO's
mean-only baseline (Liu et al. 2025, "Understanding R1-Zero-Like Training"). Every group
is kept; a group whose rewards are all equal has A = 0 for all its samples.

Expected update (binary rewards, success probability p_j of prompt j, ``sample_sum``
aggregation over a batch of B groups)::

    E[g] = (1 / (B G)) sum_j c(p_j) grad p_j,
    c(p) = sum_k Binom(k; G, p) [k A+(k) / p - (G - k) A-(k) / (1 - p)]

where A+(k), A-(k) are the advantages of a right and a wrong sample in a group with
k right answers (the sum over outcome patterns; tests/training check it).
"""

from __future__ import annotations

from engines.config import param
from engines.training import STRATEGIES
from engines.training.base import FixedGroupStrategy, Group, StrategyConfig, mean_baseline


class GRPOConfig(StrategyConfig):
    label = "GRPO"
    paper = "Shao et al. 2024, DeepSeekMath (GRPO)"
    summary = "Group mean/std baseline; every group kept."

    scale_by_std: bool = param(True, label="Divide by group std", help="Off: Dr. GRPO's mean-only baseline.")


@STRATEGIES.register("grpo")
class GRPO(FixedGroupStrategy):
    Config = GRPOConfig
    name = "grpo"

    def shape(self, group: Group) -> None:
        group.advantages = mean_baseline(group.rewards, std=self.config.scale_by_std)
