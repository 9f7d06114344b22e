"""``single_sde`` (E-GRPO's one SDE step) on the Gaussian-mixture toy, against exact gradients.

The toy (:class:`StepShiftToy`) has one (shift, slope) row of θ per timestep; r(x) = x.
Chains are deterministic except step J, so x_J is a function of x_T (the shared prefix) and the
exact gradients come by Gauss-Hermite quadrature over (x_T, the step's noise ξ):

- with ``group_loo``, the mean estimate is ∇θ_J E[x_0] (within 4 standard errors), also with two
  steps merged into the stochastic one; every other row is exactly 0;
- with GRPO's ``group_mean_std``, it is E_{x_T}[∇θ_J m(x_T) / s(x_T)] (m, s: the mean and std of
  x_0 given the prefix), the gradient of the per-prefix standardised reward; the wrong variant
  that normalises across different prefixes fails it, and so does one taking the log-prob of the
  wrong step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.training.diffusion import build_scheme
from engines.training.diffusion.base import DiffusionAllowance, SchemeContext
from engines.training.diffusion.single_sde import SingleSDE, merged_schedule
from tests.diffusion.test_training_estimators import exact_one_step_gradient, gradient
from tests.diffusion.trainable_toys import StepShiftToy

STEPS, J, N, BATCHES = 8, 4, 2000, 16


@pytest.fixture()
def toy(mixture):
    return StepShiftToy(mixture, default_steps=STEPS)


def exact_gradients(policy, sched, eta, nodes: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇θ_J E[x_0], E_{x_T}[∇θ_J m(x_T) / s(x_T)]) by quadrature, θ_J's (shift, slope) entering step J only."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    z, w = torch.tensor(z), torch.tensor(w / math.sqrt(2 * math.pi))
    x, xi = z[:, None], z[:, None]
    with torch.no_grad():
        for i in range(J):
            x = policy.step(x, i, sched, policy.predict(x, i, sched), eta=eta).sample
    x = x.repeat_interleave(nodes, 0)  # [prefix node, noise node]
    xi = xi.repeat(nodes, 1)
    delta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    out = policy._model_output(x, sched.timesteps[J], None).detach() + delta[0] + delta[1] * x
    x = policy.step(x, J, sched, policy.prediction_from_output(x, out, sched.alpha_bars[J]), eta=eta, noise=xi).sample
    for i in range(J + 1, len(sched)):
        x = policy.step(x, i, sched, policy.predict(x, i, sched), eta=eta).sample
    x0 = x[:, 0].reshape(nodes, nodes)
    m = (x0 * w).sum(1)
    s = ((x0**2 * w).sum(1) - m**2).clamp_min(0).sqrt()
    (plain,) = torch.autograd.grad((w * m).sum(), delta, retain_graph=True)
    (standardised,) = torch.autograd.grad((w * m / s.detach()).sum(), delta)
    return plain, standardised


def events_and_result(generator):
    """A scheme's ``loss`` run to its end: (the events it yielded, what it returned)."""
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


def mc(scheme, policy, reward) -> tuple[torch.Tensor, torch.Tensor]:
    grads = torch.stack([gradient(scheme, policy, reward, seed, N) for seed in range(BATCHES)])
    return grads.mean(0), grads.std(0) / math.sqrt(BATCHES)


class AcrossPrefixes(SingleSDE):
    """Wrong: GRPO's normalisation over the whole batch, mixing branches of different prefixes."""

    def loss(self, ctx, n):
        from engines.training.diffusion import single_sde

        within = single_sde.group_advantages
        single_sde.group_advantages = lambda r, g, b: within(r, r.numel(), b)
        try:
            return (yield from super().loss(ctx, n))
        finally:
            single_sde.group_advantages = within


class WrongStep(SingleSDE):
    """Wrong: the right transition, its log-prob scored with the network at the previous step's timestep."""

    def loss(self, ctx, n):
        policy = ctx.policy
        real = policy._model_output

        def shifted(x, t, task):
            sched = policy.schedule(self.config.steps)
            if t == sched.timesteps[J] and torch.is_grad_enabled():
                return real(x, sched.timesteps[J - 1], task)
            return real(x, t, task)

        policy._model_output = shifted
        try:
            return (yield from super().loss(ctx, n))
        finally:
            del policy._model_output


