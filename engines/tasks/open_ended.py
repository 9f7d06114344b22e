"""Open-ended prompts for the embedded SmolLM2: sentiment, format and length tasks.

Set ``open`` holds short chat prompts (``chat=True``) without a reference
answer. Each task names the reward spec it was written for in
``meta["reward"]`` (the set's default is ``sentiment``) and its family in
``meta["family"]``:

- ``sentiment``: neutral-to-gloomy topics where a positive-sentiment reward
  has something to push against;
- ``format``: a required shape that a regex reward checks (one word, a
  number, a list, all lowercase);
- ``length``: a target word count for the ``length:N`` reward;
- ``keywords``: words that must appear, for the ``keywords:a,b`` reward.
"""

from __future__ import annotations

from engines.task import Task
from engines.tasks import TASK_SETS, TaskSet

# (family, prompt, reward spec)
_PROMPTS: tuple[tuple[str, str, str], ...] = (
    ("sentiment", "Write one sentence about a rainy Monday morning.", "sentiment"),
    ("sentiment", "Describe your commute to work in two sentences.", "sentiment"),
    ("sentiment", "Write a short review of a hotel room that was too small.", "sentiment"),
    ("sentiment", "Tell me about the last day of summer holidays.", "sentiment"),
    ("sentiment", "Write a note to a neighbour about their loud music.", "sentiment"),
    ("sentiment", "Describe a long queue at the post office.", "sentiment"),
    ("sentiment", "Write a two-sentence story about a lost umbrella.", "sentiment"),
    ("sentiment", "Describe a city street in November.", "sentiment"),
    ("format", "Name one fruit. Answer with a single word.", r"regex:^\s*[A-Za-z]+\.?\s*$"),
    ("format", "How many legs does a spider have? Answer with a number only.", r"regex:^\s*\d+\s*$"),
    ("format", "List three colours as a comma-separated list, nothing else.", r"regex:^\s*\w+\s*,\s*\w+\s*,\s*\w+\s*$"),
    ("format", "Write a sentence about the sea in lowercase letters only.", r"regex:^[a-z\s,.'!?-]+$"),
    ("format", "Give a title for a story about a dragon. Reply with the title only.", r"regex:^[^\n]{1,60}$"),
    ("format", "Answer yes or no: is the sun a star?", r"regex:^\s*(yes|no|Yes|No)\b"),
    ("length", "Describe a cat in about ten words.", "length:10"),
    ("length", "Explain what a rainbow is in about twenty words.", "length:20"),
    ("length", "Tell a short story about a robot in about forty words.", "length:40"),
    ("length", "Describe your favourite meal in about fifteen words.", "length:15"),
    ("length", "Explain why the sky is blue in about thirty words.", "length:30"),
    ("keywords", "Write a sentence about a holiday that mentions the sun and the sea.", "keywords:sun,sea"),
    ("keywords", "Write two sentences about a garden, using the words rose and bee.", "keywords:rose,bee"),
    ("keywords", "Describe a kitchen, mentioning bread and coffee.", "keywords:bread,coffee"),
    ("keywords", "Write a short poem about winter that uses the words snow and light.", "keywords:snow,light"),
    ("keywords", "Describe a library using the words quiet and book.", "keywords:quiet,book"),
)


def _build() -> list[Task]:
    return [
        Task(
            prompt=prompt,
            chat=True,
            name=f"open:{i}",
            meta={"family": family, "reward": reward},
        )
        for i, (family, prompt, reward) in enumerate(_PROMPTS)
    ]


TASK_SETS.add(
    "open",
    TaskSet(
        name="open",
        description="Open-ended chat prompts for SmolLM2: sentiment, format, length and keyword tasks",
        build=_build,
        model="embedded:smollm2",
        reward="sentiment",
    ),
)
