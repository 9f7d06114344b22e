"""Trace a direction dial's Pareto front, for the CLI (``samplescope pareto``) and the Explore tab alike.

The engine (:mod:`engines.pareto`) runs one sampler per angle and marks the exact front; this
module turns user input (text fields, flags) into its arguments, points learned rewards at the
data folder, and reports progress as (angles done, angles in all, the latest point).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from app.workflows.store import rewards_home
from engines.errors import ConfigError
from engines.pareto import FrontPoint, FrontResult, parse_angles, parse_reward_pair, trace_front


def trace_dial(
    *,
    model: str,
    rewards: str | Sequence[str],
    angles: str | Sequence[float],
    prompts: str | Sequence[str],
    sampler: str = "best_of_n",
    n: int | None = None,
    params: dict[str, Any] | None = None,
    params_are_strings: bool = False,
    seed: int = 0,
    chat: bool = True,
    device: str = "auto",
    cancel: threading.Event | None = None,
) -> Iterator[tuple[int, int, FrontPoint | FrontResult]]:
    """(done, total, item) per traced angle, then (total, total, the result); bad input fails before any model loads.

    ``prompts`` as text is one prompt per non-empty line (a few prompts: each point is the mean over them).
    """
    if isinstance(prompts, str):
        prompts = [line for line in prompts.splitlines() if line.strip()]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError("give at least one non-empty prompt")
    if not model or not str(model).strip():
        raise ConfigError("choose a model")
    pair = parse_reward_pair(rewards)
    angle_list = parse_angles(angles)
    work = trace_front(model=model.strip(), rewards=pair, angles=angle_list, prompts=prompts, sampler=sampler,
                       params=params, params_are_strings=params_are_strings, size=n, seed=seed, chat=chat,
                       device=device, rewards_folder=str(rewards_home()), cancel=cancel)
    return _counted(work, len(angle_list))


def _counted(work: Iterator[FrontPoint | FrontResult], total: int) -> Iterator[tuple[int, int, FrontPoint | FrontResult]]:
    done = 0
    for item in work:
        if isinstance(item, FrontPoint):
            done += 1
        yield done, total, item
