"""``rloo``: REINFORCE with the leave-one-out baseline.

Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al.
2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs" (RLOO). A_i = r_i - mean_{j != i} r_j (as TRL's ``RLOOTrainer``). The
baseline of sample i does not depend on sample i, so the estimate is unbiased::

    E[(1/(B G)) sum_i A_i grad log p(x_i)] = (1/B) sum_j grad E_{x ~ p(.|prompt_j)}[r(x)]

(``sample_sum`` aggregation). Needs G >= 2.
"""

from __future__ import annotations

from engines.errors import ConfigError
from engines.training import STRATEGIES
from engines.training.base import FixedGroupStrategy, Group, StrategyConfig


class RLOOConfig(StrategyConfig):
    label = "RLOO"
    paper = "Ahmadian et al. 2024, Back to Basics (RLOO); Kool et al. 2019"
    summary = "Leave-one-out baseline: unbiased."

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise ConfigError("rloo needs group_size >= 2 (the baseline is the other samples' mean)")


@STRATEGIES.register("rloo")
class RLOO(FixedGroupStrategy):
    Config = RLOOConfig
    name = "rloo"

    def shape(self, group: Group) -> None:
        total, n = sum(group.rewards), len(group.rewards)
        group.advantages = [r - (total - r) / (n - 1) for r in group.rewards]
