"""Rules of the selection strategies lspo, d3s, pf_ppo and eepo on the toy tree policy, and the
D3S gradient against its closed form (tests/training/test_estimators.py's bounds)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from engines.task import Task
from engines.training import build_strategy
from engines.training.base import Allowance, PromptPool, Rollout
from engines.training.rewards import TrainingReward
from engines.training.strategies.d3s import D3S, max_variance_subset, population_variance
from engines.training.strategies.pf_ppo import FILTERS
from tests.training.test_estimators import (
    RIGHT,
    SEEDS,
    _setup,
    assert_differs,
    assert_matches,
    binom,
    estimates,
    exact_direction,
    grpo_advantages,
    pattern_coefficient,
    success,
)
from tests.training.test_tree_strategies import run
from tests.training.toy import LeafReward


def groups_of(events):
    return [e for e in events if e.kind == "group"]


# ---------------------------------------------------------------------------
# lspo


class RandomLengthPolicy:
    """Completions of a prompt-dependent random length (1 to 2 + 2j tokens), so mean lengths spread."""

    trainable, name = True, "toy:lengths"

    def rollout(self, prompts, *, temperature, max_new_tokens, rng):
        out = []
        for prompt in prompts:
            j = int(prompt[1:])
            n = min(1 + int(torch.randint(2 + 2 * j, (1,), generator=rng)), max_new_tokens)
            out.append(Rollout(prompt_ids=(j,), completion_ids=(0,) * n, logprobs=(0.0,) * n, text="a" * n))
        return out


def test_lspo_keeps_exactly_the_prompts_in_the_short_and_long_length_bands():
    pool = PromptPool(tuple(Task(prompt=f"p{j}", chat=False) for j in range(12)))
    reward = TrainingReward(outcome=LeafReward(RIGHT), control="random")  # rewards with and without variance
    strategy = build_strategy("lspo", {"prompts_per_batch": 6, "group_size": 4, "generation_prompts": 30, "max_new_tokens": 30})
    seen = set()
    for seed in range(15):
        events, batch = run(strategy, RandomLengthPolicy(), pool, reward, Allowance(), seed)
        tokens = {e.id: e.tokens for e in events if e.kind == "node" and e.parent is not None}
        by_batch: dict[int, list] = {}
        for g in groups_of(events):
            by_batch.setdefault(g.meta["generation_batch"], []).append(g)
        for groups in by_batch.values():
            degenerate = [max(g.rewards) == min(g.rewards) for g in groups]
            assert [g.rule == "no reward variance" for g in groups] == degenerate
            live = [g for g, d in zip(groups, degenerate, strict=True) if not d]
            if not live:
                continue
            lengths = [sum(tokens[n] for n in g.nodes) / len(g.nodes) for g in live]
            low, high, top = np.quantile(lengths, [0.3, 0.65, 0.95], method="inverted_cdf")
            for g, length in zip(live, lengths, strict=True):
                in_band = length <= low or high <= length <= top
                assert (g.rule in (None, "batch full")) == in_band, (length, low, high, top, g.rule)
                seen.add(g.rule)
        assert batch.groups_kept <= 6 and len(batch) == 4 * batch.groups_kept
    assert {None, "length in the middle band", "length above the max quantile"} <= seen


def test_lspo_rejects_quantiles_out_of_order():
    with pytest.raises(Exception, match="low_quantile < high_quantile"):
        build_strategy("lspo", {"low_quantile": 0.7, "high_quantile": 0.6})


# ---------------------------------------------------------------------------
# d3s


def brute_force_max_variance(values, k):
    return max(population_variance([values[i] for i in subset]) for subset in itertools.combinations(range(len(values)), k))


def test_d3s_subset_reaches_the_brute_force_maximum_variance():
    gen = torch.Generator().manual_seed(0)
    top_abs_misses = 0
    for trial in range(300):
        n = int(torch.randint(2, 10, (1,), generator=gen))
        if trial % 3 == 0:  # ties, as binary rewards give
            values = torch.randint(3, (n,), generator=gen).double().tolist()
        else:
            values = torch.randn(n, generator=gen, dtype=torch.float64).tolist()
        for k in range(1, n + 1):
            chosen = max_variance_subset(values, k)
            assert len(chosen) == len(set(chosen)) == k
            best = brute_force_max_variance(values, k)
            assert population_variance([values[i] for i in chosen]) >= best - 1e-12
            # wrong variant: the k largest |A| (not the max-variance subset) falls short somewhere
            by_abs = sorted(range(n), key=lambda i: -abs(values[i]))[:k]
            top_abs_misses += population_variance([values[i] for i in by_abs]) < best - 1e-9
    assert top_abs_misses > 0


def _toy_entropy(policy, rollout):
    """H of the toy's table at each token of ``rollout`` (computed here from theta)."""
    p = torch.softmax(policy.theta.detach(), dim=-1)
    j, first = rollout.prompt_ids[0], rollout.completion_ids[0]
    h = -(p * p.log()).sum(-1)
    return [float(h[j, 0]), float(h[j, 1 + first])]


