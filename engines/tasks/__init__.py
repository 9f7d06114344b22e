"""Built-in task sets, picked by ``SET:INDEX`` (``arith:3``, ``open:0``).

A task set is a name, a description and a function returning its tasks in a
fixed order (seeded where generated), registered in :data:`TASK_SETS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from engines.errors import ConfigError
from engines.registry import Registry
from engines.task import Task


@dataclass(frozen=True)
class TaskSet:
    name: str
    description: str
    build: Callable[[], list[Task]]
    #: the model this set is meant for (the app preselects it)
    model: str = "embedded:smollm2"
    #: the reward that fits it
    reward: str = "sentiment"

    def tasks(self) -> list[Task]:
        return _tasks(self.name)


TASK_SETS: Registry[TaskSet] = Registry("task set")


@cache
def _tasks(name: str) -> list[Task]:
    return TASK_SETS.get(name).build()


def get_task(ref: str) -> Task:
    """``SET:INDEX`` -> the task."""
    if ":" not in ref:
        raise ConfigError(f"task {ref!r} must look like SET:INDEX, e.g. open:0")
    name, index = ref.rsplit(":", 1)
    tasks = TASK_SETS.get(name).tasks()
    try:
        i = int(index)
    except ValueError:
        raise ConfigError(f"task index {index!r} is not an integer") from None
    if not 0 <= i < len(tasks):
        raise ConfigError(f"task set {name!r} has {len(tasks)} tasks; index {i} is out of range")
    return tasks[i]


def _load_all() -> None:
    from engines.tasks import arith, digits, open_ended  # noqa: F401


_load_all()
