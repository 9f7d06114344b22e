"""Prompt sets for training and held-out evaluation.

Specs:
- ``arith-train`` / ``arith-train:LEVEL`` / ``arith-train:LEVEL:N``: N (default 2000) fresh
  arith problems from a fixed seed, none of them in a built-in task set;
- ``arith-fresh[:LEVEL[:N]]``: N (default 200) further fresh problems, disjoint from
  ``arith-train`` and from the task sets: the held-out set accuracy is measured on;
- a registered task set name (``arith``, ``arith-easy``, ``open``...): its tasks;
- a ``.jsonl`` file with one ``{"prompt": ..., "answer": ...}`` object per line (the user's own).
"""

from __future__ import annotations

import json
from pathlib import Path

from engines.errors import ConfigError
from engines.task import Task

TRAIN_SEED, FRESH_SEED = 7001, 7002


def _arith(spec: str, seed: int, default_n: int, exclude_train: bool) -> list[Task]:
    from engines.tasks.arith import LEVELS, generate_problems, reserved_expressions

    parts = spec.split(":")[1:]
    level = parts[0] if parts and parts[0] else "medium"
    if level not in LEVELS:
        raise ConfigError(f"unknown arith level {level!r}; known: {', '.join(LEVELS)}")
    try:
        n = int(parts[1]) if len(parts) > 1 else default_n
    except ValueError:
        raise ConfigError(f"prompt count in {spec!r} must be an integer") from None
    if n < 1:
        raise ConfigError(f"prompt set {spec!r} is empty")
    exclude = set(reserved_expressions())
    if exclude_train:
        exclude |= {p.expression for p in generate_problems(TRAIN_SEED, level, 2000, exclude=frozenset(exclude))}
    problems = generate_problems(seed, level, n, exclude=frozenset(exclude))
    return [p.task(name=f"{spec}:{i}") for i, p in enumerate(problems)]


def load_prompts(spec: str) -> list[Task]:
    """The tasks a prompt-set spec names; a one-line error when there are none."""
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError("no prompt set given")
    if spec.startswith("arith-train"):
        tasks = _arith(spec, TRAIN_SEED, 2000, exclude_train=False)
    elif spec.startswith("arith-fresh"):
        tasks = _arith(spec, FRESH_SEED, 200, exclude_train=True)
    elif spec.endswith(".jsonl"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"prompt file {spec!r} does not exist")
        tasks = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                tasks.append(Task(prompt=row["prompt"], answer=row.get("answer"), chat=bool(row.get("chat", False))))
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{spec}:{number}: each line must be a JSON object with a 'prompt'") from None
    else:
        from engines.tasks import TASK_SETS

        tasks = TASK_SETS.get(spec).tasks()
    if not tasks:
        raise ConfigError(f"prompt set {spec!r} is empty")
    return list(tasks)
