"""Rewards over toy-model texts, for sampler tests."""

from __future__ import annotations

from engines.rewards.base import PairwiseReward, Reward


class CountA(Reward):
    """r(x) = number of 'a' plus a tenth of the number of 'b' (a graded, tie-prone reward)."""

    name = "count_a"

    def score(self, task, candidates, *, usage=None):
        return [x.count("a") + 0.1 * x.count("b") for x in candidates]


class DigitValue(Reward):
    """r(x) = the candidate's value as a number, / 100 (0 when empty)."""

    name = "digit_value"

    def score(self, task, candidates, *, usage=None):
        return [int(x) / 100 if x else 0.0 for x in candidates]


class ExactComparator(PairwiseReward):
    """P(a beats b) = 1 if r(a) > r(b), 0 if r(a) < r(b), 0.5 on ties."""

    name = "exact"

    def __init__(self, reward: Reward) -> None:
        self.reward = reward

    def compare(self, task, a, b, *, usage=None):
        ra, rb = self.reward.score(task, [a, b])
        return 1.0 if ra > rb else 0.0 if ra < rb else 0.5
