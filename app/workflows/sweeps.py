"""Stored sweeps for the CLI and the Compare tab: build a plan, run it into the database, resume it.

The engine (``engines.sweep``) runs cells and stores nothing; this module is the one
place that joins it to storage: every finished cell is written (its run and its cell
row, one transaction) as soon as it completes, so a crash or a cancel loses at most the
cells in flight, and :func:`run_stored` on the same sweep id skips every stored cell.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from app.workflows.store import rewards_home
from engines.errors import ConfigError
from engines.prompts import builtin_names, builtin_prompt_set
from engines.samplers import SAMPLERS
from engines.sweep import Arm, CellKey, CellResult, SweepPlan, preflight, run_sweep
from storage.errors import NotFound
from storage.models import PromptSet
from storage.prompt_sets import find_prompt_set, list_prompt_sets, load_prompt_set, save_prompt_set
from storage.sweeps import create_sweep, done_keys, load_sweep, record_cell, set_status, sweep_cells


def resolve_prompt_set(session, name: str) -> tuple[int, Any]:
    """(stored id, set) for a stored set's name or a built-in one (a built-in is stored on first use,
    through the same checks as a file, so a sweep can point at it)."""

    row = find_prompt_set(session, name)
    if row is not None:
        return row.id, load_prompt_set(session, row.id)
    if name in builtin_names():
        prompts = builtin_prompt_set(name)
        set_id, _ = save_prompt_set(session, prompts, reserved=tuple(builtin_names()))
        return set_id, prompts
    known = sorted({s.name for s in list_prompt_sets(session)} | set(builtin_names()))
    raise NotFound(f"no prompt set {name!r}; known: {', '.join(known)} (add one with: samplescope prompts add FILE)")


def add_prompt_set(db, prompts) -> tuple[int, bool, str]:
    """Store a loaded prompt set (built-in names are reserved); (id, created, the stored name)."""

    def write(session):
        set_id, created = save_prompt_set(session, prompts, reserved=tuple(builtin_names()))
        return set_id, created, session.get(PromptSet, set_id).name

    return db.write(write)


def parse_arms(samplers: Sequence[str] | str, common: dict[str, Any] | None = None, *,
               strings: bool = False) -> tuple[Arm, ...]:
    """``name`` or ``name@reward`` per sampler; ``common`` parameters go to every sampler whose config has them."""

    names = [s.strip() for s in (samplers.split(",") if isinstance(samplers, str) else samplers) if s.strip()]
    if not names:
        raise ConfigError("choose at least one sampler")
    arms = []
    for item in names:
        name, _, reward = item.partition("@")
        cls = SAMPLERS.get(name.strip())
        fields = {s.name: s for s in cls.Config.specs()}
        params = {k: v for k, v in (common or {}).items() if k in fields}
        if strings and params:
            params = cls.Config.from_strings(params).as_dict()
            params = {k: v for k, v in params.items() if k in (common or {})}
        arms.append(Arm(label=item, sampler=name.strip(), reward=reward.strip() or None, params=params))
    return tuple(arms)


def parse_levels(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{what} takes numbers separated by commas, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what} needs at least one value")
    return values


def parse_budget(text: str) -> tuple[str, tuple[float, ...]]:
    counter, sep, values = str(text).partition("=")
    if not sep:
        raise ConfigError(f"--budget takes COUNTER=V1,V2,..., e.g. generated_tokens=64,128,256; got {text!r}")
    return counter.strip(), parse_levels(values, "--budget")


def start(db, prompt_set: str, *, arms: tuple[Arm, ...], levels: tuple[float, ...], axis: str = "size",
          counter: str | None = None, models: Sequence[str] = (), evaluate: str | None = None, seed: int = 0,
          size: int = 64, prompts: int | None = None, title: str | None = None, device: str = "auto",
          dtype: str = "fp32") -> tuple[int, SweepPlan]:
    """Check the plan (every cell's config), store it, return (sweep id, plan). Nothing is stored on bad input."""

    def write(session):
        set_id, prompt_set_obj = resolve_prompt_set(session, prompt_set)
        tasks = prompt_set_obj.tasks[: prompts] if prompts else prompt_set_obj.tasks
        plan = SweepPlan(arms=arms, tasks=tasks, levels=levels, axis=axis, counter=counter, models=tuple(models),
                         evaluate=evaluate or None, seed=int(seed), size=int(size), set_model=prompt_set_obj.model,
                         set_reward=prompt_set_obj.reward, device=device, dtype=dtype,
                         rewards_folder=str(rewards_home()))
        preflight(plan)  # models load here; a misfit raises before the sweep (or a built-in set) is stored
        return create_sweep(session, prompt_set_id=set_id, spec=plan.as_dict(), cells_planned=len(plan.cells()),
                            title=title), plan

    return db.write(write)


def load_plan(db, sweep_id: int, *, device: str = "auto", dtype: str = "fp32") -> SweepPlan:
    def read(session):
        sweep, prompt_set = load_sweep(session, sweep_id)
        return SweepPlan.from_dict(sweep.spec, load_prompt_set(session, prompt_set.id).tasks, device=device, dtype=dtype,
                                   rewards_folder=str(rewards_home()))

    return db.read(read)


def run_stored(db, sweep_id: int, plan: SweepPlan, *, workers: int = 4,
               cancel: threading.Event | None = None, slot=None) -> Iterator[CellResult]:
    """Run the cells of a stored sweep that are not stored yet, storing each as it finishes
    (``slot``: each cell holds one of the server's run slots, see :func:`engines.sweep.run_sweep`)."""

    cancel = cancel or threading.Event()
    skip = {CellKey(*key) for key in db.read(lambda s: done_keys(s, sweep_id))}
    status = "failed"
    try:
        for result in run_sweep(plan, skip=skip, workers=workers, cancel=cancel, slot=slot):
            db.write(lambda s, r=result: record_cell(s, sweep_id, r))
            yield result
        status = "cancelled" if cancel.is_set() else "done"
    except GeneratorExit:
        status = "cancelled"
        raise
    finally:
        db.write(lambda s: set_status(s, sweep_id, status))


def cell_rows(db, sweep_id: int) -> list[dict[str, Any]]:
    return db.read(lambda s: sweep_cells(s, sweep_id))
