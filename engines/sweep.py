"""Sweeps: samplers on a prompt set at matched compute, one cell = one seeded run.

A :class:`SweepPlan` names *arms* (a sampler with its steering reward and fixed
parameters: one curve of the test-time-scaling plot), *levels* of compute and the
prompts. Levels are either sizes (each sampler's declared size knob,
``Config.size_field``: N, particles, beams, simulations, rollouts) or caps of one
``Budget`` counter (generated tokens, model calls, reward calls, NFE, wall seconds),
under which every sampler runs with its size knob at ``plan.size``. A cell is
(arm, level, prompt); its seed is :func:`cell_seed` of the plan's seed, the prompt
index and the level, so every arm at a level draws from the same seed on the same
prompt (a paired design) and a cell is reproducible on its own:
``execute(plan.request(key))`` gives the same run.

:func:`run_sweep` runs the cells with many prompts in flight at once (threads; a
served model batches the concurrent requests, an in-process one serialises them on
its own lock), spreads prompts over several model specs round-robin (prompt i goes to
``models[i % len(models)]``: several engines, one per replica or GPU), and yields
each finished :class:`CellResult` as it completes. It never stores anything: the
caller skips cells it has (``skip``) and records the rest, which is how a sweep
resumes after a crash or a cancel without redoing a finished cell. A cancelled run
is not a finished cell and is not yielded.

Quality is the *evaluation* reward of the pick, which may differ from the steering
reward (``steer`` keeps the steering reward's value of the same pick: a steering
score that climbs while quality does not is reward hacking). Statistics over cells
are in :mod:`engines.sweep_stats`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engines.errors import ConfigError
from engines.models.diffusion import image_from_data_uri
from engines.rewards.base import Reward
from engines.runner import RunRequest, load_parts, stream_parts
from engines.task import Task
from engines.trace import COST_FIELDS, Trace

AXES = ("size", "budget")


def cell_seed(seed: int, prompt_index: int, level: float) -> int:
    """The seed of every arm's cell at (prompt, level): the scaling benches' formula, kept so their
    published numbers reproduce (``seed * 1_000_003 + 1_000 * prompt + level``)."""
    return int(seed) * 1_000_003 + 1_000 * int(prompt_index) + int(round(level))


@dataclass(frozen=True)
class Arm:
    """One curve: a sampler, its steering reward (None: each prompt's own) and fixed parameters.

    ``size_params`` says which parameters a size sets and how: ``{param: factor}`` sets
    ``param = max(1, int(size * factor))`` (default: the sampler's size knob, factor 1; a beam
    search of K/4 beams is ``{"beams": 0.25}``). ``fallback`` runs instead at sizes below the
    sampler's minimum (a knockout of one is its one player); without one, such cells are left
    out of the plan."""

    label: str
    sampler: str
    reward: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fallback: Arm | None = None
    size_params: dict[str, float] | None = None

    def sized(self, level: float) -> dict[str, int]:
        """The parameters a size sets (empty when the sampler has no size knob and no size_params)."""
        from engines.samplers import SAMPLERS

        if self.size_params:
            return {name: max(1, int(level * factor)) for name, factor in self.size_params.items()}
        config = SAMPLERS.get(self.sampler).Config
        return config.with_size({}, int(level), sampler=self.sampler) if config.size_spec() is not None else {}

    def fits(self, level: float) -> bool:
        """Whether every size-set parameter is within its field's minimum at this size."""
        from engines.samplers import SAMPLERS

        specs = {s.name: s for s in SAMPLERS.get(self.sampler).Config.specs()}
        return all(specs[k].min is None or v >= specs[k].min for k, v in self.sized(level).items() if k in specs)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "sampler": self.sampler, "reward": self.reward, "params": dict(self.params),
                "fallback": self.fallback.as_dict() if self.fallback else None,
                "size_params": dict(self.size_params) if self.size_params else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arm:
        fallback = data.get("fallback")
        return cls(label=data["label"], sampler=data["sampler"], reward=data.get("reward"),
                   params=dict(data.get("params") or {}), fallback=cls.from_dict(fallback) if fallback else None,
                   size_params=data.get("size_params") or None)


@dataclass(frozen=True, order=True)
class CellKey:
    arm: str
    level: float
    prompt: int


@dataclass(frozen=True)
class SweepPlan:
    arms: tuple[Arm, ...]
    tasks: tuple[Task, ...]
    levels: tuple[float, ...]
    axis: str = "size"
    counter: str | None = None  # the budget counter when axis == "budget"
    models: tuple[str, ...] = ()  # empty: the set's model
    evaluate: str | None = None  # None: each prompt's steering reward judges it
    seed: int = 0
    size: int = 64  # the size knob under a budget
    set_model: str | None = None
    set_reward: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    rewards_folder: str | None = None  # where learned:NAME rewards live (the caller's data folder)

    def __post_init__(self) -> None:
        from engines.samplers import SAMPLERS

        if not self.arms:
            raise ConfigError("choose at least one sampler")
        if not self.tasks:
            raise ConfigError("the prompt set is empty")
        if not self.levels:
            raise ConfigError("give at least one size or budget")
        if self.axis not in AXES:
            raise ConfigError(f"the sweep axis is size or budget, got {self.axis!r}")
        labels = [a.label for a in self.arms]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"arm labels must differ, got {', '.join(labels)}")
        if any(level <= 0 for level in self.levels):
            raise ConfigError("sizes and budgets must be positive")
        if self.axis == "budget":
            if self.counter not in COST_FIELDS:
                raise ConfigError(f"unknown budget counter {self.counter!r}; use one of {', '.join(COST_FIELDS)}")
        else:
            if any(level != int(level) for level in self.levels):
                raise ConfigError("sizes must be whole numbers")
            for arm in self.arms:
                if not arm.size_params and SAMPLERS.get(arm.sampler).Config.size_spec() is None:
                    raise ConfigError(f"sampler {arm.sampler!r} has no size knob: sweep it with --budget instead")
        modality = {t.meta.get("modality", "text") for t in self.tasks}
        for arm in self.arms:
            cls = SAMPLERS.get(arm.sampler)
            wrong = modality - set(cls.modalities)
            if wrong:
                raise ConfigError(f"sampler {arm.sampler!r} works on {'/'.join(cls.modalities)}, not on this set's "
                                  f"{'/'.join(sorted(wrong))} prompts")
        for key in self.cells():  # every config is checked before the first run
            self.request(key)

    # -- cells ---------------------------------------------------------------------------------------

    def model_for(self, prompt_index: int) -> str:
        models = self.models or (self.set_model or "embedded:smollm2",)
        return models[prompt_index % len(models)]

    def _arm_at(self, arm: Arm, level: float) -> Arm | None:
        """The arm that runs at a size (its fallback below the sampler's minimum), or None."""
        if self.axis != "size" or arm.fits(level):
            return arm
        return self._arm_at(arm.fallback, level) if arm.fallback else None

    def cells(self) -> list[CellKey]:
        """Every cell, level by level, prompt by prompt (so each level's points fill in together)."""
        out = []
        for level, prompt, arm in itertools.product(self.levels, range(len(self.tasks)), self.arms):
            if self._arm_at(arm, level) is not None:
                out.append(CellKey(arm.label, float(level), prompt))
        return out

    def arm(self, label: str) -> Arm:
        return next(a for a in self.arms if a.label == label)

    def request(self, key: CellKey) -> RunRequest:
        """The run of a cell, as one would make it alone."""
        from engines.samplers import SAMPLERS

        arm = self._arm_at(self.arm(key.arm), key.level)
        if arm is None:
            raise ConfigError(f"{key.arm} does not run at size {key.level:g}")
        config = SAMPLERS.get(arm.sampler).Config
        spec = config.size_spec()
        params = dict(arm.params)
        budget = None
        if self.axis == "size":
            params.update(arm.sized(key.level))
        else:
            if spec is not None and spec.name not in params and "n" not in params:
                top = int(spec.max) if spec.max is not None else self.size
                params = config.with_size(params, max(int(spec.min or 1), min(self.size, top)), sampler=arm.sampler)
            budget = {self.counter: key.level}
        task = self.tasks[key.prompt]
        reward = arm.reward or task.meta.get("reward") or self.set_reward
        return RunRequest.build(model=self.model_for(key.prompt), reward=reward, sampler=arm.sampler, params=params,
                                task=task, seed=cell_seed(self.seed, key.prompt, key.level), budget=budget,
                                device=self.device, dtype=self.dtype, rewards_folder=self.rewards_folder)

    def evaluation_spec(self, request: RunRequest) -> str:
        return self.evaluate or request.reward

    # -- serialisation (the tasks are stored with the prompt set, not here) ----------------------------

    def as_dict(self) -> dict[str, Any]:
        return {"arms": [a.as_dict() for a in self.arms], "levels": list(self.levels), "axis": self.axis,
                "counter": self.counter, "models": list(self.models), "evaluate": self.evaluate, "seed": self.seed,
                "size": self.size, "set_model": self.set_model, "set_reward": self.set_reward,
                "prompts": len(self.tasks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], tasks: Iterable[Task], *, device: str = "auto", dtype: str = "fp32",
                  rewards_folder: str | None = None) -> SweepPlan:
        tasks = tuple(tasks)[: int(data.get("prompts") or 10**9)]
        return cls(arms=tuple(Arm.from_dict(a) for a in data["arms"]), tasks=tasks,
                   levels=tuple(float(v) for v in data["levels"]), axis=data["axis"], counter=data.get("counter"),
                   models=tuple(data.get("models") or ()), evaluate=data.get("evaluate"), seed=int(data.get("seed", 0)),
                   size=int(data.get("size", 64)), set_model=data.get("set_model"), set_reward=data.get("set_reward"),
                   device=device, dtype=dtype, rewards_folder=rewards_folder)


