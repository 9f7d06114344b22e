"""Open-ended prompts for the embedded SmolLM2: sentiment, format and length tasks.

SmolLM2-135M cannot do arithmetic or judge reliably, so its demos pair these
prompts with programmatic rewards (VADER sentiment, regex/format, length,
keywords); each task names the reward that fits it in ``meta["reward"]``.
"""

from __future__ import annotations

from engines.task import Task
from engines.tasks import TASK_SETS, TaskSet

_PROMPTS = [
    ("Write one sentence about a rainy Monday morning.", "sentiment"),
    ("Describe your favourite food in two sentences.", "sentiment"),
    ("Write a short review of a movie you watched recently.", "sentiment"),
    ("Tell me about a day at the beach.", "sentiment"),
    ("Write a one-line motto for a bakery.", "sentiment"),
    ("Give a short piece of advice to a new student.", "sentiment"),
    ("Write a haiku about autumn leaves.", "length"),
    ("List three fruits, separated by commas.", r"regex:^\s*\w+\s*,\s*\w+\s*,\s*\w+\s*\.?\s*$"),
    ("Answer with a single word: what colour is the sky on a clear day?", r"regex:^\W*\w+\W*$"),
    ("Write a sentence that mentions the sun and the sea.", "keywords:sun,sea"),
    ("Write a friendly greeting for a customer email.", "sentiment"),
    ("Describe a cat in exactly one sentence.", "length"),
]


def _build() -> list[Task]:
    return [
        Task(prompt=prompt, name=f"open:{i}", meta={"reward": reward})
        for i, (prompt, reward) in enumerate(_PROMPTS)
    ]


TASK_SETS.add(
    "open",
    TaskSet(
        name="open",
        description="Open-ended prompts for SmolLM2 with programmatic rewards",
        build=_build,
        model="embedded:smollm2",
        reward="sentiment",
    ),
)
