"""Diffusion fine-tuning estimators on the Gaussian-mixture toy, against exact gradients.

The toy denoiser (:class:`StepShiftToy`) is the mixture's exact ε* plus one (shift, slope)
per timestep, zero at the start, so each step's parameters are their own row of θ and a
gradient's rows say which steps it reached. The reward is r(x) = x.

- One stochastic step (η = 1 on step J only): the DPOK / DDPO score-function gradient,
  averaged over batches, equals the exact gradient of E[r] with respect to step J's row,
  computed by Gauss-Hermite quadrature over (x_T, the step's noise) and differentiating the
  step's Gaussian mean (reparameterised), within 4 standard errors; every other row is 0
  (deterministic steps carry no log-prob term). A wrong variant that takes the log-prob of
  the step with the network at the neighbouring step's timestep fails.
- With β > 0 and ``kl_credit='path'``, the estimator equals the pathwise (reparameterised)
  gradient of E[r] − β·KL(path) on every row; without the later steps' KL credit (the
  paper's ``dpok``) it does not.
- ``draft_k``'s gradient equals autograd through the whole chain restricted to the rows of
  the last K steps, and is zero on the others; the full-chain ``draft`` is not (the wrong
  variant: full-chain credit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.training.diffusion import build_scheme
from engines.training.diffusion.base import DiffusionAllowance, SchemeContext
from engines.training.diffusion.dpok import DPOK
from tests.diffusion.conftest import CoordinateReward
from tests.diffusion.trainable_toys import StepShiftToy

STEPS = 8
J = 4  # the one stochastic step


def drain(generator):
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def gradient(scheme, policy, reward, seed: int, n: int, reference=None) -> torch.Tensor:
    policy.module.zero_grad(set_to_none=True)
    ctx = SchemeContext(policy=policy, reward=reward, budget=DiffusionAllowance(), rng=torch.Generator().manual_seed(seed),
                        reference=reference)
    loss, _ = drain(scheme.loss(ctx, n))
    loss.backward()
    return -policy.theta.grad.detach().clone()  # the loss is minimised: its negative gradient ascends the objective


def one_step_eta(sched) -> list[float]:
    return [1.0 if i == J else 0.0 for i in range(len(sched))]


def exact_one_step_gradient(policy, sched, eta, nodes: int = 60) -> torch.Tensor:
    """d E[x_0] / d θ[t_J] by quadrature: x_T and the step's noise on Gauss-Hermite nodes, θ[t_J] entering step J only."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    z, w = torch.tensor(z), torch.tensor(w / math.sqrt(2 * math.pi))
    x_T, xi = z.repeat_interleave(nodes)[:, None], z.repeat(nodes)[:, None]
    weight = w.repeat_interleave(nodes) * w.repeat(nodes)
    delta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    x = x_T
    with torch.no_grad():
        for i in range(J):
            x = policy.step(x, i, sched, policy.predict(x, i, sched), eta=eta).sample
    out = policy._model_output(x, sched.timesteps[J], None).detach() + delta[0] + delta[1] * x
    pred = policy.prediction_from_output(x, out, sched.alpha_bars[J])
    x = policy.step(x, J, sched, pred, eta=eta, noise=xi).sample
    for i in range(J + 1, len(sched)):
        x = policy.step(x, i, sched, policy.predict(x, i, sched), eta=eta).sample
    ((weight * x[:, 0]).sum()).backward()
    return delta.grad


class WrongStepDPOK(DPOK):
    """Samples the right transition but scores it with the network at the previous step's timestep."""

    def transition(self, policy, x, i, sched, pred, eta, rng):
        right = policy.step(x, i, sched, pred, eta=eta, rng=rng)
        wrong_out = policy._model_output(x, sched.timesteps[i - 1], None)
        wrong = policy.step(x, i, sched, policy.prediction_from_output(x, wrong_out, sched.alpha_bars[i]), eta=eta,
                            noise=torch.zeros_like(x))
        return type(right)(sample=right.sample, mean=wrong.mean, std=right.std)


