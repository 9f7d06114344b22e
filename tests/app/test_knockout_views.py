"""A knockout's views say what they show (issue 22, item 9): with a scalar behind the pairwise reward
the players' scores fill the histogram and the reward column (metered, one reward call per player);
with a purely pairwise judge the histogram says there is no per-candidate score and the table counts
matches won; every bracket label reads P(a beats b) and the title names the pairwise reward."""

from __future__ import annotations

import math

import torch

from app.ui.panel import candidate_html
from app.views import trace as views
from engines.models import load_model
from engines.rewards.base import PairwiseReward, ScalarAsPairwise, sigmoid
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import Trace, collect
from tests.engines.toys import CountA

TASK = Task(prompt="go")


class LongerWins(PairwiseReward):
    """A purely pairwise judge: the longer text wins; no candidate has a score of its own."""

    name = "longer_wins"

    def compare(self, task, a, b, *, usage=None):
        return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5


def knockout(reward, n: int = 6, seed: int = 3) -> Trace:
    sampler = build_sampler("knockout", {"n": n, "max_new_tokens": 8})
    return collect(sampler.run(TASK, load_model("toy:abc"), reward, rng=torch.Generator().manual_seed(seed)))


def test_an_outcome_reward_fills_the_histogram_and_the_reward_column_at_one_metered_call_per_player():
    trace = knockout(CountA(), n=6)
    assert trace.done.status == "ok"
    assert set(trace.scores) == set(trace.candidates) and len(trace.candidates) == 6
    assert trace.done.cost["reward_calls"] == 6  # each player scored once; the 5 matches are played from the scores
    hist = next(t for t in views.reward_figure(trace).data if t.type == "histogram")
    assert sorted(hist.x) == sorted(trace.reward(i) for i in trace.candidates)
    rows = views.candidate_rows(trace)
    assert all(r[2] is not None for r in rows)
    for m in trace.matches:  # every P is the Bradley-Terry view of the two shown scores (τ = 1)
        if m.b is not None:
            assert math.isclose(m.p_a, sigmoid(trace.reward(m.a) - trace.reward(m.b)))
            assert m.reward == "count_a~bt"


def test_a_scalar_behind_a_pairwise_reward_is_scored_under_the_scalars_name():
    trace = knockout(ScalarAsPairwise(CountA(), tau=0.5), n=5)
    assert {name for s in trace.scores.values() for name in s} == {CountA.name}
    assert trace.done.cost["reward_calls"] == 5


def test_a_purely_pairwise_judge_says_so_and_the_table_counts_matches_won():
    trace = knockout(LongerWins(), n=6)
    assert not trace.scores and trace.done.cost["reward_calls"] == 5  # one call per match
    (note,) = [a.text for a in views.reward_figure(trace).layout.annotations]
    assert note.startswith("pairwise reward longer_wins: no per-candidate score; see the bracket")
    rows = {r[1]: r for r in views.candidate_rows(trace)}
    (pick,) = trace.selected
    assert rows[pick][4] == f"3 matches won, to round {trace.done.metrics['rounds']}"
    losers = [r for i, r in rows.items() if i != pick]
    assert all("lost in round" in r[4] and "won, to round" in r[4] for r in losers)
    wins = sum(int(r[4].split("; ")[-1].split()[0]) for r in rows.values())
    assert wins == len([m for m in trace.matches if m.b is not None]) == 5  # each match has one winner
    assert "no per-candidate score" in candidate_html(trace, pick)


def test_bracket_labels_name_p_of_a_beating_b_and_the_title_names_the_judge():
    for reward, judge in ((LongerWins(), "pairwise reward longer_wins"), (CountA(), "pairwise reward count_a~bt")):
        trace = knockout(reward, n=6)
        fig = views.bracket_figure(trace)
        assert judge in fig.layout.title.text and "P(a beats b)" in fig.layout.title.text
        (points,) = fig.data
        for m, label in zip((m for r in trace.bracket() for m in r), points.text, strict=True):
            if m.b is None:
                assert label == f"{m.a} (bye) → <b>{m.winner}</b>"
            else:
                assert label == f"P({m.a} beats {m.b})={m.p_a:.2f} → <b>{m.winner}</b>"
        assert "P=" not in " ".join(points.text)
