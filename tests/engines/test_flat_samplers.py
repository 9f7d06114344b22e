"""Each flat sampler's pick is the one its paper's rule gives, checked from the trace."""

from __future__ import annotations

import statistics
from collections import Counter

import torch

from engines.models import load_model
from engines.rewards.verifiable import extract_answer
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import collect
from tests.engines.toys import DigitValue

TASK = Task(prompt="number?", answer="7")


def run(name, reward=None, seed=0, **params):
    model = load_model("toy:digits")
    params.setdefault("max_new_tokens", 3)
    sampler = build_sampler(name, params)
    return collect(sampler.run(TASK, model, reward or DigitValue(), rng=torch.Generator().manual_seed(seed)))


def texts(trace):
    return {i: trace.full_text(i) for i in trace.candidates}


def test_best_of_n_picks_the_maximum():
    trace = run("best_of_n", n=12)
    rewards = {i: trace.reward(i) for i in trace.candidates}
    assert rewards[trace.done.picks[0]] == max(rewards.values())


def test_majority_picks_the_modal_answer():
    for seed in range(4):
        trace = run("majority", seed=seed, n=15, temperature=0.5)
        answers = Counter(a for a in map(extract_answer, texts(trace).values()) if a is not None)
        top = max(answers.values())
        assert extract_answer(trace.full_text(trace.done.picks[0])) in {a for a, c in answers.items() if c == top}


def test_weighted_majority_picks_the_answer_with_the_largest_total_reward():
    trace = run("weighted_majority", n=15, temperature=0.7)
    totals = Counter()
    for i, text in texts(trace).items():
        totals[extract_answer(text)] += trace.reward(i)
    pick_answer = extract_answer(trace.full_text(trace.done.picks[0]))
    assert totals[pick_answer] == max(totals.values())


def test_best_of_majority_keeps_frequent_answers_and_ranks_by_reward():
    trace = run("best_of_majority", n=20, k=2, alpha=0.1, temperature=0.6)
    answers = {i: extract_answer(t) for i, t in texts(trace).items()}
    freq = Counter(answers.values())
    frequent = {a for a, c in freq.items() if c / 20 >= 0.1}
    picked = [answers[p] for p in trace.done.picks]
    assert len(picked) == min(2, len(frequent)) and len(set(picked)) == len(picked)
    assert set(picked) <= frequent
    best_per_answer = {a: max(trace.reward(i) for i in answers if answers[i] == a) for a in frequent}
    assert sorted(best_per_answer.values(), reverse=True)[: len(picked)] == [trace.reward(p) for p in trace.done.picks]
    for node in trace.pruned:
        assert answers[node] not in frequent


def test_preference_pairs_strategies():
    trace = run("preference_pairs", n=16, strategy="sweet_spot", temperature=1.5)
    chosen, rejected = trace.done.picks
    rewards = {i: trace.reward(i) for i in trace.candidates}
    assert rewards[chosen] == max(rewards.values())
    target = statistics.fmean(rewards.values()) - 2 * statistics.pstdev(rewards.values())
    others = [v for i, v in rewards.items() if i != chosen]
    assert abs(rewards[rejected] - target) == min(abs(v - target) for v in others)
    maxmin = run("preference_pairs", n=16, strategy="max_min", temperature=1.5)
    rewards = {i: maxmin.reward(i) for i in maxmin.candidates}
    assert [rewards[i] for i in maxmin.done.picks] == [max(rewards.values()), min(rewards.values())]
    strict = run("preference_pairs", n=16, strategy="west_of_n", min_confidence=1.0, temperature=1.5)
    assert strict.done.picks == [] and "no confident pair" in strict.done.metrics["note"]


def test_threshold_rejection_keeps_only_candidates_above_the_threshold():
    trace = run("rejection", mode="threshold", threshold=0.5, n=30, accept=3)
    assert 0 < len(trace.done.picks) <= 3
    assert all(trace.reward(p) >= 0.5 for p in trace.done.picks)
    assert all(trace.reward(n) < 0.5 for n, why in trace.pruned.items() if why == "rejected")
