"""Polarity objectives: ``psr`` (positive only), ``nsr`` (negative only), ``w_reinforce``.

Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM
Reasoning". With rewards mapped to +1 (right: reward above ``threshold``) and -1 (wrong),
the RLVR objective splits into positive-sample reinforcement (PSR: raise the likelihood of
right samples) and negative-sample reinforcement (NSR: lower that of wrong ones). Following
the paper's Eq. (3)-(5) and its public code (TianHongZXY/RLVR-Decomposed), per sample
A_i = +``positive_weight`` when right and -``negative_weight`` when wrong, no baseline,
every sample in the batch (a zero-weight sample still counts in the average):

- ``psr``: positive_weight 1, negative_weight 0;
- ``nsr``: positive_weight 0, negative_weight 1;
- ``w_reinforce``: positive_weight lambda = 0.1, negative_weight 1 (the paper's choice).

Expected update, binary rewards, ``sample_sum``: E[g] = (1/B) sum_j (w+ + w-) grad p_j,
since sum_{x right} p grad log p = grad p and sum_{x wrong} p grad log p = -grad p. The
objectives differ in variance and in *which* samples move the policy, not in the mean
direction on a tabular policy; the tests check the scale (w+ + w-).
"""

from __future__ import annotations

from engines.config import param
from engines.training import STRATEGIES
from engines.training.base import FixedGroupStrategy, Group, StrategyConfig


class PolarityConfig(StrategyConfig):
    label = "W-REINFORCE"
    paper = "Zhu et al. 2025, The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning"
    summary = "Right samples +lambda, wrong samples -1; no baseline."

    positive_weight: float = param(0.1, label="Positive weight (lambda)", min=0.0, max=10.0, step=0.05)
    negative_weight: float = param(1.0, label="Negative weight", min=0.0, max=10.0, step=0.05)
    threshold: float = param(0.5, label="Right above", help="A sample counts as right when its reward is above this.", advanced=True)


class PSRConfig(PolarityConfig):
    label = "PSR (positive only)"
    summary = "Raise the likelihood of right samples only."

    positive_weight: float = param(1.0, label="Positive weight", min=0.0, max=10.0, step=0.05)
    negative_weight: float = param(0.0, label="Negative weight", min=0.0, max=10.0, step=0.05)


class NSRConfig(PolarityConfig):
    label = "NSR (negative only)"
    summary = "Lower the likelihood of wrong samples only."

    positive_weight: float = param(0.0, label="Positive weight", min=0.0, max=10.0, step=0.05)
    negative_weight: float = param(1.0, label="Negative weight", min=0.0, max=10.0, step=0.05)


@STRATEGIES.register("w_reinforce")
class WeightedReinforce(FixedGroupStrategy):
    Config = PolarityConfig
    name = "w_reinforce"

    def shape(self, group: Group) -> None:
        cfg = self.config
        group.advantages = [
            cfg.positive_weight if r > cfg.threshold else -cfg.negative_weight for r in group.rewards
        ]


@STRATEGIES.register("psr")
class PositiveSampleReinforcement(WeightedReinforce):
    Config = PSRConfig
    name = "psr"


@STRATEGIES.register("nsr")
class NegativeSampleReinforcement(WeightedReinforce):
    Config = NSRConfig
    name = "nsr"
