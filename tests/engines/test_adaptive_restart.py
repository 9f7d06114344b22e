"""``adaptive_restart`` (Manvi, Singh & Ermon 2024): every decision of the controller, driven by
the exact oracle predictor on an enumerable toy, equals brute-force utility maximisation.

The brute force here enumerates the toy's sequences itself (its own tempered softmax, not the
sampler's code): q(x) = P(a restart scores strictly higher than x's finished form). A
continued prefix is worth 1 - q, a pruned one 1 - τ_prune; another batch is worth the myopic
gain E[max(r', r_best)] - r_best against a price τ_stop per sample. With the 0/1 reward used
here the rules are exact; a wrong predictor that counts ties as a restart doing better must
fail the replay.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from engines.errors import ConfigError
from engines.models import load_model
from engines.rewards.base import Reward
from engines.samplers import build_sampler
from engines.samplers.adaptive_restart import AdaptiveRestartConfig, build_predictor
from engines.task import Task
from engines.trace import Budget, collect

TASK = Task(prompt="toy")


class HasA(Reward):
    """1 when the text holds an 'a', else 0 (a right/wrong reward, like a verifier; P = 0.31 at T=1)."""

    name = "has_a"

    def score(self, task, candidates, *, usage=None):
        return [float("a" in str(x)) for x in candidates]


@functools.cache
def tempered_law(model, prefix: str, temperature: float) -> dict[str, float]:
    """P(finished text | text so far = prefix), every sequence enumerated with softmax(logits / T)."""
    law: dict[str, float] = {}
    for length in range(len(prefix), model.horizon + 1):
        for tail in itertools.product(model.alphabet, repeat=length - len(prefix)):
            text = prefix + "".join(tail)
            ids = [model.bos_id, *model.encode(text)]
            prob = 1.0
            for t in range(len(prefix) + 1, len(ids) + 1):
                logits = model.logits(ids[:t])
                token = ids[t] if t < len(ids) else model.eos_id
                if temperature == 0:
                    prob *= float(int(logits.argmax()) == token)
                else:
                    prob *= float(torch.softmax(logits / temperature, -1)[token])
            if prob > 0:
                law[text] = prob
    return law


def brute_q(model, reward, text, finished, t_cont, t_restart, ties_count=False) -> float:
    texts = list(tempered_law(model, "", 1.0))
    r = dict(zip(texts, reward.score(TASK, texts), strict=True))
    restart = tempered_law(model, "", t_restart)
    better = (lambda a, b: a >= b) if ties_count else (lambda a, b: a > b)
    beaten = lambda v: sum(p for y, p in restart.items() if better(r[y], v))  # noqa: E731
    if finished:
        return beaten(r[text])
    return sum(p * beaten(r[y]) for y, p in tempered_law(model, text, t_cont).items())


def gain_of_another(model, reward, best_value, t_restart) -> float:
    """E[max(r', r_best)] - r_best for one fresh sample."""
    restart = tempered_law(model, "", t_restart)
    values = dict(zip(restart, reward.score(TASK, list(restart)), strict=True))
    return sum(p * max(values[y] - best_value, 0.0) for y, p in restart.items())


def replay(trace, model, reward, cfg: AdaptiveRestartConfig, ties_count=False) -> int:
    """Walk the trace; at each decision recompute the utilities by enumeration and assert the
    controller chose their argmax. Returns the number of decisions checked."""
    events = trace.events
    drawn, checked, finished_rewards = 0, 0, {}
    pruned = {e.node for e in events if e.kind == "prune"}
    batch_start = 0
    for i, e in enumerate(events):
        if e.kind == "node" and e.parent == "root":  # a batch's samples come one after another
            if not (events[i - 1].kind == "node" and events[i - 1].parent == "root"):
                batch_start = drawn
            assert e.meta["temperature"] == pytest.approx(cfg.temperature_at(batch_start))
            drawn += 1
        if e.kind == "score" and e.reward == reward.name:
            finished_rewards[e.node] = e.value
        if e.kind != "score" or e.reward != "p_restart_better":
            continue
        node = trace.nodes[e.node]
        t_restart = cfg.temperature_at(drawn)
        q = brute_q(model, reward, trace.full_text(e.node), node.final, node.meta["temperature"], t_restart, ties_count)
        if e.partial:  # continue (worth 1 - q) or prune (worth 1 - τ_prune)
            assert e.value == pytest.approx(q, abs=1e-6)
            if e.node == trace.done.metrics["kept_for_a_pick"]:  # the last batch's best kept when nothing finished
                assert not finished_rewards and drawn == cfg.max_samples
            else:
                assert (e.node in pruned) == ((1 - q) < 1 - cfg.prune_threshold), f"prune decision on {e.node}"
        else:  # the best finished so far; sample more iff the myopic gain beats the price
            best = max(finished_rewards.values())
            assert finished_rewards[e.node] == best
            assert e.value == pytest.approx(q, abs=1e-6)
            more = gain_of_another(model, reward, best, t_restart) > cfg.stop_threshold
            went_on = any(x.kind == "node" and x.parent == "root" for x in events[i + 1:])
            assert went_on == more, f"stop decision after {drawn} samples"
        checked += 1
    return checked


CONFIGS = [
    {"max_samples": 12, "checkpoint_tokens": 2, "prune_threshold": 0.2, "stop_threshold": 0.1,
     "first_temperature": 0.3, "anneal_rate": 0.5},
    {"max_samples": 20, "checkpoint_tokens": 1, "prune_threshold": 0.1, "stop_threshold": 0.05,
     "batch_growth": 3, "first_temperature": 1.0},
    {"max_samples": 8, "checkpoint_tokens": 3, "prune_threshold": 0.25, "stop_threshold": 0.2,
     "first_temperature": 2.0, "anneal_rate": 0.7},  # the reverse schedule: later samples cooler
]


@pytest.mark.parametrize("params", CONFIGS)
def test_every_decision_is_the_brute_force_utility_maximiser(params):
    model, reward = load_model("toy:abc"), HasA()
    sampler = build_sampler("adaptive_restart", {**params, "max_new_tokens": 8, "predictor": "oracle"})
    decisions = prunes = early = wrong = 0
    for seed in range(6):
        trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(seed)))
        assert trace.done.status == "ok"
        decisions += replay(trace, model, reward, sampler.config)
        prunes += trace.done.metrics["pruned"]
        early += trace.done.metrics["stopped_early"]
        try:
            replay(trace, model, reward, sampler.config, ties_count=True)
        except AssertionError:
            wrong += 1
        pick = trace.done.picks[0]
        assert trace.reward(pick) == max(trace.reward(c) for c in trace.candidates)
    assert decisions > 12 and prunes > 0 and early > 0  # all three actions were exercised
    assert wrong > 0  # a predictor that counts ties as a restart doing better is caught


