"""``single_sde``'s multi-granularity advantages (G2RPO) against a brute-force computation on the toy.

The brute force is written out here from the definitions, not from the scheme's code: the shared
prefix, the branches' one stochastic step (its Gaussian log-prob by hand), then for every
granularity s the ODE steps after it merged s at a time into single DDIM steps (x̂0 and ε̂ by
hand), the rewards, GRPO's advantages within each prefix's branches, summed over granularities,
and the loss −mean(A·log p). The same random draws are replayed from the seed. With one
granularity the scheme is E-GRPO's single chain, unchanged: the same loss and gradient as the
default config, and the same as the brute force.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.errors import ConfigError
from engines.training.diffusion import build_scheme
from engines.training.diffusion.base import DiffusionAllowance, SchemeContext
from tests.diffusion.conftest import CoordinateReward
from tests.diffusion.trainable_toys import StepShiftToy

STEPS, J, GROUP, N = 9, 2, 4, 12


def run(scheme, policy, seed: int = 5):
    """(loss, θ's gradient, the group event, the budget) of one update."""
    policy.module.zero_grad(set_to_none=True)
    budget = DiffusionAllowance()
    ctx = SchemeContext(policy=policy, reward=CoordinateReward(), budget=budget, rng=torch.Generator().manual_seed(seed))
    gen, events = scheme.loss(ctx, N), []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            loss, _ = stop.value
            break
    loss.backward()
    return float(loss.detach()), policy.theta.grad.detach().clone(), events[-1], budget


def ddim(policy, x, t: int, a: float, a_next: float) -> torch.Tensor:
    eps = policy._model_output(x, t, None)
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps


def brute_force(policy, scales, seed: int = 5):
    """The loss and gradient of G2RPO's summed advantages, from the definitions."""
    policy.module.zero_grad(set_to_none=True)
    sched, rng = policy.schedule(), torch.Generator().manual_seed(seed)
    ts, ab, ab_prev = sched.timesteps, sched.alpha_bars, sched.alpha_bars_prev
    with torch.no_grad():
        x = policy.initial_noise(N // GROUP, rng)
        for i in range(J):
            x = ddim(policy, x, ts[i], ab[i], ab_prev[i])
        x = x.repeat_interleave(GROUP, 0)
    a, a_next = ab[J], ab_prev[J]
    std = math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))  # DDPM's posterior std (η = 1)
    eps = policy._model_output(x, ts[J], None)
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    mean = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next - std**2) * eps
    noise = torch.randn(x.shape, generator=rng, dtype=torch.float32).to(x.dtype)
    sample = (mean + std * noise).detach()
    log_prob = (-0.5 * (sample - mean) ** 2 / std**2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)
    total = torch.zeros(N, dtype=torch.float64)
    for s in scales:
        y = sample
        with torch.no_grad():
            for start in range(J + 1, STEPS, s):
                end = min(start + s, STEPS) - 1
                y = ddim(policy, y, ts[start], ab[start], ab_prev[end])
        r = y[:, 0].reshape(-1, GROUP)
        total += ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).reshape(-1)
    loss = -(total * log_prob).mean()
    loss.backward()
    return float(loss.detach()), policy.theta.grad.detach().clone()


@pytest.fixture()
def toy(mixture):
    return StepShiftToy(mixture, default_steps=STEPS)


def scheme(granularities: str):
    return build_scheme("single_sde", {"sde_step": J, "group_size": GROUP, "batch_size": N, "granularities": granularities})


def test_one_granularity_is_the_single_chain_and_the_brute_force(toy):
    loss, grad, group, _ = run(scheme("1"), toy)
    default_loss, default_grad, _, _ = run(build_scheme("single_sde", {"sde_step": J, "group_size": GROUP, "batch_size": N}), toy)
    assert loss == default_loss and torch.equal(grad, default_grad)
    bf_loss, bf_grad = brute_force(toy, [1])
    assert math.isclose(loss, bf_loss, rel_tol=1e-9) and torch.allclose(grad, bf_grad, rtol=1e-9, atol=1e-12)
    assert group.meta["granularities"] == [1]


@pytest.mark.parametrize("granularities", ["1,2,4", "3,1"])
def test_aggregated_advantages_are_the_brute_force_sum_over_granularities(toy, granularities):
    scales = [int(s) for s in granularities.split(",")]
    loss, grad, group, budget = run(scheme(granularities), toy)
    bf_loss, bf_grad = brute_force(toy, scales)
    assert math.isclose(loss, bf_loss, rel_tol=1e-9) and torch.allclose(grad, bf_grad, rtol=1e-9, atol=1e-12)
    single_loss, _ = brute_force(toy, scales[:1])
    assert not math.isclose(loss, single_loss, rel_tol=1e-3)  # the other granularities do change the update
    # the prefix once per group, the stochastic step and one ODE run per granularity for every branch
    after = STEPS - J - 1
    tails = sum(-(-after // s) for s in scales)
    assert budget.spent["nfe"] == (N // GROUP) * J + N * (1 + tails) and budget.spent["samples"] == N
    assert scheme(granularities).plan(toy.schedule())["nfe"] == J + 1 + tails
    assert group.meta["granularities"] == scales and len(group.rewards) == N


def test_bad_granularities_are_one_line_errors():
    for bad in ("0", "1,1", "a", ""):
        with pytest.raises(ConfigError, match="granularities"):
            scheme(bad)