def test_d3s_token_selection_matches_brute_force_top_k():
    policy, pool, reward = _setup()
    strategy = build_strategy("d3s", {"prompts_per_batch": 2, "group_size": 6, "token_keep_start": 0.3, "token_keep_end": 1.0})
    for seed in range(20):
        _, batch = run(strategy, policy, pool, reward, Allowance(), seed)
        scores = [abs(a) * h for r, a in zip(batch.rollouts, batch.advantages, strict=True) for h in _toy_entropy(policy, r)]
        weights = [w for row in batch.token_weights for w in row]
        k = math.ceil(0.3 * len(scores))
        selected = sorted(s for s, w in zip(scores, weights, strict=True) if w != 0.0)
        assert len(selected) == k
        assert selected == pytest.approx(sorted(sorted(scores, reverse=True)[:k]))  # brute force: sort all, take k
        assert all(w == pytest.approx(1 / k) for w in weights if w)  # token_mean over the kept tokens


def test_d3s_schedule_goes_from_aggressive_to_relaxed():
    policy, pool, reward = _setup()
    params = {"prompts_per_batch": 2, "group_size": 8, "sample_keep_start": 0.25, "sample_keep_end": 0.75,
              "token_keep_start": 0.5, "token_keep_end": 1.0, "schedule_steps": 10}
    strategy = build_strategy("d3s", params)
    for step, sample_keep, token_keep in [(0, 0.25, 0.5), (5, 0.5, 0.75), (10, 0.75, 1.0), (500, 0.75, 1.0)]:
        strategy.step = step
        assert strategy.keep_fractions() == pytest.approx((sample_keep, token_keep))
        events, batch = run(strategy, policy, pool, reward, Allowance(), step)
        assert len(batch) == 2 * math.ceil(8 * sample_keep)
        zeros = sum(w == 0.0 for row in batch.token_weights for w in row)
        assert zeros == 2 * len(batch) - math.ceil(token_keep * 2 * len(batch))
        assert all(g.meta["sample_keep"] == pytest.approx(sample_keep) for g in groups_of(events))


def test_d3s_batch_scope_keeps_the_max_variance_subset_of_the_whole_batch():
    policy, pool, reward = _setup()
    strategy = build_strategy("d3s", {"prompts_per_batch": 3, "group_size": 3, "scope": "batch", "token_keep_start": 1.0})
    for seed in range(10):
        events, batch = run(strategy, policy, pool, reward, Allowance(), seed)
        advantages = [a for g in groups_of(events) for a in g.advantages]
        assert len(batch) == math.ceil(0.5 * 9)
        assert population_variance(batch.advantages) == pytest.approx(brute_force_max_variance(advantages, len(batch)))


def test_d3s_gradient_matches_the_one_right_one_wrong_closed_form():
    policy, pool, reward = _setup()
    G, M = 4, 2
    params = {"aggregation": "sample_sum", "prompts_per_batch": 2, "group_size": G, "sample_keep_start": 0.5,
              "sample_keep_end": 0.5, "token_keep_start": 1.0}
    strategy = build_strategy("d3s", params)
    p = success(policy).detach().tolist()
    coeff = [
        sum(binom(m, G, pj) * pattern_coefficient(1, 2, pj, *grpo_advantages(m, G)) for m in range(1, G)) / (2 * M)
        for pj in p
    ]
    exact = exact_direction(policy, coeff)
    assert_matches(estimates(strategy, policy, pool, reward, SEEDS), exact)

    class RandomSubset(D3S):  # wrong variant: k samples at random instead of the max-variance subset
        def select_samples(self, groups, fraction):
            for group in groups:
                chosen = set(torch.randperm(len(group.rewards), generator=self.gen)[:2].tolist())
                group.kept = [i in chosen for i in range(len(group.rewards))]

    wrong = RandomSubset(strategy.config)
    wrong.gen = torch.Generator().manual_seed(1)
    assert_differs(estimates(wrong, policy, pool, reward, 2 * SEEDS), exact)


# ---------------------------------------------------------------------------
# pf_ppo


class NoisyLearnedReward:
    """A stand-in for a learned reward: the true leaf score plus noise that is larger on wrong samples."""

    name = "noisy"

    def __call__(self, task, completions, rng):
        true = LeafReward(RIGHT).score(task, completions)
        noise = torch.rand(len(completions), generator=rng, dtype=torch.float64).tolist()
        return [t + (0.3 if t else 1.1) * u for t, u in zip(true, noise, strict=True)]


