"""``reinforce_rej``: REINFORCE with a group-mean baseline, dropping degenerate groups.

Xiong et al. 2025, "A Minimalist Approach to LLM Reasoning: from Rejection Sampling to
Reinforce" (Reinforce-Rej). Following the paper and its public code (RLHFlow/Minimal-RL):
per prompt G samples, A_i = r_i - mean(r) (no std division), and groups whose samples are
*all right* or *all wrong* are filtered out before the update, so they do not dilute the
batch average (``drop="degenerate"``). The paper's ablation drops only the all-wrong
groups (``drop="all_wrong"``): all-right groups stay in the batch with A = 0.

Expected update (binary rewards, B prompts with success probabilities p_j, ``sample_sum``:
the mean over kept samples)::

    E[g] = sum over patterns (k_1..k_B) of prod_j Binom(k_j; G, p_j)
           * [sum_{j kept} k_j (G - k_j) / G * (1/p_j + 1/(1-p_j)) grad p_j] / (G * #kept groups)

(0 when no group is kept); tests/training enumerate it.
"""

from __future__ import annotations

from engines.config import param
from engines.training import STRATEGIES
from engines.training.base import FixedGroupStrategy, Group, StrategyConfig, mean_baseline


class ReinforceRejConfig(StrategyConfig):
    label = "Reinforce-Rej"
    paper = "Xiong et al. 2025, A Minimalist Approach to LLM Reasoning (Reinforce-Rej)"
    summary = "Mean baseline; drop all-right and all-wrong groups."

    drop: str = param(
        "degenerate",
        label="Drop",
        choices=("degenerate", "all_wrong"),
        help="degenerate: all-right and all-wrong groups; all_wrong: the paper's ablation.",
    )
    threshold: float = param(0.5, label="Right above", help="A sample counts as right when its reward is above this.", advanced=True)


@STRATEGIES.register("reinforce_rej")
class ReinforceRej(FixedGroupStrategy):
    Config = ReinforceRejConfig
    name = "reinforce_rej"

    def shape(self, group: Group) -> None:
        right = [r > self.config.threshold for r in group.rewards]
        group.advantages = mean_baseline(group.rewards)
        if not any(right):
            group.rule = "all wrong"
        elif all(right) and self.config.drop == "degenerate":
            group.rule = "all right"
        group.kept = [group.rule is None] * len(group.rewards)
