"""``lspo``: length-aware dynamic sampling — train on the prompts with the shortest and longest answers.

Chen, Koenig & Dilkina 2025, "LSPO: Length-aware Dynamic Sampling for Policy Optimization
in LLM Reasoning" (arXiv 2510.01459). LSPO is a meta-algorithm on top of DAPO's dynamic
sampling (``dynamic_sampling``): after the accuracy filter (drop groups whose rewards are
all equal) it filters the surviving prompts by their *mean response length*

    L(q) = (1/G) sum_i |o_i|            (tokens of each completion)

with thresholds recomputed on every batch from the quantile function of L over the
batch's prompts, Q(a) = inf{t : F(t) >= a} (the inverted empirical CDF). A prompt is kept
when its length is at either extreme::

    L(q) <= Q(low)     or     Q(high) <= L(q) <= Q(max)

(``low`` < ``high`` <= ``max``; the ``max`` cap leaves out the very longest prompts, whose
answers run into the length limit). Drop rules: ``no reward variance`` (accuracy
filter), ``length in the middle band`` (Q(low) < L < Q(high)), ``length above the max
quantile`` (L > Q(max)), and ``batch full`` for the surplus of the last generation batch.

What we followed: the abstract and the method as the paper's public summaries state it
(mean length per prompt; thresholds L_low, L_high and L_max over the batch, recomputed
each step; applied after the accuracy filter; keep the shortest and the longest). The
quantiles are taken over the groups of each generation batch that pass the accuracy
filter. The default quantiles 0.3 / 0.65 / 0.95 are our reading of the paper's setting and
could not be checked against its text through the search tool: treat them as parameters.
Advantages are GRPO's (group mean / std), as in ``dynamic_sampling``; every drawn sample
counts in the cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engines.config import param
from engines.errors import ConfigError
from engines.training import STRATEGIES
from engines.training.base import Group
from engines.training.strategies.dynamic_sampling import DynamicSampling, DynamicSamplingConfig


class LSPOConfig(DynamicSamplingConfig):
    label = "LSPO (length-aware)"
    paper = "Chen, Koenig & Dilkina 2025, LSPO: Length-aware Dynamic Sampling (arXiv 2510.01459)"
    summary = "Dynamic sampling that keeps the prompts with the shortest and the longest mean answers."

    low_quantile: float = param(0.3, label="Short band: up to quantile", min=0.0, max=1.0, step=0.05,
                                help="Keep prompts whose mean length is at most this quantile of the batch.")
    high_quantile: float = param(0.65, label="Long band: from quantile", min=0.0, max=1.0, step=0.05,
                                 help="Keep prompts whose mean length is at least this quantile...")
    max_quantile: float = param(0.95, label="Long band: up to quantile", min=0.0, max=1.0, step=0.05,
                                help="...and at most this one (leaves out answers cut by the length limit).")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.low_quantile < self.high_quantile <= self.max_quantile <= 1:
            raise ConfigError("lspo needs 0 < low_quantile < high_quantile <= max_quantile <= 1")


def quantile(values: Sequence[float], level: float) -> float:
    """Q(level) = inf{t : F(t) >= level} of the empirical distribution of ``values``."""
    ordered = sorted(values)
    rank = max(math.ceil(level * len(ordered)), 1)
    return ordered[rank - 1]


def mean_length(group: Group) -> float:
    return sum(r.tokens for r in group.rollouts) / len(group.rollouts)


@STRATEGIES.register("lspo")
class LSPO(DynamicSampling):
    Config = LSPOConfig
    name = "lspo"

    def filter_groups(self, groups: list[Group]) -> None:
        super().filter_groups(groups)  # the accuracy filter first
        cfg = self.config
        survivors = [g for g in groups if g.rule is None]
        if not survivors:
            return
        lengths = [mean_length(g) for g in survivors]
        low, high, top = (quantile(lengths, q) for q in (cfg.low_quantile, cfg.high_quantile, cfg.max_quantile))
        for group, length in zip(survivors, lengths, strict=True):
            group.meta.update(mean_length=length, length_thresholds=[low, high, top])
            if length > top:
                group.rule = "length above the max quantile"
            elif low < length < high:
                group.rule = "length in the middle band"
