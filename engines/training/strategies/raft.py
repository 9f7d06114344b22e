"""``raft``: rejection-sampling fine-tuning on the positively rewarded samples.

Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model
Alignment"; Xiong et al. 2025, "A Minimalist Approach to LLM Reasoning: from Rejection
Sampling to Reinforce" (RAFT as the baseline of Reinforce-Rej). Following the latter's
public code (RLHFlow/Minimal-RL): draw G samples per prompt, keep those with reward above
``threshold`` (the verifier's 1), and take an SFT step on them (negative log-likelihood,
mean over the kept samples' tokens). Samples at or below the threshold are dropped with
rule ``reward <= threshold``; a group with none kept is dropped as a whole.

Expected update for one prompt with success probability p (``sample_sum``, binary
rewards): with k ~ Binom(G, p) kept, E[g] = P(k > 0) * grad p / p = (1 - (1-p)^G) grad log p,
the gradient of log P(right) scaled by the chance the group has a right answer.
"""

from __future__ import annotations

from engines.config import param
from engines.training import STRATEGIES
from engines.training.base import FixedGroupStrategy, Group, StrategyConfig


class RAFTConfig(StrategyConfig):
    label = "RAFT"
    paper = "Dong et al. 2023 (RAFT); Xiong et al. 2025, A Minimalist Approach to LLM Reasoning"
    summary = "Keep the positively rewarded samples; SFT on them."

    threshold: float = param(0.5, label="Keep above", help="Samples with reward above this are kept.")


@STRATEGIES.register("raft")
class RAFT(FixedGroupStrategy):
    Config = RAFTConfig
    name = "raft"
    objective = "sft"

    def shape(self, group: Group) -> None:
        group.kept = [r > self.config.threshold for r in group.rewards]
        group.advantages = [1.0 if keep else 0.0 for keep in group.kept]
        if not any(group.kept):
            group.rule = f"no reward above {self.config.threshold:g}"
