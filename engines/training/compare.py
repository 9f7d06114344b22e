"""Strategies compared at a matched sample budget: a sweep whose cells are (strategy, seed) training runs.

A :class:`StrategyComparison` names the strategies, the seeds and one base
:class:`~engines.training.loop.TrainConfig` (policy, prompts, reward, held-out set, and a
*samples* budget every cell shares: the matched budget). A cell is one training run of
``strategy`` with ``seed``, the same policy, prompts and budget as every other cell: a
paired design across strategies (seed k of every strategy starts from the same weights
and draws its prompts from the same seeded generator).

:func:`run_comparison` runs the cells one after another into the comparison's folder
(``<training folder>/compare/<name>``): ``plan.json``, and per cell the training run's own
folder (checkpoints and events, engines.training.loop) and, once it has finished,
``cell.json`` (its curves: held-out accuracy, kept samples and KL against samples spent).
Resuming is as for other sweeps, one level finer: finished cells (``cell.json``) are
skipped, a cell stopped by a crash or a cancel continues from its last checkpoint, exactly
as the uninterrupted run would. It yields one :class:`CellDone` per cell it finishes, and
the cell's events as they come (the UI draws them live).

:func:`comparison_curves` gives, for each strategy and metric, the curve against samples
spent: at every sample count where one of the strategy's runs measured the metric, each
seed's value is its latest measurement at or below that count (a policy's accuracy after
spending that many samples), averaged over seeds with a percentile bootstrap interval over
seeds (:func:`engines.sweep_stats.bootstrap_ci`, as the sampler sweeps' intervals over
prompts). Kept share is cumulative: kept samples / samples drawn so far.
"""

from __future__ import annotations

import json
import statistics
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from engines.sweep_stats import bootstrap_ci
from engines.trace import Event
from engines.training import STRATEGIES

#: metric -> (where it comes from, label); the order of the figure's panels
METRICS = {
    "accuracy_t1": ("evals", "Held-out accuracy, T=1"),
    "accuracy_greedy": ("evals", "Held-out accuracy, greedy"),
    "kept_share": ("steps", "Kept share of samples (cumulative)"),
    "kl": ("steps", "KL to the initial policy"),
}