@pytest.mark.parametrize("merge", [1, 2])
def test_group_loo_gradient_is_the_exact_gradient_of_the_one_stochastic_step(toy, coordinate_reward, merge):
    scheme = build_scheme("single_sde", {"sde_step": J, "merge": merge, "group_size": 20, "baseline": "group_loo",
                                         "batch_size": N})
    sched, eta = scheme.chain(toy)
    assert len(sched) == STEPS - (merge - 1)
    exact, _ = exact_gradients(toy, sched, eta)
    mean, se = mc(scheme, toy, coordinate_reward)
    row = sched.timesteps[J]
    assert torch.all((mean[row] - exact).abs() < 4 * se[row]), (mean[row], exact, se[row])
    others = [t for t in range(mean.shape[0]) if t != row]
    assert torch.count_nonzero(mean[others]) == 0  # ODE steps: no log-prob term
    if merge == 1:  # the same chain as DPOK's one-stochastic-step test: the same exact gradient
        assert torch.allclose(exact, exact_one_step_gradient(toy, sched, list(eta)))


def test_grpo_gradient_standardises_within_a_prefix_and_the_wrong_variants_fail(toy, coordinate_reward):
    params = {"sde_step": J, "group_size": 200, "baseline": "group_mean_std", "batch_size": N}
    scheme = build_scheme("single_sde", params)
    sched, eta = scheme.chain(toy)
    _, target = exact_gradients(toy, sched, eta)
    row = sched.timesteps[J]
    mean, se = mc(scheme, toy, coordinate_reward)
    # 1% for GRPO's own O(1/group) bias (r̄ and s include the sample itself)
    assert torch.all((mean[row] - target).abs() < 4 * se[row] + 0.01 * target.abs()), (mean[row], target, se[row])
    for wrong in (AcrossPrefixes(scheme.config), WrongStep(scheme.config)):
        bad, bad_se = mc(wrong, toy, coordinate_reward)
        assert torch.any((bad[row] - target).abs() > 4 * bad_se[row] + 0.01 * target.abs()), (type(wrong), bad[row], target)


def test_branches_share_their_prefix_and_the_budget_counts_it_once(toy, coordinate_reward):
    scheme = build_scheme("single_sde", {"sde_step": 2, "merge": 3, "group_size": 4, "batch_size": 8})
    sched, eta = scheme.chain(toy)
    full = toy.schedule()
    a, a_prev = full.alpha_bars[2], full.alpha_bars_prev[4]  # one DDPM step over the whole jump 2 → after 4
    assert math.isclose(sched.std(2, eta), math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)), rel_tol=1e-12)
    assert sched.timesteps == full.timesteps[:3] + full.timesteps[5:]
    assert sched.stochastic(eta) == tuple(i == 2 for i in range(STEPS - 2))
    budget = DiffusionAllowance()
    ctx = SchemeContext(policy=toy, reward=coordinate_reward, budget=budget, rng=torch.Generator().manual_seed(0))
    events, (_, metrics) = events_and_result(scheme.loss(ctx, 8))
    group = events[-1]
    assert group.meta["stochastic_steps"] == [2] and metrics["logprob_terms"] == 1
    adv = torch.tensor(group.advantages).reshape(2, 4)
    assert torch.allclose(adv.sum(1), torch.zeros(2), atol=1e-5)  # normalised inside each group
    # prefix: 2 groups × 2 steps; the merged step and the 3 after it: 8 branches each
    assert budget.spent == {"samples": 8, "nfe": 2 * 2 + 8 * 4, "backward_nfe": 8, "backward_passes": 0, "reward_calls": 8}
    assert scheme.plan(full)["nfe"] >= budget.spent["nfe"] / 8
    with pytest.raises(ConfigError, match="σ = 0"):  # merged down to ᾱ = 1: no noise left to draw
        build_scheme("single_sde", {"sde_step": 0, "merge": STEPS}).check_inputs(toy, coordinate_reward)


def test_bad_settings_are_one_line_errors(toy, coordinate_reward):
    with pytest.raises(ConfigError, match="multiple of group_size"):
        build_scheme("single_sde", {"batch_size": 6, "group_size": 4})
    with pytest.raises(ConfigError, match="leave eta_steps empty"):
        build_scheme("single_sde", {"eta_steps": "1,0"})
    with pytest.raises(ConfigError, match="runs past"):
        build_scheme("single_sde", {"sde_step": 6, "merge": 3}).check_inputs(toy, coordinate_reward)
    with pytest.raises(ConfigError, match="σ = 0"):
        build_scheme("single_sde", {"sde_step": 3, "eta": 0.0}).check_inputs(toy, coordinate_reward)
    with pytest.raises(ConfigError, match="outside"):
        merged_schedule(toy.schedule(), STEPS, 1)
