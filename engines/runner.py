"""One run, as the CLI, the app and the benchmarks ask for it.

A :class:`RunRequest` names everything a run needs by spec (model, reward,
sampler and its parameters, the task, seed, budget) and validates it on
construction, before any model is loaded, so bad input fails fast with one
line. :func:`stream` loads what the request names (models are cached per
process) and yields the sampler's events; :func:`execute` collects them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.errors import ConfigError
from engines.models.watch import Watch, watching
from engines.task import Task
from engines.trace import Budget, Cost, CostEvent, Event, Trace


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
        size: Any = None,
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
        """Resolve defaults (a task set's model and reward) and validate everything cheap to check.

        ``size`` (the CLI's ``--n``) sets the sampler's declared size parameter, whatever its name
        (``Config.size_field``: n, particles, beams, simulations, rollouts).
        """
        from engines.samplers import SAMPLERS
        from engines.tasks import TASK_SETS, get_task

        for name, value in (("model", model), ("reward", reward), ("sampler", sampler), ("prompt", prompt),
                            ("task", task_ref), ("answer", answer)):
            _check_text(name, value)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}"[:200])
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"sampler parameters must be a mapping of names to values, got {type(params).__name__}")
        if budget is not None and not isinstance(budget, dict):
            raise ConfigError(f"the budget must be a mapping of counters to caps, got {type(budget).__name__}")
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
        if size is not None:
            field_name = cls_.Config.size_field
            if field_name is None:
                raise ConfigError(f"sampler {sampler!r} has no size parameter; set its parameters by name")
            if field_name in params and str(params[field_name]).strip() != str(size).strip():
                raise ConfigError(f"the size is given twice: {field_name}={params[field_name]!r} and n={size!r}"[:200])
            params[field_name] = str(size) if params_are_strings else size
        config = cls_.Config.from_strings(params) if params_are_strings else cls_.Config.from_dict(params)
        budget_values = {}
        for key, value in (budget or {}).items():
            try:
                budget_values[key] = float(value) if key == "wall_seconds" else int(value)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"budget {key} must be a number, got {value!r}"[:200]) from None
            if not math.isfinite(budget_values[key]) or budget_values[key] < 0:
                raise ConfigError(f"budget {key} must be a finite number >= 0, got {value!r}"[:200])
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


def check_context(model: Any, task: Task) -> None:
    """A prompt longer than the model's context is one clear error, before any sampling."""
    limit = getattr(model, "context_length", None)
    if not limit or getattr(model, "modality", "text") != "text" or task.meta.get("modality", "text") != "text":
        return
    if len(task.prompt) > 64 * limit:  # no tokenizer makes fewer tokens than this: skip the tokenizing
        raise ConfigError(f"the prompt is {len(task.prompt):,} characters, far beyond the model's context of {limit:,} tokens")
    tokens = len(model.encode_task(task))
    if tokens >= limit:
        raise ConfigError(f"the prompt is {tokens:,} tokens; the model's context is {limit:,} tokens (prompt and reply together)")


def stream(
    request: RunRequest,
    cancel: threading.Event | None = None,
    progress: Callable[[Cost], None] | None = None,
) -> Iterator[Event]:
    """The run's events. ``cancel`` reaches the sampler (checked before each model or reward call) and,
    through :mod:`engines.models.watch`, the models' inner loops (checked between decode steps);
    ``progress`` gets the run's live cost after every decode step of a long model call."""
    model, reward, sampler = load_parts(request)
    check_context(model, request.task)
    rng = torch.Generator().manual_seed(request.seed)
    events = sampler.run(request.task, model, reward, budget=request.budget, rng=rng, cancel=cancel)
    return _watched(events, Watch(cancel=cancel, progress=progress))


def _watched(events: Iterator[Event], watch: Watch) -> Iterator[Event]:
    """``events`` with ``watch`` installed while the sampler works (each ``next``), not while the consumer does."""
    while True:
        with watching(watch):
            event = next(events, None)
        if event is None:
            return
        yield event


def live(
    request: RunRequest,
    cancel: threading.Event,
    *,
    progress_every: float = 0.25,
    poll: float = 0.5,
) -> Iterator[Event | None]:
    """:func:`stream` on a worker thread, for a viewer that must stay responsive while a model call runs.

    Yields the run's events as they come; during a long model call, a :class:`CostEvent` with the live
    counters at most every ``progress_every`` seconds (tokens generated so far); and ``None`` when
    nothing came for ``poll`` seconds (so the viewer can refresh its clock). Errors of the run
    (loading, bad input) are raised here. Closing this generator early (the viewer went away) sets
    ``cancel``, so the worker stops within one decode step instead of running on unseen.
    """
    import queue
    import time

    items: queue.Queue = queue.Queue()
    last = [0.0]

    def report(cost: Cost) -> None:
        now = time.monotonic()
        if now - last[0] >= progress_every:
            last[0] = now
            items.put(CostEvent(cost=cost.as_dict()))

    def work() -> None:
        try:
            for event in stream(request, cancel, report):
                items.put(event)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
            items.put(_Failure(exc))
        items.put(_END)

    worker = threading.Thread(target=work, name="samplescope-run", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = items.get(timeout=poll)
            except queue.Empty:
                yield None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        if worker.is_alive():
            cancel.set()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


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


#: the longest text a request takes (1 MB prompts are possible through --prompt-file; the model's context decides)
MAX_TEXT_CHARS = 4_000_000


def _check_text(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS or (name != "prompt" and name != "answer" and len(value) > 4096):
        raise ConfigError(f"{name} is {len(value):,} characters: too long")
    if "\x00" in value:
        raise ConfigError(f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{name} is not valid UTF-8 text (undecodable at character {exc.start})") from None