@dataclass
class CellResult:
    key: CellKey
    request: RunRequest
    trace: Trace
    quality: float | None
    steer: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.trace.done.status if self.trace.done else "error"

    @property
    def cost(self) -> dict[str, float]:
        return dict(self.trace.cost)

    def row(self) -> dict[str, Any]:
        """A flat row: what a table, a CSV file and the statistics read."""
        return {"arm": self.key.arm, "level": self.key.level, "prompt": self.key.prompt, "sampler": self.request.sampler,
                "model": self.request.model, "reward": self.request.reward, "seed": self.request.seed,
                "status": self.status, "quality": self.quality, "steer": self.steer, **self.cost, **self.extra}


def _pick_value(reward: Any, task: Task, trace: Trace, pick: str) -> float:
    node = trace.nodes[pick]
    if node.image:
        return float(reward.score(task, image_from_data_uri(node.image)[None])[0])
    return float(reward.score(task, [trace.full_text(pick)])[0])


class _Parts:
    """What the cells share: models (loaded once per process by ``load_model``). Rewards are built
    fresh for every cell (cheap: the models behind them are cached), because some memoise scores,
    and a memo shared across cells would let one cell's reward calls be paid by another."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan

    def model(self, spec: str) -> Any:
        from engines.models import load_model

        return load_model(spec, device=self.plan.device, dtype=self.plan.dtype)

    def reward(self, model_spec: str, spec: str) -> Any:
        from engines.models import load_model
        from engines.rewards import RewardEnv, build_reward

        folder = None if self.plan.rewards_folder is None else Path(self.plan.rewards_folder)
        return build_reward(spec, RewardEnv(model=self.model(model_spec), load_model=load_model, rewards_folder=folder))

    def judge(self, model_spec: str, spec: str) -> Reward:
        """The evaluation reward: an outcome reward (a pairwise view of a scalar is judged by the scalar)."""
        from engines.rewards.base import ScalarAsPairwise

        judge = self.reward(model_spec, spec)
        if isinstance(judge, ScalarAsPairwise):
            judge = judge.reward
        if not isinstance(judge, Reward):
            raise ConfigError(f"{spec!r} cannot judge one candidate: give an outcome evaluation reward (--evaluate)")
        return judge


def run_cell(plan: SweepPlan, key: CellKey, parts: _Parts | None = None, cancel: threading.Event | None = None,
             extra: Callable[[Task, Trace], dict[str, Any]] | None = None) -> CellResult:
    """Run one cell through the runner's path (``runner.stream_parts``: the run ``execute(plan.request(key))``
    makes, context check included) and judge its pick."""
    parts = parts or _Parts(plan)
    request = plan.request(key)
    model, steering, sampler = load_parts(request)
    trace = Trace(stream_parts(request, model, steering, sampler, cancel=cancel))
    quality = steer = None
    picks = trace.done.picks if trace.done else []
    if picks:
        pick = picks[0]
        judge = parts.judge(request.model, plan.evaluation_spec(request))
        quality = _pick_value(judge, request.task, trace, pick)
        recorded = trace.scores.get(pick, {})
        name = getattr(steering, "name", request.reward)
        if name in recorded:
            steer = float(recorded[name])
        elif isinstance(steering, Reward):  # a pairwise or process reward has no value for one candidate
            steer = _pick_value(steering, request.task, trace, pick)
    elif trace.done is not None and trace.done.status not in ("cancelled",):
        quality = 0.0  # a finished run that found nothing scores nothing
    return CellResult(key=key, request=request, trace=trace, quality=quality, steer=steer,
                      extra=extra(request.task, trace) if extra else {})


def preflight(plan: SweepPlan) -> None:
    """Load what the cells need and check that every arm's sampler accepts its model and rewards,
    on each engine, before the first run: a misfit is one ConfigError line, not a sweep failing mid-way."""
    parts = _Parts(plan)
    seen: set[tuple[str, str, str, str]] = set()
    for key in plan.cells():
        request = plan.request(key)
        sig = (key.arm, request.sampler, request.model, request.reward)
        if sig in seen:
            continue
        seen.add(sig)
        model, steering, sampler = load_parts(request)
        # run() checks its inputs (after adapting the reward, as step samplers do) before its first step;
        # the generator it returns is closed unstarted, so no work is done
        sampler.run(request.task, model, steering, budget=request.budget,
                    rng=torch.Generator().manual_seed(request.seed)).close()
        parts.judge(request.model, plan.evaluation_spec(request))


def _slotted(slot, plan: SweepPlan, key: CellKey, parts: _Parts, stop: threading.Event, extra) -> CellResult | None:
    if slot is None:
        return run_cell(plan, key, parts, stop, extra)
    with slot(stop) as admitted:
        return run_cell(plan, key, parts, stop, extra) if admitted and not stop.is_set() else None


def run_sweep(
    plan: SweepPlan,
    *,
    skip: Iterable[CellKey] = (),
    workers: int = 4,
    cancel: threading.Event | None = None,
    extra: Callable[[Task, Trace], dict[str, Any]] | None = None,
    slot: Callable[[threading.Event], AbstractContextManager[bool]] | None = None,
) -> Iterator[CellResult]:
    """Run every cell not in ``skip``, ``workers`` at once; yield each finished cell as it completes.

    An error in a cell cancels the rest and is raised here; a cancel stops handing out cells,
    lets the running ones stop at their next step and yields none of the cancelled ones.
    ``slot(stop)``, when given, is entered around each cell (a server's shared run slots): it
    yields True once the cell may run, False when ``stop`` was set while it waited (the cell is
    then skipped, as a cancelled one).
    """
    if not 1 <= int(workers) <= 256:
        raise ConfigError(f"workers must be 1..256, got {workers}")
    done = set(skip)
    todo = [key for key in plan.cells() if key not in done]
    parts = _Parts(plan)
    cancel = cancel or threading.Event()
    stop = threading.Event()  # our own flag: set on cancel or on an error, seen by every running cell
    pending: set[Future] = set()
    queue = iter(todo)

    finished_all = threading.Event()

    def watch() -> None:
        while not finished_all.is_set():
            if cancel.wait(0.1):
                stop.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    with ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="sweep") as pool:
        try:
            while True:
                while len(pending) < 2 * int(workers) and not stop.is_set():
                    key = next(queue, None)
                    if key is None:
                        break
                    pending.add(pool.submit(_slotted, slot, plan, key, parts, stop, extra))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()  # an error in a cell is raised here
                    if result is not None and result.status != "cancelled":
                        yield result
        finally:
            stop.set()
            for future in pending:
                future.cancel()
            finished_all.set()  # ends the watcher thread
