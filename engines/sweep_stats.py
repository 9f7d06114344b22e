"""Statistics of a sweep's cells: points with bootstrap intervals, and paired comparisons.

Cells are flat rows (``CellResult.row()`` or the stored table): ``arm``, ``level``,
``prompt``, ``quality``, ``steer`` and every cost counter.

- :func:`points`: one point per (arm, level): mean quality over prompts with a
  percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) that resamples
  *prompts*, the unit a researcher wants to generalise over; the mean of every cost
  counter (the compute axis may be any of them); the mean steering score and the
  gap steer - quality (reward hacking shows as a gap that grows with compute).
- :func:`paired`: arm A against arm B at each level on the prompts both finished:
  the mean per-prompt difference with its paired bootstrap interval (resampling
  prompts keeps each prompt's pair together), and wins / ties / losses.

Bootstraps draw from a seeded ``numpy`` generator: the same cells give the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

import numpy as np

from engines.trace import COST_FIELDS


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from c right among n samples of one problem: 1 - C(n-c, k) / C(n, k)
    (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1), computed as a
    product so large n does not overflow."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def bootstrap_ci(values: list[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling the values with replacement)."""
    if not values:
        return (float("nan"), float("nan"))
    data = np.asarray(values, dtype=float)
    if len(data) == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - level) / 2
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))


def _grouped(cells: Iterable[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["arm"], float(cell["level"])), []).append(cell)
    return groups


def points(cells: Iterable[dict[str, Any]], *, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (arm, level), in arm order of first appearance and rising level."""
    cells = list(cells)
    order = list(dict.fromkeys(c["arm"] for c in cells))
    out = []
    for (arm, lvl), rows in sorted(_grouped(cells).items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        quality = [float(r["quality"]) for r in rows if r.get("quality") is not None]
        steer = [float(r["steer"]) for r in rows if r.get("steer") is not None]
        low, high = bootstrap_ci(quality, level=level, seed=seed)
        point = {
            "arm": arm, "level": lvl, "prompts": len(rows),
            "quality": statistics.fmean(quality) if quality else float("nan"), "ci_low": low, "ci_high": high,
            "steer": statistics.fmean(steer) if steer else None,
            "budget_stops": sum(1 for r in rows if r.get("status") == "budget"),
        }
        point["gap"] = point["steer"] - point["quality"] if point["steer"] is not None and quality else None
        for counter in COST_FIELDS:
            values = [float(r[counter]) for r in rows if r.get(counter) is not None]
            point[counter] = statistics.fmean(values) if values else 0.0
        out.append(point)
    return out


def paired(cells: Iterable[dict[str, Any]], a: str, b: str, *, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """Arm ``a`` minus arm ``b`` at every level both ran, paired by prompt."""
    groups = _grouped(cells)
    out = []
    for lvl in sorted({lv for arm, lv in groups if arm == a} & {lv for arm, lv in groups if arm == b}):
        qa = {r["prompt"]: r["quality"] for r in groups[(a, lvl)] if r.get("quality") is not None}
        qb = {r["prompt"]: r["quality"] for r in groups[(b, lvl)] if r.get("quality") is not None}
        shared = sorted(set(qa) & set(qb))
        diffs = [float(qa[p]) - float(qb[p]) for p in shared]
        low, high = bootstrap_ci(diffs, level=level, seed=seed)
        out.append({
            "a": a, "b": b, "level": lvl, "prompts": len(shared),
            "mean_diff": statistics.fmean(diffs) if diffs else float("nan"), "ci_low": low, "ci_high": high,
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
        })
    return out


def all_pairs(cells: Iterable[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    cells = list(cells)
    arms = list(dict.fromkeys(c["arm"] for c in cells))
    return [row for i, a in enumerate(arms) for b in arms[i + 1:] for row in paired(cells, a, b, **kwargs)]
