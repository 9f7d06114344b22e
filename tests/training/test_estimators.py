"""Each strategy's gradient estimate, averaged over seeds, against the closed form its docstring states.

The toy policy (tests/training/toy.py) is a tabular softmax over a depth-2 tree, one table per
prompt, with binary rewards: p_j = P(right | prompt j) and grad p_j are exact. A strategy's
estimate is minus the gradient of the update's loss (engines.training.update.batch_loss) on
the batch its ``collect`` returns, with ``sample_sum`` aggregation. Expected values are sums
over outcome patterns with binomial probabilities, computed here independently of the
strategies' code. Bounds: |mean - exact| <= Z standard errors of the mean (from the sample
variance) on every coordinate; every wrong variant must break that bound somewhere.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.training import build_strategy
from engines.training.base import Allowance, PromptPool
from engines.training.rewards import TrainingReward
from engines.training.strategies.reinforce_rej import ReinforceRej
from engines.training.strategies.polarity import WeightedReinforce
from engines.training.strategies.raft import RAFT
from engines.training.strategies.reinforce_ada import ReinforceAda
from engines.training.strategies.dynamic_sampling import DynamicSampling
from engines.training.update import batch_loss
from engines.task import Task
from tests.training.toy import LEAVES, LeafReward, TreePolicy

Z = 4.5  # about 1e-5 two-sided per coordinate; 12 coordinates
SEEDS = 300
RIGHT = {0: {"aa"}, 1: {"ab", "bb"}}


def _theta(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.8


def _setup(prompts: int = 2, control: str = "exact"):
    policy = TreePolicy(_theta()[:prompts])
    pool = PromptPool(tuple(Task(prompt=f"p{j}", chat=False) for j in range(prompts)))
    reward = TrainingReward(outcome=LeafReward(RIGHT), control=control)
    return policy, pool, reward


def success(policy: TreePolicy) -> torch.Tensor:
    """p_j (differentiable)."""
    leaves = policy.leaf_probs()
    mask = torch.tensor([[leaf in RIGHT[j] for leaf in LEAVES] for j in range(leaves.shape[0])], dtype=leaves.dtype)
    return (leaves * mask).sum(1)


def exact_direction(policy: TreePolicy, coefficients: list[float]) -> torch.Tensor:
    """sum_j coefficients[j] * grad p_j."""
    p = success(policy)
    (grad,) = torch.autograd.grad((p * torch.tensor(coefficients, dtype=p.dtype)).sum(), policy.theta)
    return grad


def estimates(strategy, policy, pool, reward, seeds: int, *, reference=None, kl_coef: float = 0.0) -> torch.Tensor:
    out = []
    for seed in range(seeds):
        rng = torch.Generator().manual_seed(seed)
        generator = strategy.collect(policy, pool, reward, Allowance(samples=10**9), rng)
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                batch = stop.value
                break
        if len(batch) == 0:
            out.append(torch.zeros_like(policy.theta).flatten())
            continue
        loss, _ = batch_loss(policy, batch, reference=reference, kl_coef=kl_coef)
        (grad,) = torch.autograd.grad(loss, policy.theta)
        out.append(-grad.flatten())
    return torch.stack(out)


def z_scores(samples: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    se = samples.std(0) / math.sqrt(len(samples))
    return (samples.mean(0) - exact.flatten()).abs() / (se + 1e-12)


def assert_matches(samples, exact):
    z = z_scores(samples, exact)
    print(f"match z {float(z.max()):.2f}")
    assert float(z.max()) <= Z, f"max z {float(z.max()):.2f}: mean {samples.mean(0)} vs exact {exact.flatten()}"


def assert_differs(samples, exact):
    z = z_scores(samples, exact)
    print(f"differ z {float(z.max()):.2f}")
    assert float(z.max()) > Z, f"a wrong variant passed (max z {float(z.max()):.2f})"


def binom(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


def grpo_advantages(k: int, n: int, std: bool = True) -> tuple[float, float]:
    """(A right, A wrong) in a group with k right of n."""
    if k in (0, n):
        return 0.0, 0.0
    mean = k / n
    spread = math.sqrt(k * (n - k) / (n * (n - 1))) + 1e-6 if std else 1.0
    return (1 - mean) / spread, -mean / spread


def pattern_coefficient(k: int, n: int, p: float, a_right: float, a_wrong: float) -> float:
    """E[sum_i A_i grad log p(x_i) | k right] = this * grad p (right samples ~ p(x | right))."""
    return k * a_right / p - (n - k) * a_wrong / (1 - p)


def _params(**extra):
    return {"aggregation": "sample_sum", **extra}


# ---------------------------------------------------------------------------


def test_grpo_matches_pattern_sum_and_kl_term():
    policy, pool, reward = _setup()
    B, G, beta = 2, 4, 0.5
    strategy = build_strategy("grpo", _params(prompts_per_batch=B, group_size=G))
    reference = TreePolicy(_theta(1)).frozen_copy()
    samples = estimates(strategy, policy, pool, reward, SEEDS, reference=reference, kl_coef=beta)
    p = success(policy).detach().tolist()
    coeff = [sum(binom(k, G, pj) * pattern_coefficient(k, G, pj, *grpo_advantages(k, G)) for k in range(G + 1)) / (G * 2) for pj in p]
    # k3's expected gradient: grad of sum_s d(s) KL(ref(.|s) || pi(.|s)), reach probabilities d held fixed
    logp = torch.log_softmax(policy.theta, dim=-1)
    ref_logp = torch.log_softmax(reference.theta, dim=-1)
    reach = torch.softmax(policy.theta, dim=-1).detach()
    d = torch.stack([torch.ones(2, dtype=logp.dtype), reach[:, 0, 0], reach[:, 0, 1]], dim=1)  # [prompts, node]
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    (kl_grad,) = torch.autograd.grad((d * kl).sum() / 2, policy.theta)
    exact = exact_direction(policy, coeff) - beta * kl_grad
    assert_matches(samples, exact)
    no_kl = estimates(strategy, policy, pool, reward, SEEDS)
    assert_matches(no_kl, exact_direction(policy, coeff))
    assert_differs(no_kl, exact)  # wrong variant: the KL term left out


def test_rloo_is_unbiased_and_random_reward_gives_no_direction():
    policy, pool, reward = _setup()
    strategy = build_strategy("rloo", _params(prompts_per_batch=2, group_size=4))
    samples = estimates(strategy, policy, pool, reward, SEEDS)
    exact = exact_direction(policy, [0.5, 0.5])
    assert_matches(samples, exact)
    assert_differs(samples, 2 * exact)
    _, _, random_reward = _setup(control="random")
    noise = estimates(strategy, policy, pool, random_reward, SEEDS)
    assert_matches(noise, torch.zeros_like(exact))
    assert_differs(noise, exact)


def _rej_expected(policy, G: int, drop_all_right: bool, keep_all: bool = False) -> torch.Tensor:
    p = success(policy).detach().tolist()
    M = len(p)
    coeff = [0.0] * M
    for j1 in range(M):
        for j2 in range(M):
            for k1 in range(G + 1):
                for k2 in range(G + 1):
                    prob = binom(k1, G, p[j1]) * binom(k2, G, p[j2]) / M**2
                    slots = [(j1, k1), (j2, k2)]
                    kept = [(j, k) for j, k in slots if keep_all or (k > 0 and not (drop_all_right and k == G))]
                    if not kept:
                        continue
                    for j, k in kept:
                        a_right, a_wrong = (1 - k / G), -k / G
                        coeff[j] += prob * pattern_coefficient(k, G, p[j], a_right, a_wrong) / (G * len(kept))
    return exact_direction(policy, coeff)


@pytest.mark.parametrize("drop", ["degenerate", "all_wrong"])
def test_reinforce_rej_matches_filtered_pattern_sum(drop):
    policy, pool, reward = _setup()
    G = 4
    strategy = build_strategy("reinforce_rej", _params(prompts_per_batch=2, group_size=G, drop=drop))
    samples = estimates(strategy, policy, pool, reward, SEEDS)
    assert_matches(samples, _rej_expected(policy, G, drop_all_right=drop == "degenerate"))

    class NoFilter(ReinforceRej):
        def shape(self, group):
            super().shape(group)
            group.rule, group.kept = None, []

    wrong = estimates(NoFilter(strategy.config), policy, pool, reward, SEEDS)
    assert_differs(wrong, _rej_expected(policy, G, drop_all_right=drop == "degenerate"))


def test_raft_ascends_log_success_scaled_by_hit_chance():
    policy, pool, reward = _setup(prompts=1)
    G = 4
    strategy = build_strategy("raft", _params(prompts_per_batch=1, group_size=G))
    samples = estimates(strategy, policy, pool, reward, SEEDS)
    p = float(success(policy).detach()[0])
    exact = exact_direction(policy, [(1 - (1 - p) ** G) / p])
    assert_matches(samples, exact)

    class KeepAll(RAFT):
        def shape(self, group):
            super().shape(group)
            group.kept, group.rule = [True] * len(group.rewards), None

    assert_differs(estimates(KeepAll(strategy.config), policy, pool, reward, SEEDS), exact)


@pytest.mark.parametrize(("name", "scale"), [("psr", 1.0), ("nsr", 1.0), ("w_reinforce", 1.1)])
def test_polarity_objectives_scale_the_success_gradient(name, scale):
    policy, pool, reward = _setup()
    strategy = build_strategy(name, _params(prompts_per_batch=2, group_size=4))
    samples = estimates(strategy, policy, pool, reward, SEEDS)
    exact = exact_direction(policy, [scale / 2, scale / 2])
    assert_matches(samples, exact)
    if name == "w_reinforce":  # wrong polarity weight: lambda = 1 on the right samples
        wrong = WeightedReinforce(strategy.config.replace(positive_weight=1.0))
        assert_differs(estimates(wrong, policy, pool, reward, SEEDS), exact)


def test_dynamic_sampling_matches_conditional_pattern_sum():
    policy, pool, reward = _setup()
    B, G = 2, 4
    strategy = build_strategy(
        "dynamic_sampling", _params(prompts_per_batch=B, group_size=G, generation_prompts=B, max_generation_batches=200)
    )
    samples = estimates(strategy, policy, pool, reward, SEEDS)
    p = success(policy).detach().tolist()
    z = sum((1 - pj**G - (1 - pj) ** G) / 2 for pj in p)
    coeff = [
        sum(binom(k, G, pj) / 2 / z * pattern_coefficient(k, G, pj, *grpo_advantages(k, G)) for k in range(1, G)) / G
        for pj in p
    ]
    exact = exact_direction(policy, coeff)
    assert_matches(samples, exact)
    plain = [sum(binom(k, G, pj) * pattern_coefficient(k, G, pj, *grpo_advantages(k, G)) for k in range(G + 1)) / (G * 2) for pj in p]
    assert_differs(samples, exact_direction(policy, plain))  # the filter changes the expectation


def _ada_terminal(p: float, G: int, round_size: int, rounds: int) -> dict[tuple[int, int], float]:
    """Distribution of (right, wrong) counts when a balanced Reinforce-Ada prompt stops."""
    states = {(0, 0): 1.0}
    done: dict[tuple[int, int], float] = {}
    for r in range(rounds):
        nxt: dict[tuple[int, int], float] = {}
        for (P, N), w in states.items():
            for k in range(round_size + 1):
                s = (P + k, N + round_size - k)
                prob = w * binom(k, round_size, p)
                if (s[0] >= G // 2 and s[1] >= G - G // 2) or r == rounds - 1:
                    done[s] = done.get(s, 0.0) + prob
                else:
                    nxt[s] = nxt.get(s, 0.0) + prob
        states = nxt
    return done


def _ada_expected(policy, G, round_size, rounds, per_group_baseline=False):
    p = float(success(policy).detach()[0])
    coeff = 0.0
    for (P, N), w in _ada_terminal(p, G, round_size, rounds).items():
        keep_right = min(P, max(G // 2, G - N))
        keep_wrong = G - keep_right
        mu = keep_right / G if per_group_baseline else P / (P + N)
        coeff += w * (keep_right * (1 - mu) / p + keep_wrong * mu / (1 - p)) / G
    return exact_direction(policy, [coeff])


def test_reinforce_ada_balanced_matches_stopping_time_sum():
    policy, pool, reward = _setup(prompts=1)
    G, round_size, rounds = 4, 4, 3
    strategy = build_strategy(
        "reinforce_ada", _params(prompts_per_batch=1, group_size=G, round_size=round_size, max_rounds=rounds)
    )
    samples = estimates(strategy, policy, pool, reward, 2 * SEEDS)
    assert_matches(samples, _ada_expected(policy, G, round_size, rounds))

    class GroupBaseline(ReinforceAda):  # wrong variant: baseline from the kept group only
        def _shape(self, group):
            super()._shape(group)
            kept = [r for r, k in zip(group.rewards, group.kept, strict=True) if k]
            mean = sum(kept) / len(kept)
            group.advantages = [r - mean for r in group.rewards]

    wrong = estimates(GroupBaseline(strategy.config), policy, pool, reward, 2 * SEEDS)
    assert_differs(wrong, _ada_expected(policy, G, round_size, rounds))
