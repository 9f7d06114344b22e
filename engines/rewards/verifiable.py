"""Verifiable rewards: numeric answer match and regex/format checks.

``extract_answer`` reads the final answer from the forms models write:
``#### 42`` (GSM8K), ``\\boxed{42}`` (MATH), ``the answer is 42``, a last
``= 42``, and finally the last number in the text. Numbers are compared
exactly as fractions after removing thousands separators, ``$`` and ``%``,
so ``1,000``, ``1000.0`` and ``$1000`` agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from engines.errors import ConfigError
from engines.rewards import REWARDS, RewardEnv, RewardFactory
from engines.rewards.base import Reward
from engines.task import Task

_NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|-?\$?\s*\.\d+"
_PATTERNS = [
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}"),
    re.compile(r"answer\s+is\s*:?\s*(" + _NUMBER + ")", re.IGNORECASE),
]
_EQUALS = re.compile(r"=\s*(" + _NUMBER + ")")
_ANY = re.compile(_NUMBER)


def normalise_number(text: str) -> Fraction | None:
    cleaned = text.replace(",", "").replace("$", "").replace("%", "").replace(" ", "").rstrip(".")
    if not cleaned or cleaned in ("-", "."):
        return None
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str) -> str | None:
    """The final answer written in ``text`` as a canonical number string, or None."""
    for pattern in _PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return _canonical(matches[-1])
    matches = _EQUALS.findall(text)
    if matches:
        return _canonical(matches[-1])
    matches = _ANY.findall(text)
    return _canonical(matches[-1]) if matches else None


def _canonical(raw: str) -> str | None:
    value = normalise_number(raw)
    if value is None:
        return None
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def answers_match(candidate: str | None, reference: str | None) -> bool:
    if candidate is None or reference is None:
        return False
    a, b = normalise_number(candidate), normalise_number(reference)
    return a is not None and a == b


class MathAnswer(Reward):
    """1.0 when the candidate's final answer equals the task's reference answer, else 0.0."""

    name = "math"
    requires_answer = True

    def score(self, task: Task, candidates: Sequence[str], *, usage=None) -> list[float]:
        reference = extract_answer(task.answer or "") or task.answer
        return [1.0 if answers_match(extract_answer(c), reference) else 0.0 for c in candidates]


class RegexMatch(Reward):
    """1.0 when the (stripped) candidate matches the pattern (``re.search``), else 0.0."""

    def __init__(self, pattern: str) -> None:
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise ConfigError(f"invalid regex {pattern!r}: {exc}") from None
        self.name = f"regex:{pattern}"

    def score(self, task: Task, candidates: Sequence[str], *, usage=None) -> list[float]:
        return [1.0 if self.pattern.search(c.strip()) else 0.0 for c in candidates]


REWARDS.add(
    "math",
    RewardFactory(
        name="math",
        kind="outcome",
        modality="text",
        help="1 if the final answer (#### N, \\boxed{N}, 'the answer is N', '= N') equals the reference",
        build=lambda arg, env: MathAnswer(),
        needs_answer=True,
    ),
)


def _regex(arg: str | None, env: RewardEnv) -> RegexMatch:
    return RegexMatch(arg or "")


REWARDS.add(
    "regex",
    RewardFactory(
        name="regex",
        kind="outcome",
        modality="text",
        help="1 if the candidate matches the regular expression",
        build=_regex,
        arg="PATTERN",
        arg_required=True,
    ),
)