def test_the_annealing_schedule():
    cfg = AdaptiveRestartConfig(temperature=1.0, first_temperature=0.2, anneal_rate=0.5)
    assert [cfg.temperature_at(k) for k in (0, 1, 3)] == pytest.approx([0.2, 0.6, 0.9])
    assert AdaptiveRestartConfig(first_temperature=1.0).temperature_at(5) == 1.0  # off when T_first = T


def test_traced_cost_equals_metered_cost():
    model, reward = load_model("toy:abc"), HasA()
    for budget in (None, Budget(generated_tokens=20)):
        sampler = build_sampler("adaptive_restart", {"max_samples": 16, "checkpoint_tokens": 2, "max_new_tokens": 8,
                                                     "stop_threshold": 0.0, "predictor": "oracle"})
        trace = collect(sampler.run(TASK, model, reward, budget=budget, rng=torch.Generator().manual_seed(1)))
        nodes = [n for n in trace.nodes.values() if n.parent is not None]
        assert sum(n.tokens for n in nodes) == trace.done.cost["generated_tokens"]
        assert sum(e.kind == "score" for e in trace.events) == trace.done.cost["reward_calls"]
        started = sum(n.parent == "root" for n in nodes)
        assert trace.done.metrics.get("samples", started) == started
        if budget is not None:
            assert trace.done.cost["generated_tokens"] <= 20


def test_predictor_that_does_not_fit_the_model_is_refused():
    with pytest.raises(ConfigError, match="embedded:arith"):
        build_sampler("adaptive_restart", {"predictor": "arith"}).run(
            TASK, load_model("toy:abc"), HasA(), rng=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="enumerable toy"):  # any model without an enumerable law
        build_predictor("oracle", object(), HasA(), AdaptiveRestartConfig())


@pytest.mark.slow
def test_the_trained_arith_head_drives_a_run():
    from engines.prompts import builtin_prompt_set
    from engines.rewards import build_reward
    from engines.samplers.adaptive_restart import RESTART_DIR

    assert (RESTART_DIR / "config.json").exists(), "the restart head ships in engines/assets/arith/restart"
    task = builtin_prompt_set("arith").tasks[0]
    sampler = build_sampler("adaptive_restart", {"max_samples": 4, "checkpoint_tokens": 8, "max_new_tokens": 80,
                                                 "stop_threshold": 0.0})
    trace = collect(sampler.run(task, load_model("embedded:arith"), build_reward("math"),
                                rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok" and trace.done.picks
    qs = [e.value for e in trace.events if e.kind == "score" and e.reward == "p_restart_better"]
    assert qs and all(0.0 < q < 1.0 for q in qs) and not math.isnan(sum(qs))
    assert trace.done.cost["reward_tokens"] > 0  # the head's reads are metered


def test_a_run_that_prunes_everything_still_picks_a_finished_sample():
    model, reward = load_model("toy:abc"), HasA()
    sampler = build_sampler("adaptive_restart", {"max_samples": 3, "checkpoint_tokens": 1, "prune_threshold": 0.0,
                                                 "max_new_tokens": 8, "first_temperature": 1.0, "predictor": "oracle"})
    forced = 0
    for seed in range(6):
        trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(seed)))
        assert trace.done.status == "ok" and trace.nodes[trace.done.picks[0]].final
        replay(trace, model, reward, sampler.config)
        forced += trace.done.metrics["kept_for_a_pick"] is not None
    assert forced > 0
