"""Timing helpers for the benchmarks: medians of interleaved repeats, JSON results."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run every case once per round, ``repeats`` rounds, so slow drifts hit all cases alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn)[0])
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "processor": platform.processor() or platform.machine(),
    }


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=float))
    return path


def accuracy_summary(rows: list[dict], means: tuple[str, ...]) -> dict[str, float]:
    """Accuracy of ``rows[i]["right"]`` with its binomial standard error, and the means of ``means``."""
    acc = statistics.fmean(r["right"] for r in rows)
    out = {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / len(rows))}
    out.update({key: statistics.fmean(r[key] for r in rows) for key in means})
    return out


def publish(name: str, result: dict, heading: str, table: str, as_json: bool) -> None:
    """Save ``result`` as ``NAME.json``, the Markdown table as ``NAME.md`` under a heading, and print
    either the JSON or the ceiling line and the table (the simulated-annotator benchmarks share this)."""
    save(name, result)
    (RESULTS / f"{name}.md").write_text(f"{heading}\n\n{table}\n")
    if as_json:
        print(json.dumps(result, default=float))
    else:
        print(f"annotator ceiling on held-out votes: {result['ceiling']:.3f}")
        print(table)
