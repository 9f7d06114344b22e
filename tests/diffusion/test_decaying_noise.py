"""HiCoGen's decaying η schedule: its shape, and DPOK's gradient under it on the toy.

- Shape: η_i = η·(1 − i/K)^p, full η first, strictly decreasing, η/K^p last; p = 0 is constant;
  the chain's noise variance Σσ² sits earlier than under a constant η.
- DPOK (β = 0) under the schedule: its mean gradient equals the pathwise (reparameterised)
  gradient of E[x_0] under the same per-step η on every stochastic step's row (4 standard errors
  + 2%); with the constant η (the wrong variant: the schedule not reaching the estimator) it does not.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from engines.errors import ConfigError
from engines.training.diffusion import build_scheme
from engines.training.diffusion.decaying_noise import decaying_eta
from tests.diffusion.test_training_estimators import gradient
from tests.diffusion.trainable_toys import StepShiftToy


def test_the_schedule_decays_from_eta_and_moves_the_noise_early(toy_model):
    etas = decaying_eta(0.8, 10, 2.0)
    assert etas[0] == 0.8 and math.isclose(etas[-1], 0.8 / 100)
    assert all(a > b for a, b in itertools.pairwise(etas))
    assert math.isclose(etas[3], 0.8 * 0.7**2)
    assert decaying_eta(0.8, 10, 0.0) == (0.8,) * 10
    sched = toy_model.schedule(10)
    decaying = build_scheme("dpok", {"eta_shape": "decaying", "eta": 0.8, "noise_floor": 0.0}).config.eta_schedule(sched)
    constant = build_scheme("dpok", {"eta": 0.8, "noise_floor": 0.0}).config.eta_schedule(sched)
    assert decaying == etas

    def early_share(eta):
        var = [sched.std(i, eta) ** 2 for i in range(len(sched))]
        return sum(var[:5]) / sum(var)

    assert early_share(decaying) > early_share(constant)
    floored = build_scheme("dpok", {"eta_shape": "decaying", "noise_floor": 0.3}).config.eta_schedule(sched)
    assert all(sched.std(i, floored) == 0 or sched.std(i, floored) >= 0.3 for i in range(10))
    with pytest.raises(ValueError, match=">= 0"):
        decaying_eta(1.0, 10, -1.0)
    with pytest.raises(ConfigError):
        build_scheme("dpok", {"eta_shape": "rising"})


def pathwise_gradient(policy, sched, eta, n: int, seed: int) -> torch.Tensor:
    """∇θ E[x_0] with the whole chain differentiated, its noise fixed."""
    policy.module.zero_grad(set_to_none=True)
    rng = torch.Generator().manual_seed(seed)
    x = policy.initial_noise(n, rng)
    for i in range(len(sched)):
        x = policy.step(x, i, sched, policy.predict(x, i, sched), eta=eta, rng=rng).sample
    x[:, 0].mean().backward()
    return policy.theta.grad.detach().clone()


def test_dpok_gradient_under_the_decaying_schedule_is_the_exact_gradient(mixture, coordinate_reward):
    policy = StepShiftToy(mixture, default_steps=4)
    sched = policy.schedule()
    decaying = build_scheme("dpok", {"eta_shape": "decaying", "kl_coef": 0.0, "baseline": "loo", "batch_size": 4000})
    eta = decaying.config.eta_schedule(sched)
    stochastic = sched.stochastic(eta)
    assert stochastic == (True, True, False, False)  # step 2's σ falls under the noise floor once η decays
    rows = [t for t, s in zip(sched.timesteps, stochastic, strict=True) if s]
    exact = pathwise_gradient(policy, sched, eta, 200_000, 1)[rows]
    constant = build_scheme("dpok", {"kl_coef": 0.0, "baseline": "loo", "batch_size": 4000, "eta_steps": "1,1,0,0"})
    for scheme, should_match in ((decaying, True), (constant, False)):
        grads = torch.stack([gradient(scheme, policy, coordinate_reward, s, 4000) for s in range(12)])
        mean, se = grads.mean(0)[rows], grads.std(0)[rows] / math.sqrt(12)
        close = bool(torch.all((mean - exact).abs() < 4 * se + 0.02 * exact.abs()))
        assert close is should_match, (scheme.config.eta_shape, mean, exact, se)
