"""One run, as the CLI, the app and the benchmarks ask for it.

A :class:`RunRequest` names everything a run needs by spec (model, reward,
sampler and its parameters, the task, seed, budget) and validates it on
construction, before any model is loaded, so bad input fails fast with one
line. :func:`stream` loads what the request names (models are cached per
process) and yields the sampler's events; :func:`execute` collects them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.errors import ConfigError
from engines.task import Task
from engines.trace import Budget, Event, Trace


@dataclass(frozen=True)
class RunRequest:
    model: str
    reward: str
    sampler: str
    params: dict[str, Any]
    task: Task
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    device: str = "auto"
    dtype: str = "fp32"

    @classmethod
    def build(
        cls,
        *,
        model: str | None = None,
        reward: str | None = None,
        sampler: str = "best_of_n",
        params: dict[str, Any] | None = None,
        params_are_strings: bool = False,
        prompt: str | None = None,
        task_ref: str | None = None,
        task: Task | None = None,
        answer: str | None = None,
        chat: bool = True,
        seed: int = 0,
        budget: dict[str, Any] | None = None,
        device: str = "auto",
        dtype: str = "fp32",
    ) -> RunRequest:
        """Resolve defaults (a task set's model and reward) and validate everything cheap to check."""
        from engines.samplers import SAMPLERS
        from engines.tasks import TASK_SETS, get_task

        set_model = set_reward = None
        if task is None and task_ref is not None:
            task = get_task(task_ref)
            task_set = TASK_SETS.get(task_ref.rsplit(":", 1)[0])
            set_model, set_reward = task_set.model, task.meta.get("reward", task_set.reward)
        if task is None:
            if prompt is None:
                raise ConfigError("give a prompt or a task")
            task = Task(prompt=prompt, chat=chat)
        if answer is not None:
            task = Task(**{**task.as_dict(), "answer": answer})
        if task.meta.get("modality", "text") == "text" and not task.prompt.strip():
            raise ConfigError("the prompt is empty")
        cls_ = SAMPLERS.get(sampler)
        params = dict(params or {})
        config = cls_.Config.from_strings(params) if params_are_strings else cls_.Config.from_dict(params)
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        budget_values = {}
        for key, value in (budget or {}).items():
            try:
                budget_values[key] = float(value) if key == "wall_seconds" else int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"budget {key} must be a number, got {value!r}") from None
        unknown = set(budget_values) - set(Budget.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown budget counter(s): {', '.join(sorted(unknown))}")
        return cls(
            model=(model or set_model or "embedded:smollm2").strip(),
            reward=(reward or set_reward or "sentiment").strip(),
            sampler=sampler,
            params=config.as_dict(),
            task=task,
            seed=seed,
            budget=Budget(**budget_values),
            device=device,
            dtype=dtype,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reward": self.reward,
            "sampler": self.sampler,
            "params": dict(self.params),
            "task": self.task.as_dict(),
            "seed": self.seed,
            "budget": self.budget.as_dict(),
        }

    def summary(self, trace: Trace) -> dict[str, Any]:
        """The JSON result of a finished run."""
        done = trace.done
        return {
            **self.as_dict(),
            "candidates": [
                {"id": row["id"], "text": row["text"], "reward": row["reward"], "picked": row["picked"], "image": row["image"]}
                for row in trace.reward_table()
            ],
            "picks": list(done.picks) if done else [],
            "status": done.status if done else "error",
            "metrics": dict(done.metrics) if done else {},
            "cost": dict(trace.cost),
        }


def load_parts(request: RunRequest) -> tuple[Any, Any, Any]:
    """(model, reward, sampler) for a request; the model is loaded once per process."""
    from engines.models import load_model
    from engines.rewards import RewardEnv, build_reward
    from engines.samplers import build_sampler

    model = load_model(request.model, device=request.device, dtype=request.dtype)
    reward = build_reward(request.reward, RewardEnv(model=model, load_model=load_model))
    sampler = build_sampler(request.sampler, request.params)
    return model, reward, sampler


def stream(request: RunRequest, cancel: threading.Event | None = None) -> Iterator[Event]:
    model, reward, sampler = load_parts(request)
    rng = torch.Generator().manual_seed(request.seed)
    return sampler.run(request.task, model, reward, budget=request.budget, rng=rng, cancel=cancel)


def execute(
    request: RunRequest,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
) -> Trace:
    trace = Trace()
    for event in stream(request, cancel):
        trace.append(event)
        if on_event is not None:
            on_event(event)
    return trace
