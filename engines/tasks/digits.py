"""Targets for the embedded digits model: ``digits:K`` asks for a handwritten K.

The DDPM is unconditional, so the prompt is only a label for people; the
target lives in the reward, ``digit:K`` (``meta["reward"]``), which the
runner and the app take from the task. ``meta["modality"]`` marks the tasks
as image tasks.
"""

from __future__ import annotations

from engines.task import Task
from engines.tasks import TASK_SETS, TaskSet


def _build() -> list[Task]:
    return [
        Task(prompt=f"a handwritten {k}", name=f"digits:{k}", chat=False, meta={"reward": f"digit:{k}", "modality": "image"})
        for k in range(10)
    ]


TASK_SETS.add(
    "digits",
    TaskSet(
        name="digits",
        description="Ask the embedded 8x8 digits DDPM for digit K (reward digit:K)",
        build=_build,
        model="embedded:digits",
        reward="digit:0",
    ),
)
