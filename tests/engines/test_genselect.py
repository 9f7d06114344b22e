"""GenSelect with scripted judges on the toy model, its defensive parser, and a real judge model.

The shared behaviour suite (test_sampler_behaviour.py) runs GenSelect with the toy model as
its own judge (whose output never parses, so the reward decides); here the same behaviours
are checked with scripted judges that do decide: same seed same trace, one ``done``,
budgets, cancel, JSON round trip, costs.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from engines.errors import ConfigError
from engines.models import load_model
from engines.samplers.genselect import GenSelect, GenSelectConfig, parse_choice
from engines.task import Task
from engines.trace import Budget, Trace, collect
from tests.engines.toys import CountA

TASK = Task(prompt="toy")
REWARD = CountA()


class ExactJudge:
    """Names the candidate with the highest CountA reward (the first of equals), after some chatter."""

    name = "scripted-exact"

    def __init__(self):
        self.calls = 0

    def judge(self, task, candidates, usage):
        self.calls += 1
        values = REWARD.score(task, list(candidates))
        best = values.index(max(values))
        return f"Solution {len(candidates)} looks long. Compared all.\nJudgment: {best + 1}"


class FirstJudge:
    """Always names the first candidate shown: pure position bias."""

    name = "scripted-first"

    def judge(self, task, candidates, usage):
        return "Judgment: 1"


class GarbageJudge:
    """Never gives a usable verdict."""

    name = "scripted-garbage"

    def __init__(self):
        self.outputs = iter(["<script>alert(1)</script>", "Judgment: 0", "Judgment: 999", "", "I cannot decide."] * 100)

    def judge(self, task, candidates, usage):
        return next(self.outputs)


def run(judge, seed=0, budget=None, cancel=None, **params):
    config = GenSelectConfig(**{"n": 6, "window": 3, "max_new_tokens": 8, **params})
    sampler = GenSelect(config, judge=judge)
    return collect(sampler.run(TASK, load_model("toy:abc"), REWARD, budget=budget, rng=torch.Generator().manual_seed(seed),
                               cancel=cancel))


def judged_groups(n: int, window: int) -> int:
    """Windows of two or more candidates over the tournament's rounds (byes are not judged)."""
    total = 0
    while n > 1:
        groups = math.ceil(n / window)
        total += groups - (1 if n % window == 1 else 0)
        n = groups
    return total


@pytest.mark.parametrize(("n", "window"), [(2, 2), (3, 2), (5, 2), (8, 3), (13, 4), (7, 8)])
def test_an_exact_judge_picks_the_best_through_the_tournament(n, window):
    for seed in range(3):
        judge = ExactJudge()
        trace = run(judge, seed=seed, n=n, window=window)
        rewards = {c: trace.reward(c) for c in trace.candidates}
        assert len(rewards) == n
        assert rewards[trace.done.picks[0]] == max(rewards.values())
        assert judge.calls == 2 * judged_groups(n, window) == trace.done.metrics["judge_calls"]
        assert trace.done.cost["reward_calls"] == n + judge.calls
        lost = {e.node for e in trace.events if e.kind == "prune"}
        assert lost == set(trace.candidates) - set(trace.done.picks)


def test_both_orders_cancel_a_position_biased_judge():
    for seed in range(4):
        both = run(FirstJudge(), seed=seed, n=8, window=2)
        rewards = {c: both.reward(c) for c in both.candidates}
        assert rewards[both.done.picks[0]] == max(rewards.values())  # every 1-1 split goes to the reward
        one = run(FirstJudge(), seed=seed, n=8, window=2, both_orders=False)
        assert one.done.picks[0] == one.candidates[0]  # one order: the bias picks the first drawn


@pytest.mark.parametrize(
    ("output", "count", "expected"),
    [
        ("Judgment: 2", 3, 1),
        ("judgment:3", 3, 2),
        ("Reasoning... Judgment: 1\nOn reflection, Judgment: [3]", 4, 2),
        ("Best: Solution 2", 2, 1),
        ("<b>Judgment: #2</b>", 2, 1),
        ("Judgment: 7", 3, None),
        ("Judgment: 0", 3, None),
        ("Judgment: -1", 3, None),
        ("Judgment: 99999999", 3, None),
        ("2", 3, None),  # a bare number is not a verdict
        ("", 3, None),
        (None, 3, None),
        ("x" * 100000 + "Judgment: 2", 3, 1),
    ],
)
def test_judge_output_is_parsed_defensively(output, count, expected):
    assert parse_choice(output, count) == expected


def test_unparseable_judgments_fall_back_to_the_reward():
    trace = run(GarbageJudge(), n=6, window=3)
    rewards = {c: trace.reward(c) for c in trace.candidates}
    assert rewards[trace.done.picks[0]] == max(rewards.values())
    assert all("no parseable judgment" in e.reason for e in trace.events if e.kind == "prune")


def test_same_seed_same_trace_and_json_round_trip():
    first, second = run(ExactJudge(), seed=5), run(ExactJudge(), seed=5)
    strip = lambda t: [{k: v for k, v in e.items() if k not in ("cost", "metrics")} for e in t.to_list()]  # noqa: E731
    assert strip(first) == strip(second)
    assert Trace.from_json(first.to_json()).to_list() == first.to_list()
    kinds = [e.kind for e in first.events]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and first.done.status == "ok"
    assert any(e.kind == "match" for e in first.events)


def test_budgets_and_cancel_are_honoured():
    tight = run(ExactJudge(), budget=Budget(reward_calls=7), n=6, window=3)
    assert tight.done.status == "budget" and tight.done.cost["reward_calls"] <= 7
    assert tight.done.picks  # the best scored candidate so far
    tokens = run(ExactJudge(), budget=Budget(generated_tokens=1))
    assert tokens.done.status == "budget" and tokens.done.cost["generated_tokens"] == 0
    cancel = threading.Event()
    cancel.set()
    stopped = run(ExactJudge(), cancel=cancel)
    assert stopped.done.status == "cancelled" and stopped.done.cost["generated_tokens"] == 0


def test_a_judge_too_small_for_the_window_is_refused_in_one_line():
    """The embedded arith policy (256-token context) cannot hold a GenSelect prompt."""
    from engines.prompts import builtin_prompt_set
    from engines.rewards import build_reward

    task = builtin_prompt_set("arith").tasks[0]
    sampler = GenSelect(GenSelectConfig(n=4, window=4, max_new_tokens=60, judge_tokens=24))
    with pytest.raises(ConfigError, match="holds 256 tokens; a window of 4"):
        collect(sampler.run(task, load_model("embedded:arith"), build_reward("math"), rng=torch.Generator().manual_seed(0)))


@pytest.mark.llamacpp
@pytest.mark.model
def test_a_served_judge_reads_the_window_and_is_metered(llamacpp_url):
    """SmolLM2 on a llama.cpp server judges arith candidates: the real path end to end (its verdicts are weak)."""
    from engines.prompts import builtin_prompt_set
    from engines.rewards import build_reward

    task = builtin_prompt_set("arith").tasks[0]
    sampler = GenSelect(GenSelectConfig(n=4, window=2, max_new_tokens=60, judge_tokens=32, judge=f"openai:{llamacpp_url}"))
    trace = collect(sampler.run(task, load_model("embedded:arith"), build_reward("math"), rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok" and trace.done.picks
    assert trace.done.metrics["judge_calls"] == 2 * 3 and trace.done.cost["reward_calls"] == 4 + 6
    assert trace.done.cost["reward_tokens"] > 0 and trace.done.cost["requests"] > 0
