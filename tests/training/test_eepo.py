"""``eepo`` on the toy tree policy: the second half comes from the unlearned policy, the weights come back bit for bit."""

from __future__ import annotations

import threading

import pytest
import torch

from engines.errors import Cancelled
from engines.training import build_strategy
from engines.training.base import Allowance
from tests.training.test_estimators import _setup
from tests.training.test_tree_strategies import run

LR = 0.5


def leaf_logprob(theta: torch.Tensor, prompt: int, text: str) -> torch.Tensor:
    logp = torch.log_softmax(theta, dim=-1)
    a, b = "ab".index(text[0]), "ab".index(text[1])
    return logp[prompt, 0, a] + logp[prompt, 1 + a, b]


def unlearned_theta(theta: torch.Tensor, first_half: list[tuple[int, str]], lr: float, step: str) -> torch.Tensor:
    """One ascent step on the first half's mean token NLL, computed here from the toy's tables:
    a fresh torch Adam's first step (maximize=True), or plain SGD."""
    theta = theta.detach().clone().requires_grad_(True)
    nll = -sum(leaf_logprob(theta, j, text) for j, text in first_half) / (2 * len(first_half))
    nll.backward()
    optimizer = (torch.optim.Adam if step == "adam" else torch.optim.SGD)([theta], lr=lr, maximize=True)
    optimizer.step()
    return theta.detach()


@pytest.mark.parametrize(("step", "lr"), [("sgd", LR), ("adam", 0.1)])
def test_eepo_second_half_comes_from_the_unlearned_policy_and_weights_are_restored_exactly(step, lr):
    policy, pool, reward = _setup()
    before = policy.theta.detach().clone()
    G = 4
    strategy = build_strategy("eepo", {"prompts_per_batch": 2, "group_size": G, "unlearn_lr": lr, "unlearn_step": step})
    for seed in range(5):
        events, batch = run(strategy, policy, pool, reward, Allowance(), seed)
        assert torch.equal(policy.theta.detach(), before)  # bit-identical, not just close
        nodes = {e.id: e for e in events if e.kind == "node"}
        groups = [e for e in events if e.kind == "group"]
        first = [(g.meta["prompt_index"], nodes[n].text) for g in groups for n in g.nodes[: G // 2]]
        perturbed = unlearned_theta(before, first, lr, step)
        rows = iter(batch.rollouts)
        for g in groups:
            j = g.meta["prompt_index"]
            assert g.meta["unlearned"] and g.meta["first_half"] == G // 2
            for k, node_id in enumerate(g.nodes):
                text, rollout = nodes[node_id].text, next(rows)
                restored = float(leaf_logprob(before, j, text))
                # the batch's old log-probs are the restored policy's (what the update compares against)
                assert sum(rollout.logprobs) == pytest.approx(restored, abs=1e-12)
                if k < G // 2:
                    assert nodes[node_id].logprob == pytest.approx(restored, abs=1e-12)
                    continue
                drawn = g.meta["perturbed_logprob"][k - G // 2]
                assert drawn == pytest.approx(float(leaf_logprob(perturbed, j, text)), abs=1e-9)
                assert nodes[node_id].logprob == pytest.approx(drawn, abs=1e-12)
                assert abs(drawn - restored) > 1e-3  # drawn from a changed policy


def test_eepo_without_unlearning_draws_the_second_half_from_the_same_policy():
    """The wrong variants (lr 0, or gated off) fail the 'changed policy' check above."""
    policy, pool, reward = _setup()
    for params in ({"unlearn_lr": 0.0}, {"unlearn_lr": LR, "entropy_gate": 0.0}):
        strategy = build_strategy("eepo", {"prompts_per_batch": 2, "group_size": 4, **params})
        events, _ = run(strategy, policy, pool, reward, Allowance(), 0)
        nodes = {e.id: e for e in events if e.kind == "node"}
        for g in (e for e in events if e.kind == "group"):
            for k, node_id in enumerate(g.nodes[2:]):
                restored = float(leaf_logprob(policy.theta.detach(), g.meta["prompt_index"], nodes[node_id].text))
                assert g.meta["perturbed_logprob"][k] == pytest.approx(restored, abs=1e-12)
            assert g.meta["unlearned"] is ("entropy_gate" not in params)


def test_eepo_restores_the_weights_when_the_run_is_cancelled_between_the_halves():
    policy, pool, reward = _setup()
    before = policy.theta.detach().clone()
    cancel = threading.Event()
    strategy = build_strategy("eepo", {"prompts_per_batch": 2, "group_size": 4, "unlearn_lr": LR})
    generator = strategy.collect(policy, pool, reward, Allowance(cancel=cancel), torch.Generator().manual_seed(0))
    scores = 0
    with pytest.raises(Cancelled):
        for event in generator:
            scores += event.kind == "score"
            if scores == 4:  # the first half is drawn; the unlearning step comes next
                cancel.set()
    assert scores == 4
    assert torch.equal(policy.theta.detach(), before)


class RolloutOnly:
    """A policy that only draws (as the TRL bridge's generation backend): no weights, no entropies."""

    trainable, name = False, "rollout-only"

    def __init__(self, inner):
        self.inner = inner

    def rollout(self, prompts, **kw):
        return self.inner.rollout(prompts, **kw)


@pytest.mark.parametrize(("name", "params"), [("eepo", {}), ("d3s", {"token_keep_start": 0.5})])
def test_strategies_that_need_the_weights_or_entropies_refuse_a_draw_only_policy_with_one_line(name, params):
    from engines.errors import ConfigError

    policy, pool, reward = _setup()
    strategy = build_strategy(name, {"prompts_per_batch": 2, "group_size": 4, **params})
    budget = Allowance(samples=100)
    with pytest.raises(ConfigError) as info:
        run(strategy, RolloutOnly(policy), pool, reward, budget, 0)
    assert "\n" not in str(info.value) and budget.spent_samples == 0
    run(build_strategy("d3s", {"token_keep_start": 1.0}), RolloutOnly(policy), pool, reward, Allowance(samples=100), 0)