@pytest.fixture()
def shift_toy(mixture):
    return StepShiftToy(mixture, default_steps=STEPS)


def mc_gradient(scheme, policy, reward, batches: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    grads = torch.stack([gradient(scheme, policy, reward, seed, n) for seed in range(batches)])
    return grads.mean(0), grads.std(0) / math.sqrt(batches)


@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_one_stochastic_step_policy_gradient_is_the_exact_gradient(shift_toy, coordinate_reward, baseline):
    sched = shift_toy.schedule()
    eta = ",".join(str(e) for e in one_step_eta(sched))
    scheme = build_scheme("dpok", {"eta_steps": eta, "kl_coef": 0.0, "baseline": baseline, "batch_size": 2000})
    exact = exact_one_step_gradient(shift_toy, sched, one_step_eta(sched))
    mean, se = mc_gradient(scheme, shift_toy, coordinate_reward, 16, 2000)
    row = sched.timesteps[J]
    assert torch.all((mean[row] - exact).abs() < 4 * se[row] + 1e-9), (mean[row], exact, se[row])
    others = [t for t in range(mean.shape[0]) if t != row]
    assert torch.count_nonzero(mean[others]) == 0  # deterministic steps: no log-prob term, no gradient

    wrong, wrong_se = mc_gradient(WrongStepDPOK(scheme.config), shift_toy, coordinate_reward, 16, 2000)
    assert torch.any((wrong[row] - exact).abs() > 4 * wrong_se[row] + 1e-9)


def test_deterministic_steps_have_no_density_and_a_chain_without_noise_is_refused(shift_toy, coordinate_reward):
    sched = shift_toy.schedule()
    x = shift_toy.initial_noise(3, torch.Generator().manual_seed(0))
    pred = shift_toy.predict(x, 0, sched)
    assert shift_toy.step(x, 0, sched, pred, eta=one_step_eta(sched)).std == 0
    with pytest.raises(ValueError, match="deterministic"):
        shift_toy.step(x, 0, sched, pred, eta=0.0).log_prob()
    assert shift_toy.step(x, J, sched, pred, eta=one_step_eta(sched)).log_prob().shape == (3,)
    assert sched.stochastic(one_step_eta(sched)) == tuple(i == J for i in range(STEPS))
    with pytest.raises(ValueError, match="one value per step"):
        sched.std(0, [1.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        sched.std(0, -0.5)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for i in range(STEPS):  # a per-step schedule of equal values is the scalar η, step by step
        per_step = shift_toy.step(x, i, sched, pred, eta=[0.5] * STEPS, noise=noise)
        scalar = shift_toy.step(x, i, sched, pred, eta=0.5, noise=noise)
        assert per_step.std == scalar.std and torch.equal(per_step.sample, scalar.sample)
    with pytest.raises(ConfigError, match="at least one stochastic step"):
        build_scheme("dpok", {"eta": 0.0}).check_inputs(shift_toy, coordinate_reward)
    with pytest.raises(ConfigError, match="3 values for a 8-step chain"):
        build_scheme("dpok", {"eta_steps": "1,1,1"}).check_inputs(shift_toy, coordinate_reward)


def test_eta_steps_above_one_are_refused_like_eta():
    """η > 1 has no DDIM step (σ above the DDPM posterior std); ``eta`` caps it at 1, so must ``eta_steps``."""
    with pytest.raises(ConfigError, match="eta must be <= 1"):
        build_scheme("dpok", {"eta": 1.5})
    for bad in ("1,1.5,0,0", "1,-0.5,0,0", "1,nan,0,0"):
        with pytest.raises(ConfigError, match="every η in eta_steps must be between 0 and 1"):
            build_scheme("dpok", {"eta_steps": bad})
    assert build_scheme("dpok", {"eta_steps": "1,0.5,0,0"}).config.eta_steps == "1,0.5,0,0"


def pathwise_kl_objective_gradient(policy, reference, sched, beta: float, n: int, seed: int) -> torch.Tensor:
    """∇θ (E[x_0] − β·Σ_t KL_t) by reparameterisation: the whole chain differentiated with its noise fixed."""
    policy.module.zero_grad(set_to_none=True)
    rng = torch.Generator().manual_seed(seed)
    x = policy.initial_noise(n, rng)
    kl = torch.zeros(n, dtype=torch.float64)
    for i in range(len(sched)):
        step = policy.step(x, i, sched, policy.predict(x, i, sched), eta=1.0, rng=rng)
        if step.std > 0:
            ref = reference.step(x, i, sched, reference.predict(x, i, sched), eta=1.0, noise=torch.zeros_like(x))
            kl = kl + ((step.mean - ref.mean) ** 2).sum(1) / (2 * step.std**2)
        x = step.sample
    (x[:, 0] - beta * kl).mean().backward()
    return policy.theta.grad.detach().clone()


def test_kl_regularised_gradient_is_the_pathwise_gradient_and_the_papers_credit_is_not(mixture, coordinate_reward):
    policy = StepShiftToy(mixture, default_steps=4)
    reference = policy.frozen_copy()
    with torch.no_grad():
        policy.theta[:, 0], policy.theta[:, 1] = 0.3, 0.1  # away from the reference, so the KL has a gradient
    sched = policy.schedule()
    rows = list(sched.timesteps[:-2])  # the two well-conditioned stochastic steps
    exact = pathwise_kl_objective_gradient(policy, reference, sched, 1.0, 200_000, 1)[rows]
    for credit, should_match in (("path", True), ("dpok", False)):
        scheme = build_scheme("dpok", {"kl_coef": 1.0, "baseline": "loo", "kl_credit": credit, "batch_size": 4000,
                                       "noise_floor": 0.0})
        grads = torch.stack([gradient(scheme, policy, coordinate_reward, s, 4000, reference) for s in range(12)])
        mean, se = grads.mean(0)[rows], grads.std(0)[rows] / math.sqrt(12)
        close = bool(torch.all((mean - exact).abs() < 4 * se + 0.02 * exact.abs()))
        assert close is should_match, (credit, mean, exact, se)


@pytest.mark.parametrize("k", [1, 3])
def test_draft_k_gradient_is_autograd_through_the_last_k_steps(shift_toy, coordinate_reward, k):
    sched = shift_toy.schedule()
    truncated = gradient(build_scheme("draft_k", {"truncate": k, "noise_floor": 0.0}), shift_toy, coordinate_reward, 7, 64)
    full = gradient(build_scheme("draft", {"noise_floor": 0.0}), shift_toy, coordinate_reward, 7, 64)
    # independent: autograd through the whole chain with the same noise, every row
    shift_toy.module.zero_grad(set_to_none=True)
    rng = torch.Generator().manual_seed(7)
    x = shift_toy.initial_noise(64, rng)
    for i in range(len(sched)):
        x = shift_toy.step(x, i, sched, shift_toy.predict(x, i, sched), eta=1.0, rng=rng).sample
    x[:, 0].mean().backward()
    autograd = shift_toy.theta.grad.detach()
    last = list(sched.timesteps[-k:])
    early = list(sched.timesteps[:-k])
    assert torch.allclose(truncated[last], autograd[last], rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(truncated[early]) == 0
    assert torch.allclose(full, autograd, rtol=1e-10, atol=1e-12)
    # the wrong variant, full-chain credit, reaches the early steps that DRaFT-K must not
    assert torch.count_nonzero(full[early]) > 0 and not torch.allclose(full, truncated)


def test_draft_lv_differentiates_only_the_last_step_on_renoised_copies(shift_toy, coordinate_reward):
    sched = shift_toy.schedule()
    scheme = build_scheme("draft_lv", {"lv_copies": 3})
    budget = DiffusionAllowance()
    ctx = SchemeContext(policy=shift_toy, reward=coordinate_reward, budget=budget, rng=torch.Generator().manual_seed(0))
    shift_toy.module.zero_grad(set_to_none=True)
    loss, _ = drain(scheme.loss(ctx, 10))
    loss.backward()
    grad = shift_toy.theta.grad
    assert torch.count_nonzero(grad[list(sched.timesteps[:-1])]) == 0
    assert torch.count_nonzero(grad[sched.timesteps[-1]]) > 0
    # reward calls: the 10 final images, then each of the 3 re-noised copies of each with its graph
    assert budget.spent == {"samples": 10, "nfe": 10 * (STEPS + 3), "backward_nfe": 30, "backward_passes": 30,
                            "reward_calls": 10 + 30}
    assert scheme.plan(sched) == {"nfe": STEPS + 3, "backward_nfe": 3, "backward_passes": 3}



def base_law(model, sched) -> tuple[float, float]:
    """Mean and variance of the pretrained chain's x_0 (η = 1), exactly: on Gaussian data with the
    exact score every step is x_{t-1} = A·x_t + B + σ·z, so the law stays Gaussian."""
    mean, var = 0.0, 1.0  # x_T ~ N(0, 1)
    with torch.no_grad():
        for i in range(len(sched)):
            xs = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
            step = model.step(xs, i, sched, model.predict(xs, i, sched), eta=1.0, noise=torch.zeros_like(xs))
            b, a = float(step.mean[0, 0]), float(step.mean[1, 0] - step.mean[0, 0])
            mean, var = a * mean + b, a * a * var + step.std**2
    return mean, var


def fine_tune(policy, scheme, updates: int, lr: float) -> None:
    """Adam with the rate decaying linearly to 0, so the last iterates settle near the optimum."""
    reference = policy.frozen_copy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1 - u / updates)
    rng = torch.Generator().manual_seed(0)
    for _ in range(updates):
        ctx = SchemeContext(policy=policy, reward=CoordinateReward(), budget=DiffusionAllowance(), rng=rng, reference=reference)
        loss, _ = drain(scheme.loss(ctx, scheme.config.batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()


def final_samples(policy, n: int, seed: int) -> torch.Tensor:
    sched, rng = policy.schedule(), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = policy.initial_noise(n, rng)
        for i in range(len(sched)):
            x = policy.step(x, i, sched, policy.predict(x, i, sched), eta=1.0, rng=rng).sample
    return x[:, 0]


def test_kl_regularised_fine_tuning_moves_the_samples_to_the_tilted_law():
    """Started from the exact score of N(0, 1) data, fine-tuned with E[r] − β·KL (r(x) = x, β = 1/λ),
    the samples follow the tilted law p0(x)·exp(λx)/Z of the pretrained chain's own law p0 = N(m, v)
    (exact, :func:`base_law`; its DDPM steps are memoryless, ᾱ_T ≈ 4e-5): N(m + λv, v). The bound:
    4 standard errors of the evaluation sample for the mean, and for the variance. Without the KL
    (the wrong variant) the samples run far past it."""
    from engines.models.gaussian_mixture import GaussianMixture

    lam, n_eval = 1.0, 20_000
    data = GaussianMixture(weights=(1.0,), means=((0.0,),), stds=(1.0,))
    misses = {}
    for beta in (1 / lam, 0.0):
        policy = StepShiftToy(data, default_steps=10, spacing="trailing")
        m, v = base_law(policy, policy.schedule())
        scheme = build_scheme("dpok", {"kl_coef": beta, "kl_credit": "path", "baseline": "loo", "batch_size": 512})
        fine_tune(policy, scheme, updates=150, lr=0.05)
        x = final_samples(policy, n_eval, seed=1)
        target_mean, target_var = m + lam * v, v
        misses[beta] = (abs(float(x.mean()) - target_mean) / math.sqrt(target_var / n_eval),
                        abs(float(x.var()) - target_var) / (target_var * math.sqrt(2 / (n_eval - 1))))
    print("standard errors off the tilted law (mean, variance):", misses)
    assert max(misses[1 / lam]) < 4, misses
    assert max(misses[0.0]) > 4, misses
