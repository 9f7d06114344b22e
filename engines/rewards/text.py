"""Programmatic text rewards: length, keyword inclusion, VADER sentiment.

- ``length``: the word count (longer is better); ``length:N``: -|words - N|,
  best at exactly N words.
- ``keywords:a,b,c``: the share of the keywords the candidate contains (whole
  words, case-insensitive).
- ``sentiment``: VADER's compound score in [-1, 1] (Hutto & Gilbert, 2014),
  from the ``vaderSentiment`` package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

from engines.errors import ConfigError
from engines.rewards import REWARDS, RewardEnv, RewardFactory
from engines.rewards.base import Reward
from engines.task import Task

_WORD = re.compile(r"\b[\w'-]+\b")


class Length(Reward):
    def __init__(self, target: int | None = None) -> None:
        if target is not None and target < 1:
            raise ConfigError(f"length target must be >= 1, got {target}")
        self.target = target
        self.name = "length" if target is None else f"length:{target}"

    def score(self, task: Task, candidates: Sequence[str], *, usage=None) -> list[float]:
        counts = [len(_WORD.findall(c)) for c in candidates]
        if self.target is None:
            return [float(c) for c in counts]
        return [-float(abs(c - self.target)) for c in counts]


class Keywords(Reward):
    def __init__(self, words: Sequence[str]) -> None:
        words = [w.strip().lower() for w in words if w.strip()]
        if not words:
            raise ConfigError("keywords needs at least one word: keywords:sun,sea")
        self.words = words
        self.patterns = [re.compile(r"\b" + re.escape(w) + r"\b", re.IGNORECASE) for w in words]
        self.name = "keywords:" + ",".join(words)

    def score(self, task: Task, candidates: Sequence[str], *, usage=None) -> list[float]:
        return [sum(1 for p in self.patterns if p.search(c)) / len(self.patterns) for c in candidates]


@cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class Sentiment(Reward):
    name = "sentiment"

    def score(self, task: Task, candidates: Sequence[str], *, usage=None) -> list[float]:
        analyser = _vader()
        return [float(analyser.polarity_scores(c)["compound"]) for c in candidates]


def _length(arg: str | None, env: RewardEnv) -> Length:
    if arg is None:
        return Length()
    try:
        return Length(int(arg))
    except ValueError:
        raise ConfigError(f"length target must be an integer, got {arg!r}") from None


REWARDS.add(
    "length",
    RewardFactory(
        name="length",
        kind="outcome",
        modality="text",
        help="word count; length:N rewards being close to N words",
        build=_length,
        arg="N",
    ),
)
REWARDS.add(
    "keywords",
    RewardFactory(
        name="keywords",
        kind="outcome",
        modality="text",
        help="share of the comma-separated keywords present",
        build=lambda arg, env: Keywords((arg or "").split(",")),
        arg="WORD,WORD,...",
        arg_required=True,
    ),
)
REWARDS.add(
    "sentiment",
    RewardFactory(
        name="sentiment",
        kind="outcome",
        modality="text",
        help="VADER compound sentiment in [-1, 1] (positive is higher)",
        build=lambda arg, env: Sentiment(),
    ),
)
