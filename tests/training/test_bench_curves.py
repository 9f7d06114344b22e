"""bench/train.py's summary of accuracy curves: GRPO's plateau, the samples a strategy needs to reach it and
the bootstrap interval over seeds (synthetic curves, so the answers are known)."""

from __future__ import annotations

import pytest

from bench.train import first_reaching, plateau, samples_to_plateau


def _runs(curves):
    return [{"points": [(100 * (i + 1), acc) for i, acc in enumerate(curve)]} for curve in curves]


def test_plateau_is_the_mean_of_the_last_evaluations_over_seeds():
    grpo = _runs([[0.3, 0.4, 0.5, 0.5], [0.3, 0.4, 0.4, 0.6]])
    assert plateau(grpo) == pytest.approx(0.5)


def test_first_reaching_reads_the_mean_curve():
    runs = _runs([[0.3, 0.5, 0.6], [0.3, 0.4, 0.6]])
    assert first_reaching(runs, 0.45) == 200
    assert first_reaching(runs, 0.6) == 300
    assert first_reaching(runs, 0.7) is None


def test_samples_to_plateau_with_identical_seeds_has_a_point_interval():
    grpo = _runs([[0.3, 0.4, 0.5, 0.5]] * 3)
    fast = _runs([[0.3, 0.5, 0.5, 0.5]] * 3)
    slow = _runs([[0.3, 0.3, 0.3, 0.4]] * 3)
    out = samples_to_plateau(fast, grpo)
    assert out["samples"] == 200 and out["ci95"] == (200, 200) and out["never"] == 0
    assert samples_to_plateau(grpo, grpo)["samples"] == 300
    never = samples_to_plateau(slow, grpo)
    assert never["samples"] is None and never["never"] == 1.0 and never["ci95"] == (None, None)


def test_samples_to_plateau_interval_covers_the_spread_of_seeds():
    grpo = _runs([[0.3, 0.4, 0.5, 0.5], [0.3, 0.4, 0.5, 0.5]])
    mixed = _runs([[0.5, 0.5, 0.5, 0.5], [0.3, 0.3, 0.5, 0.5], [0.4, 0.5, 0.5, 0.5]])
    out = samples_to_plateau(mixed, grpo, seed=1)
    lo, hi = out["ci95"]
    assert lo == 100 and hi == 300 and out["never"] == 0
