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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engines.errors import ConfigError
from engines.models.watch import Watch, watching
from engines.task import Task
from engines.trace import Budget, Cost, CostEvent, Event, Trace


@dataclass(frozen=True)
class RunRequest:
    """Everything one run needs, by spec. Every construction is checked (``__post_init__``), and
    ``params`` become the sampler's full config (defaults filled in), so a request built by
    hand and one from :meth:`build` run and store the same."""

    model: str
    reward: str
    sampler: str
    params: dict[str, Any]
    task: Task
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    device: str = "auto"
    dtype: str = "fp32"
    #: where ``learned:NAME`` rewards live (the caller's data folder; not part of the run's identity)
    rewards_folder: str | None = None

    def __post_init__(self) -> None:
        from engines.samplers import SAMPLERS

        for name in ("model", "reward", "sampler", "device", "dtype"):
            value = getattr(self, name)
            _check_text(name, value)
            if value is None or not value.strip():
                raise ConfigError(f"the run's {name} is empty")
        if not isinstance(self.task, Task):
            raise ConfigError(f"the task must be a Task, got {type(self.task).__name__}")
        _check_text("prompt", self.task.prompt)
        _check_text("answer", self.task.answer)
        if self.task.meta.get("modality", "text") == "text" and not self.task.prompt.strip():
            raise ConfigError("the prompt is empty")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}"[:200])
        if not isinstance(self.params, dict):
            raise ConfigError(f"sampler parameters must be a mapping of names to values, got {type(self.params).__name__}")
        if self.rewards_folder is not None and not isinstance(self.rewards_folder, str):
            raise ConfigError(f"the rewards folder must be a path as text, got {type(self.rewards_folder).__name__}")
        if not isinstance(self.budget, Budget):
            raise ConfigError(f"the budget must be a Budget, got {type(self.budget).__name__}")
        config = SAMPLERS.get(self.sampler).Config.from_dict(self.params)
        object.__setattr__(self, "params", config.as_dict())

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
        rewards_folder: str | Path | None = None,
    ) -> RunRequest:
        """Resolve defaults (a task set's model and reward) and turn user input into a request.

        ``size`` (the CLI's ``--n``) sets the sampler's declared size parameter, whatever its name
        (``Config.with_size``: n, particles, beams, simulations, rollouts). ``budget`` maps cost
        counters to caps as the CLI's ``--budget`` and the API give them (:func:`parse_budget`).
        The request checks itself on construction.
        """
        from engines.samplers import SAMPLERS
        from engines.tasks import TASK_SETS, get_task

        for name, value in (("model", model), ("reward", reward), ("sampler", sampler), ("prompt", prompt),
                            ("task", task_ref), ("answer", answer)):
            _check_text(name, value)
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"sampler parameters must be a mapping of names to values, got {type(params).__name__}")
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
        config_cls = SAMPLERS.get(sampler).Config
        if size is not None and params_are_strings:
            size = str(size)
        params = config_cls.with_size(dict(params or {}), size, sampler=sampler)
        config = config_cls.from_strings(params) if params_are_strings else config_cls.from_dict(params)
        return cls(
            model=(model or set_model or "embedded:smollm2").strip(),
            reward=(reward or set_reward or "sentiment").strip(),
            sampler=sampler,
            params=config.as_dict(),
            task=task,
            seed=seed,
            budget=parse_budget(budget),
            device=device,
            dtype=dtype,
            rewards_folder=None if rewards_folder is None else str(rewards_folder),
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
    folder = None if request.rewards_folder is None else Path(request.rewards_folder)
    reward = build_reward(request.reward, RewardEnv(model=model, load_model=load_model, rewards_folder=folder))
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
    return stream_parts(request, *load_parts(request), cancel=cancel, progress=progress)


def stream_parts(request: RunRequest, model: Any, reward: Any, sampler: Any,
                 cancel: threading.Event | None = None,
                 progress: Callable[[Cost], None] | None = None) -> Iterator[Event]:
    """The run of ``request`` with its parts already loaded (a sweep keeps the steering reward to judge
    the pick): the context check, then the sampler seeded with the request's seed. The one run path.

    ``cancel`` reaches the sampler (checked before each model or reward call) and, through
    :mod:`engines.models.watch`, the models' inner loops (checked between decode steps); ``progress``
    gets the run's live cost after every decode step of a long model call."""
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
    import time

    last = [0.0]

    def events(put: Callable[[Any], None]) -> Iterator[Event]:
        def report(cost: Cost) -> None:
            now = time.monotonic()
            if now - last[0] >= progress_every:
                last[0] = now
                put(CostEvent(cost=cost.as_dict()))

        return stream(request, cancel, report)

    return on_thread(events, cancel, poll=poll, name="samplescope-run")


def on_thread(
    produce: Callable[[Callable[[Any], None]], Iterable[Any]],
    cancel: threading.Event,
    *,
    poll: float = 0.5,
    name: str = "samplescope-worker",
) -> Iterator[Any]:
    """Iterate ``produce(put)`` on a worker thread; yield its items (and any it ``put``s) as they come.

    ``None`` is yielded when nothing came for ``poll`` seconds (so a viewer can refresh its clock);
    the worker's errors are raised here; closing this generator early (the viewer went away) sets
    ``cancel``, so a worker that checks it stops instead of running on unseen.
    """
    import queue

    items: queue.Queue = queue.Queue()
    end = object()

    def work() -> None:
        try:
            for item in produce(items.put):
                items.put(item)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
            items.put(_Failure(exc))
        items.put(end)

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = items.get(timeout=poll)
            except queue.Empty:
                yield None
                continue
            if item is end:
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


def parse_budget(budget: dict[str, Any] | None) -> Budget:
    """A :class:`Budget` from counter -> cap pairs (the CLI's ``--budget`` strings, the API's JSON
    numbers): known counters only; whole numbers for the counting ones (``4.0`` is 4, ``4.5``
    and ``true`` are refused), any finite number >= 0 for ``wall_seconds``."""
    if budget is None:
        return Budget()
    if not isinstance(budget, dict):
        raise ConfigError(f"the budget must be a mapping of counters to caps, got {type(budget).__name__}")
    unknown = {str(k) for k in budget} - set(Budget.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown budget counter(s): {', '.join(sorted(unknown))}"[:300])
    return Budget(**{key: _budget_cap(key, value) for key, value in budget.items()})


def _budget_cap(key: str, value: Any) -> int | float:
    bad = ConfigError(f"budget {key} must be a {'number' if key == 'wall_seconds' else 'whole number'}, got {value!r}"[:200])
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"budget {key} must be a finite number >= 0, got {value!r}"[:200])
    if key == "wall_seconds":
        return number
    if not number.is_integer():
        raise bad
    return int(number)


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
