"""The adaptive and soft-selection samplers reach the laws they claim, on enumerable toys.

- ``mini_n``: the stopping round follows the truncated geometric law of round success
  π = 1 - (1 - s)^m, and the mean generated tokens equal m·E[R]·E_q[tokens].
- ``soft_best_of_k``: the pick law is E[Σ_i 1[y_i = y] softmax(r/T)_i], enumerated
  over every k-tuple of reward values.

Each law is checked by chi-square at a fixed seed, with a wrong law that must be rejected.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import pytest
import torch

from engines.models import load_model
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import collect
from tests.engines.test_exactness import ALPHA, chi_square_p
from tests.engines.toys import CountA

TASK = Task(prompt="toy")


def reward_law(model, reward) -> dict[float, float]:
    """P_q(r = v) for every reward value v of the toy (q = the model at temperature 1)."""
    p = model.distribution()
    law: dict[float, float] = defaultdict(float)
    for x, v in zip(p, reward.score(TASK, list(p)), strict=True):
        law[round(v, 9)] += p[x]
    return dict(law)


def stopping_law(success: float, mini_n: int, rounds: int) -> dict[int, float]:
    """P(R = l): rounds clear independently with π = 1 - (1 - s)^m; the last round ends the run anyway."""
    pi = 1.0 - (1.0 - success) ** mini_n
    law = {l: (1 - pi) ** (l - 1) * pi for l in range(1, rounds)}
    law[rounds] = (1 - pi) ** (rounds - 1)
    return law


def test_mini_n_stopping_round_and_expected_cost_are_exact():
    model, reward, tau, m, n, runs = load_model("toy:abc"), CountA(), 1.0, 2, 8, 800
    values = reward_law(model, reward)
    s = sum(p for v, p in values.items() if v >= tau)
    law = stopping_law(s, m, n // m)
    p = model.distribution()
    tokens_per_candidate = sum(p[x] * (len(x) + 1) for x in p)  # the end token is generated too
    expected_tokens = m * sum(l * q for l, q in law.items()) * tokens_per_candidate
    sampler = build_sampler("mini_n", {"n": n, "mini_n": m, "threshold": tau, "max_new_tokens": 8})
    gen = torch.Generator().manual_seed(7)
    rounds, tokens = Counter(), []
    for _ in range(runs):
        trace = collect(sampler.run(TASK, model, reward, rng=gen))
        rounds[trace.done.metrics["rounds"]] += 1
        tokens.append(trace.done.cost["generated_tokens"])
        assert len(trace.candidates) == m * trace.done.metrics["rounds"]
        pick = trace.reward(trace.done.picks[0])
        assert pick == max(trace.reward(c) for c in trace.candidates)
        assert (pick >= tau) == trace.done.metrics["early_exit"] or trace.done.metrics["rounds"] == n // m
    assert chi_square_p(rounds, law, runs) > ALPHA
    # a wrong law: the exit test on one candidate per round (π = s) is told apart
    assert chi_square_p(rounds, stopping_law(s, 1, n // m), runs) < ALPHA
    mean = sum(tokens) / runs
    sd = (sum((t - mean) ** 2 for t in tokens) / (runs - 1)) ** 0.5
    assert abs(mean - expected_tokens) < 4 * sd / math.sqrt(runs)
    assert abs(mean - n * tokens_per_candidate) > 4 * sd / math.sqrt(runs)  # not the cost of best-of-N


def test_mini_n_without_early_exit_is_best_of_n():
    model, reward = load_model("toy:abc"), CountA()
    sampler = build_sampler("mini_n", {"n": 7, "mini_n": 3, "threshold": 100.0, "max_new_tokens": 8})
    trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(1)))
    assert len(trace.candidates) == 7 and trace.done.metrics["rounds"] == 3 and not trace.done.metrics["early_exit"]


def soft_pick_law(values: dict[float, float], k: int, temperature: float) -> dict[float, float]:
    """The law of the picked reward value: every k-tuple of values, weighted by its probability."""
    law: dict[float, float] = defaultdict(float)
    items = list(values.items())
    for combo in itertools.product(items, repeat=k):
        prob = math.prod(q for _, q in combo)
        rewards = [v for v, _ in combo]
        top = max(rewards)
        weights = [math.exp((r - top) / temperature) for r in rewards]
        total = sum(weights)
        for r, w in zip(rewards, weights, strict=True):
            law[r] += prob * w / total
    return dict(law)


@pytest.mark.parametrize("temperature", [0.3, 1.0])
def test_soft_best_of_k_pick_follows_the_softmax_law(temperature):
    model, reward, k, runs = load_model("toy:abc"), CountA(), 3, 1500
    values = reward_law(model, reward)
    law = soft_pick_law(values, k, temperature)
    sampler = build_sampler("soft_best_of_k", {"n": k, "selection_temperature": temperature, "max_new_tokens": 8})
    gen = torch.Generator().manual_seed(3)
    picks = Counter()
    for _ in range(runs):
        trace = collect(sampler.run(TASK, model, reward, rng=gen))
        picks[round(trace.reward(trace.done.picks[0]), 9)] += 1
    assert chi_square_p(picks, law, runs) > ALPHA
    hard = soft_pick_law(values, k, 1e-6)  # best-of-k: the law of the maximum
    assert chi_square_p(picks, hard, runs) < ALPHA