@dataclass(frozen=True)
class StrategyComparison:
    """Strategies x seeds at one matched sample budget; ``params`` go to every strategy whose config has them,
    ``per_strategy`` to one strategy (over ``params``)."""

    name: str
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    config: Any  # TrainConfig: policy, prompts, reward, eval settings and the samples budget
    params: dict[str, Any] = field(default_factory=dict)
    per_strategy: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from engines.training.loop import NAME_CHARS

        if not self.name or not set(self.name) <= NAME_CHARS:
            raise ConfigError(f"comparison name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if not self.strategies:
            raise ConfigError("choose at least one strategy to compare")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"each strategy once, got {', '.join(self.strategies)}")
        for name in self.strategies:
            STRATEGIES.get(name)  # the registry's one-line unknown-name error
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError("give one or more distinct seeds >= 0")
        if self.config.samples is None:
            raise ConfigError("a strategy comparison needs a samples budget (the matched budget), e.g. samples=512")
        for name in self.strategies:
            self.strategy_params(name)  # each strategy's checks, before any cell runs

    def strategy_params(self, strategy: str) -> dict[str, Any]:
        """The typed parameters of ``strategy``: the common ones its config has, then its own."""
        config = STRATEGIES.get(strategy).Config
        fields = {s.name for s in config.specs()}
        values = {k: v for k, v in self.params.items() if k in fields} | dict(self.per_strategy.get(strategy, {}))
        return config.from_dict(values).as_dict()

    def cells(self) -> list[tuple[str, int]]:
        """(strategy, seed), seed by seed, so every strategy's first seed finishes before any second one."""
        return [(strategy, seed) for seed in self.seeds for strategy in self.strategies]

    def cell_config(self, strategy: str, seed: int) -> Any:
        return self.config.replace(name=cell_name(strategy, seed), strategy=strategy, seed=seed)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strategies": list(self.strategies), "seeds": list(self.seeds),
                "config": self.config.as_dict(), "params": dict(self.params),
                "per_strategy": {k: dict(v) for k, v in self.per_strategy.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StrategyComparison:
        from engines.training.loop import TrainConfig

        return cls(name=data["name"], strategies=tuple(data["strategies"]), seeds=tuple(int(s) for s in data["seeds"]),
                   config=TrainConfig.from_dict(data["config"]), params=dict(data.get("params") or {}),
                   per_strategy={k: dict(v) for k, v in (data.get("per_strategy") or {}).items()})


def cell_name(strategy: str, seed: int) -> str:
    return f"{strategy}-seed{seed}"


def comparison_dir(training_folder: Path, name: str) -> Path:
    """Where comparison ``name`` lives under the data folder's training folder."""
    return Path(training_folder) / "compare" / name


@dataclass(frozen=True)
class CellDone:
    """A finished cell: its curves and totals, as stored in its ``cell.json``."""

    kind = "cell"
    result: dict[str, Any]


def cell_result(strategy: str, seed: int, events: Sequence[Event]) -> dict[str, Any]:
    """A cell's curves (``evals``: held-out accuracy from ``eval`` events; ``steps``: kept and drawn samples
    and KL from ``update`` events; each at the samples spent so far) and its totals from the ``done`` event."""
    evals = [{"step": e.step, "samples": e.metrics.get("samples", 0),
              **{k: e.metrics[k] for k in ("accuracy_t1", "accuracy_greedy") if k in e.metrics}}
             for e in events if e.kind == "eval"]
    steps = [{"step": e.step, "samples": e.metrics.get("spent_samples", 0), "kept": e.metrics.get("batch_samples", 0),
                "drawn": e.metrics.get("batch_samples_drawn", 0), "kl": e.metrics.get("kl")}
               for e in events if e.kind == "update"]
    done = next((e for e in reversed(events) if e.kind == "done"), None)
    totals = {k: done.metrics.get(k) for k in ("updates", "samples", "tokens", "seconds", "policy_spec")} if done else {}
    return {"strategy": strategy, "seed": seed, "status": done.status if done else "error",
            "message": done.message if done else "", "evals": evals, "steps": steps, **totals}


def load_plan(folder: Path) -> StrategyComparison:
    plan_file = Path(folder) / "plan.json"
    if not plan_file.is_file():
        raise ConfigError(f"no strategy comparison in {folder}")
    return StrategyComparison.from_dict(json.loads(plan_file.read_text()))


def stored_cells(folder: Path) -> list[dict[str, Any]]:
    """The finished cells' results, in plan order."""
    plan = load_plan(folder)
    out = []
    for strategy, seed in plan.cells():
        path = Path(folder) / cell_name(strategy, seed) / "cell.json"
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


def run_comparison(
    plan: StrategyComparison,
    folder: Path,
    *,
    cancel: threading.Event | None = None,
    train_kwargs: Callable[[str, int], dict[str, Any]] | None = None,
) -> Iterator[Event | CellDone]:
    """Run (or continue) the comparison in ``folder``; see the module docstring.

    A folder holding another plan is refused in one line; ``train_kwargs(strategy, seed)`` adds
    keyword arguments to each cell's :func:`~engines.training.loop.train` (tests hand in a toy policy)."""
    from engines.training.loop import train

    folder = Path(folder)
    plan_file = folder / "plan.json"
    if plan_file.is_file():
        stored = json.loads(plan_file.read_text())
        if stored != json.loads(json.dumps(plan.as_dict())):
            raise ConfigError(f"comparison {plan.name!r} exists with another plan; give another name")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(json.dumps(plan.as_dict(), indent=2))
    for strategy, seed in plan.cells():
        if cancel is not None and cancel.is_set():
            return
        cell_dir = folder / cell_name(strategy, seed)
        if (cell_dir / "cell.json").is_file():
            continue
        events: list[Event] = []
        kwargs = train_kwargs(strategy, seed) if train_kwargs else {}
        for event in train(plan.cell_config(strategy, seed), plan.strategy_params(strategy),
                           resume=(cell_dir / "state.pt").is_file(), cancel=cancel, run_dir=cell_dir, **kwargs):
            events.append(event)
            yield event
        result = cell_result(strategy, seed, events)
        if result["status"] == "cancelled":
            return  # its checkpoint stays: the next run continues it
        (cell_dir / "cell.json").write_text(json.dumps(result, indent=2))
        yield CellDone(result)


def _at(points: list[tuple[float, float]], x: float) -> float | None:
    """The latest value measured at or below ``x`` samples (points sorted by samples)."""
    value = None
    for samples, v in points:
        if samples > x:
            break
        value = v
    return value


def _series(cell: dict[str, Any], metric: str) -> list[tuple[float, float]]:
    if metric == "kept_share":
        kept = drawn = 0
        out = []
        for u in cell["steps"]:
            kept, drawn = kept + u["kept"], drawn + u["drawn"]
            if drawn:
                out.append((float(u["samples"]), kept / drawn))
        return out
    source = METRICS[metric][0]
    return sorted((float(row["samples"]), float(row[metric])) for row in cell[source] if row.get(metric) is not None)


def comparison_curves(cells: Sequence[dict[str, Any]], *, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (strategy, metric, samples): mean over seeds and its bootstrap interval (see the module docstring)."""
    order = list(dict.fromkeys(c["strategy"] for c in cells))
    out = []
    for strategy in order:
        mine = [c for c in cells if c["strategy"] == strategy]
        for metric in METRICS:
            series = [_series(c, metric) for c in mine]
            grid = sorted({x for s in series for x, _ in s})
            for x in grid:
                values = [v for v in (_at(s, x) for s in series) if v is not None]
                low, high = bootstrap_ci(values, level=level, seed=seed)
                out.append({"strategy": strategy, "metric": metric, "samples": x, "mean": statistics.fmean(values),
                            "ci_low": low, "ci_high": high, "seeds": len(values)})
    return out


def final_points(cells: Sequence[dict[str, Any]], budget: float, **kwargs: Any) -> list[dict[str, Any]]:
    """Each strategy's metrics at the matched budget (the last point of each curve at or below it)."""
    rows: dict[str, dict[str, Any]] = {}
    for point in comparison_curves(cells, **kwargs):
        if point["samples"] <= budget:
            row = rows.setdefault(point["strategy"], {"strategy": point["strategy"]})
            row[point["metric"]] = point
    for strategy, row in rows.items():
        row["seeds"] = sum(1 for c in cells if c["strategy"] == strategy)
    return list(rows.values())