def independent_filter(rule, rewards, kept):
    """Check ``kept`` against the rule from the rewards alone; raises AssertionError otherwise."""
    best = max(rewards)
    if rule == "keep_all":
        assert kept == list(range(len(rewards)))
    elif rule == "best_of_n":
        assert len(kept) == 1 and rewards[kept[0]] == best
    elif rule == "best_worst":
        assert len(kept) == 2 and {rewards[i] for i in kept} == {best, min(rewards)}
    else:
        assert len(kept) == 2 and best in [rewards[i] for i in kept]


def independent_r2(x, y):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    return 1 - (residual**2).sum() / ((y - y.mean()) ** 2).sum()


def test_pf_ppo_picks_the_filter_with_the_highest_measured_r2_and_keeps_by_its_rule():
    policy, pool, _ = _setup()
    strategy = build_strategy("pf_ppo", {"prompts_per_batch": 2, "group_size": 4, "calibration_prompts": 6})
    strategy.true_score = LeafReward(RIGHT)
    chosen_seen = set()
    for seed in range(25):
        budget = Allowance()
        events, batch = run(strategy, policy, pool, NoisyLearnedReward(), budget, seed)
        groups = groups_of(events)
        held = [g for g in groups if g.rule == "held out: filter calibration"]
        train = [g for g in groups if g.rule != "held out: filter calibration"]
        assert len(held) == 6 and len(train) == 2 and not any(g.kept for g in held)
        r2 = {}
        for rule in FILTERS:
            xs, ys = [], []
            for g in held:
                kept = g.meta["filter_kept"][rule]
                independent_filter(rule, g.rewards, kept)
                xs += [g.rewards[i] for i in kept]
                ys += [g.meta["true_scores"][i] for i in kept]
            r2[rule] = independent_r2(xs, ys)
            reported = held[0].meta["r2"][rule]
            assert (reported is None) == (r2[rule] is None)
            if reported is not None:
                assert reported == pytest.approx(r2[rule], abs=1e-9)
        measured = {rule: v for rule, v in r2.items() if v is not None}
        chosen = held[0].meta["filter"]
        assert measured[chosen] == pytest.approx(max(measured.values()), abs=1e-12)
        chosen_seen.add(chosen)
        rows = iter(batch.rewards)
        for g in train:  # the training groups keep by the chosen rule, in order
            independent_filter(chosen, g.rewards, g.meta["kept_indices"])
            assert [next(rows) for _ in g.meta["kept_indices"]] == [g.rewards[i] for i in g.meta["kept_indices"]]
        assert next(rows, None) is None
        assert budget.spent_samples == 8 * 4  # calibration samples are paid for
    assert len(chosen_seen) >= 2, chosen_seen  # the choice depends on the measured R^2


def test_pf_ppo_fixed_filters_keep_what_their_rule_says():
    policy, pool, _ = _setup()
    for rule in FILTERS:
        strategy = build_strategy("pf_ppo", {"prompts_per_batch": 3, "group_size": 5, "filter": rule})
        for seed in range(10):
            budget = Allowance()
            events, batch = run(strategy, policy, pool, NoisyLearnedReward(), budget, seed)
            assert budget.spent_samples == 15  # no calibration draws with a fixed filter
            rows = iter(zip(batch.rewards, batch.advantages, strict=True))
            for g in groups_of(events):
                kept = g.meta["kept_indices"]
                independent_filter(rule, g.rewards, kept)
                for i in kept:  # the batch holds the kept samples in order, with their group advantages
                    assert next(rows) == pytest.approx((g.rewards[i], g.advantages[i]))
            assert next(rows, None) is None


@pytest.mark.parametrize("rule", ["best_worst", "best_of_n"])
def test_pf_ppo_fixed_filter_gradient_matches_its_closed_form(rule):
    policy, pool, reward = _setup()
    G, M = 4, 2
    strategy = build_strategy("pf_ppo", {"aggregation": "sample_sum", "prompts_per_batch": 2, "group_size": G, "filter": rule})
    p = success(policy).detach().tolist()
    if rule == "best_worst":
        coeff = [sum(binom(k, G, pj) * pattern_coefficient(1, 2, pj, *grpo_advantages(k, G)) for k in range(1, G)) / (2 * M) for pj in p]
    else:
        coeff = [sum(binom(k, G, pj) * grpo_advantages(k, G)[0] / pj for k in range(1, G)) / M for pj in p]
    exact = exact_direction(policy, coeff)
    assert_matches(estimates(strategy, policy, pool, reward, SEEDS), exact)
    keep_all = build_strategy("pf_ppo", {"aggregation": "sample_sum", "prompts_per_batch": 2, "group_size": G, "filter": "keep_all"})
    assert_differs(estimates(keep_all, policy, pool, reward, SEEDS), exact)  # wrong variant: no filtration
