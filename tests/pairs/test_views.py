"""The pair figures: the seven points and the pair on the reward plot, the 21-cell table, escaping."""

from __future__ import annotations

import torch

from app.views.pairs import grid_cells_figure, pair_figure, pair_rows, trace_pairs_figure
from engines.models import load_model
from engines.pairs.grid import point_values
from engines.samplers import build_sampler
from engines.trace import Budget, collect
from tests.engines.test_exactness import TASK
from tests.engines.toys import CountA

REWARDS = [0.1, 2.0, -1.5, 0.4, 0.9, -0.2, 1.1, 0.0]
HOSTILE = "<img src=x onerror=alert(1)>"


def test_the_pair_figure_draws_the_seven_points_and_both_sides():
    fig = pair_figure(REWARDS, [HOSTILE] * len(REWARDS), [(1, 2, "grid:max/min")])
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted(round(s.x0, 6) for s in lines) == sorted(round(v, 6) for v in point_values(REWARDS).values())
    names = [t.name for t in fig.data if t.name in ("chosen", "rejected")]
    assert names == ["chosen", "rejected"]
    chosen = next(t for t in fig.data if t.name == "chosen")
    rejected = next(t for t in fig.data if t.name == "rejected")
    assert chosen.x[0] == 2.0 and rejected.x[0] == -1.5
    text = fig.to_json()
    assert "<img" not in text and "&lt;img" in text


def test_the_grid_table_has_21_cells_with_margins():
    fig = grid_cells_figure(REWARDS)
    z = fig.data[0].z
    filled = [v for row in z for v in row if v is not None]
    cells = [t for row in fig.data[0].text for t in row if t != ""]
    assert len(cells) == 21 and len(filled) >= 15 and all(v > 0 for v in filled)


def test_a_preference_pairs_run_draws_its_pair_where_the_reward_figure_was():
    sampler = build_sampler("preference_pairs", {"n": 12, "strategy": "grid", "chosen_point": "max",
                                                 "rejected_point": "mu-2sigma", "temperature": 1.5})
    trace = collect(sampler.run(TASK, load_model("toy:abc"), CountA(), Budget(), torch.Generator().manual_seed(2)))
    fig = trace_pairs_figure(trace)
    assert "grid:max/mu-2sigma" in fig.layout.title.text
    assert any(t.name == "chosen" for t in fig.data)
    other = collect(build_sampler("best_of_n", {"n": 4}).run(TASK, load_model("toy:abc"), CountA(), Budget(),
                                                             torch.Generator().manual_seed(2)))
    assert trace_pairs_figure(other).layout.title.text.startswith("Reward distribution")
    assert not any(t.name == "chosen" for t in trace_pairs_figure(other).data)


def test_pair_rows_are_plain_one_line_text():
    from app.workflows.pair_building import BuiltPair

    rows = pair_rows([BuiltPair("Q:\n1+1", "a\nb", HOSTILE, 1.0, 0.0, "mcpo", True, False, 0.3)])
    assert rows[0][5] == "a b" and rows[0][6] == HOSTILE and rows[0][1] == "kept"
