"""Samplers reach the laws they claim, on an enumerable toy model.

Each test compares a sampler's output law with the exact one by a chi-square
goodness-of-fit test at a fixed seed (bins with expected count < 5 pooled),
and also checks the test has power: the untilted law must be rejected.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from engines.models import load_model
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import collect
from tests.engines.toys import CountA, ExactComparator

TASK = Task(prompt="toy")
ALPHA = 1e-3  # significance level of each goodness-of-fit test


def chi_square_p(observed: Counter, law: dict, total: int) -> float:
    """p-value of observed counts against ``law`` (probabilities), pooling bins with expected < 5."""
    keys = sorted(law, key=lambda k: -law[k])
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for key in keys:
        e = law[key] * total
        if e >= 5:
            obs.append(observed.get(key, 0))
            exp.append(e)
        else:
            pool_o += observed.get(key, 0)
            pool_e += e
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    unexplained = sum(v for k, v in observed.items() if k not in law)
    assert unexplained == 0, "samples outside the support"
    exp = np.array(exp) * (sum(obs) / sum(exp))
    return float(stats.chisquare(obs, exp).pvalue)


def pick_counts(sampler, model, reward, runs: int, seed: int) -> Counter:
    """How often each text is the pick over ``runs`` runs of ``sampler`` (one pick per run)."""
    gen = torch.Generator().manual_seed(seed)
    picks: Counter = Counter()
    for _ in range(runs):
        trace = collect(sampler.run(TASK, model, reward, rng=gen))
        (pick,) = trace.done.picks
        picks[trace.full_text(pick)] += 1
    return picks


def tilted(model, reward, beta: float) -> dict[str, float]:
    p = model.distribution()
    r = dict(zip(p, reward.score(TASK, list(p)), strict=True))
    weights = {x: p[x] * math.exp(r[x] / beta) for x in p}
    z = sum(weights.values())
    return {x: w / z for x, w in weights.items()}


def test_statistical_rejection_sampling_reaches_the_tilted_law():
    model, reward, beta = load_model("toy:abc"), CountA(), 2.0
    sampler = build_sampler(
        "rejection",
        {"mode": "statistical", "beta": beta, "r_max": 4.4, "n": 4000, "accept": 4000, "batch_size": 256, "max_new_tokens": 8},
    )
    trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(11)))
    accepted = [trace.full_text(i) for i in trace.done.picks]
    assert len(accepted) > 500
    rate = trace.done.metrics["acceptance_rate"]
    assert 0 < rate < 1
    # exact acceptance rate: E_p[exp((r - r_max)/β)]
    p = model.distribution()
    r = dict(zip(p, reward.score(TASK, list(p)), strict=True))
    expected_rate = sum(p[x] * math.exp((r[x] - 4.4) / beta) for x in p)
    assert abs(rate - expected_rate) < 4 * math.sqrt(expected_rate * (1 - expected_rate) / 4000)
    counts = Counter(accepted)
    assert chi_square_p(counts, tilted(model, reward, beta), len(accepted)) > ALPHA
    assert chi_square_p(counts, p, len(accepted)) < ALPHA  # the test can tell the base law apart


def test_best_of_n_pick_follows_the_law_of_the_maximum():
    model, reward, n, runs = load_model("toy:abc"), CountA(), 4, 1500
    p = model.distribution()
    r = dict(zip(p, reward.score(TASK, list(p)), strict=True))
    values = sorted(set(r.values()))
    cdf = {v: sum(p[x] for x in p if r[x] <= v) for v in values}
    law, previous = {}, 0.0
    for v in values:  # P(max = v) = F(v)^N - F(v-)^N
        law[v] = cdf[v] ** n - previous
        previous = cdf[v] ** n
    sampler = build_sampler("best_of_n", {"n": n, "max_new_tokens": 8})
    picks = Counter()
    gen = torch.Generator().manual_seed(5)
    for _ in range(runs):
        trace = collect(sampler.run(TASK, model, reward, rng=gen))
        picks[trace.reward(trace.done.picks[0])] += 1
    assert chi_square_p(picks, law, runs) > ALPHA
    single = {v: sum(p[x] for x in p if r[x] == v) for v in values}
    assert chi_square_p(picks, single, runs) < ALPHA  # not the law of a single draw


@pytest.mark.parametrize("n", [2, 3, 5, 6, 7, 8, 13])
def test_knockout_with_an_exact_comparator_returns_the_best(n):
    model, reward = load_model("toy:abc"), CountA()
    sampler = build_sampler("knockout", {"n": n, "max_new_tokens": 8})
    for seed in range(5):
        trace = collect(sampler.run(TASK, model, ExactComparator(reward), rng=torch.Generator().manual_seed(seed)))
        texts = [trace.full_text(i) for i in trace.candidates]
        best = max(reward.score(TASK, texts))
        (winner,) = trace.done.picks
        assert reward.score(TASK, [trace.full_text(winner)])[0] == best
        played = [m for m in trace.matches if m.b is not None]
        assert len(played) == n - 1
        assert trace.done.metrics["rounds"] == math.ceil(math.log2(n))
        later_rounds = {m.round for m in trace.matches if m.round > 1}
        for rnd in later_rounds:  # byes only in round one: later rounds are full
            assert all(m.b is not None for m in trace.matches if m.round == rnd)


def test_rso_pool_mode_accepts_the_maximum_and_never_more_than_n():
    model, reward = load_model("toy:abc"), CountA()
    sampler = build_sampler("rejection", {"mode": "statistical", "beta": 0.01, "n": 12, "accept": 1, "max_new_tokens": 8})
    trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(2)))
    rewards = [trace.reward(i) for i in trace.candidates]
    (pick,) = trace.done.picks
    assert trace.reward(pick) == max(rewards)  # at β → 0 only the max survives
    assert len(trace.candidates) == 12
