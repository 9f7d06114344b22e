"""DDPO's importance ratio, PPO clipping and inner epochs in ``dpok``, against a hand-computed gradient on the toy.

The toy (:class:`StepShiftToy`) has one stochastic step J; its mean is μ = c1·x + c2·(ε* + θ0 + θ1·x),
so ∂ log p/∂(θ0, θ1) = (y − μ)/σ²·c2·(1, x) in closed form. With ρ = p_θ/p_old and the advantages A
fixed when the batch was drawn, the clipped objective's gradient (as a loss) is

    (1/N) Σ_i [term i not clipped] · (−A_i·ρ_i·∂ log p_i/∂θ),

a term being clipped when A > 0 and ρ > 1 + ε, or A < 0 and ρ < 1 − ε. The first inner epoch has
ρ = 1 and the plain estimator's gradient; the second, after θ has moved, has the gradient above; a
wrong variant that clips negative advantages on the other side (ρ > 1 + ε) does not.
"""

from __future__ import annotations

import math

import pytest
import torch

from app.workflows.store import training_home
from engines.training.diffusion import build_scheme, dpok
from engines.training.diffusion.base import DiffusionAllowance, SchemeContext
from engines.training.diffusion.loop import DiffusionTrainConfig, train_diffusion
from tests.diffusion.conftest import CoordinateReward
from tests.diffusion.trainable_toys import StepShiftToy

STEPS, J, N, CLIP = 8, 4, 64, 0.2


def one_step(sched) -> str:
    return ",".join("1" if i == J else "0" for i in range(len(sched)))


def update(scheme, policy, rng):
    """One update: (its metrics, the loss's gradient on θ)."""
    policy.module.zero_grad(set_to_none=True)
    ctx = SchemeContext(policy=policy, reward=CoordinateReward(), budget=DiffusionAllowance(), rng=rng)
    gen = scheme.loss(ctx, N)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            loss, metrics = stop.value
            break
    loss.backward()
    return metrics, policy.theta.grad.detach().clone()


def hand_gradient(policy, batch, clip: float, negative_side_wrong: bool = False) -> torch.Tensor:
    sched = policy.schedule()
    x, y, std = batch.states[0], batch.samples[0], batch.stds[0]
    a, a_prev = sched.alpha_bars[J], sched.alpha_bars_prev[J]
    c1 = math.sqrt(a_prev / a)
    c2 = math.sqrt(1 - a_prev - std**2) - math.sqrt(a_prev * (1 - a) / a)
    t = sched.timesteps[J]
    with torch.no_grad():
        eps = policy._model_output(x, t, None)
        mu = c1 * x + c2 * eps
        logp = (-0.5 * (y - mu) ** 2 / std**2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)
    ratio = torch.exp(logp - batch.old_logp[:, 0])
    adv = batch.advantages[:, 0]
    clipped = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
    if negative_side_wrong:
        clipped = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio > 1 + clip))
    dlogp = ((y - mu) / std**2 * c2)[:, 0]
    weight = torch.where(clipped, 0.0, -adv * ratio) / N
    grad = torch.zeros_like(policy.theta)
    grad[t, 0] = (weight * dlogp).sum()
    grad[t, 1] = (weight * dlogp * x[:, 0]).sum()
    return grad, clipped, adv, ratio


class WrongSideClip(dpok.DPOK):
    """Wrong: for negative advantages the ratio is clipped from above (ρ > 1 + ε) instead of from below."""

    def loss(self, ctx, n):
        right = dpok.clipped_surrogate

        def wrong(adv, logp, old, clip):
            ratio = torch.exp(logp - old)
            positive = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
            negative = torch.where(ratio > 1 + clip, -adv * (1 + clip), -adv * ratio)
            return torch.where(adv >= 0, positive, negative).sum(1)

        dpok.clipped_surrogate = wrong
        try:
            return (yield from super().loss(ctx, n))
        finally:
            dpok.clipped_surrogate = right


@pytest.mark.parametrize("variant", ["right", "wrong"])
def test_first_epoch_ratio_is_one_and_the_second_has_the_clipped_gradient(mixture, variant):
    policy = StepShiftToy(mixture, default_steps=STEPS)
    params = {"eta_steps": one_step(policy.schedule()), "kl_coef": 0.0, "baseline": "loo", "batch_size": N,
              "clip_range": CLIP, "inner_epochs": 2}
    scheme = build_scheme("dpok", params)
    if variant == "wrong":
        scheme = WrongSideClip(scheme.config)
    plain = build_scheme("dpok", {**params, "inner_epochs": 1})
    _, plain_grad = update(plain, policy, torch.Generator().manual_seed(0))
    first, grad = update(scheme, policy, torch.Generator().manual_seed(0))
    assert first["inner_epoch"] == 1 and first["ratio_mean"] == 1.0 and first["clip_fraction"] == 0.0
    assert torch.allclose(grad, plain_grad, rtol=1e-12, atol=1e-15)  # ρ = 1: the plain estimator
    batch = scheme.pending
    assert batch is not None and batch.epoch == 2
    row = policy.schedule().timesteps[J]
    with torch.no_grad():
        policy.theta[row] = torch.tensor([0.4, -0.3], dtype=torch.float64)  # as if the first update had moved θ
    expected, clipped, adv, ratio = hand_gradient(policy, batch, CLIP)
    # the batch exercises every case: clipped on each side, and negative advantages above 1 + ε (not clipped)
    assert clipped[adv > 0].any() and clipped[adv < 0].any() and ((adv < 0) & (ratio > 1 + CLIP)).any()
    second, grad = update(scheme, policy, torch.Generator().manual_seed(1))
    assert second["inner_epoch"] == 2 and scheme.pending is None and second["clip_fraction"] > 0
    matches = torch.allclose(grad, expected, rtol=1e-9, atol=1e-12)
    assert matches is (variant == "right"), (grad[row], expected[row])
    if variant == "wrong":
        wrong_expected, *_ = hand_gradient(policy, batch, CLIP, negative_side_wrong=True)
        assert torch.allclose(grad, wrong_expected, rtol=1e-9, atol=1e-12)  # the test's wrong variant is the one meant


def test_inner_epochs_reuse_each_batch_in_a_training_run(mixture):
    policy = StepShiftToy(mixture, default_steps=6)
    config = DiffusionTrainConfig(name="ddpo", scheme="dpok", learning_rate=0.01, eval_every=0, eval_size=8, max_updates=6)
    params = {"steps": 6, "batch_size": 8, "kl_coef": 0.1, "inner_epochs": 3, "clip_range": 0.1}
    events = list(train_diffusion(config, params, policy=policy, reward=CoordinateReward(), runs_folder=training_home()))
    updates = [e.metrics for e in events if e.kind == "update"]
    assert [u["inner_epoch"] for u in updates] == [1, 2, 3, 1, 2, 3]
    assert len([e for e in events if e.kind == "group"]) == 2 and events[-1].metrics["samples"] == 16
    assert all(u["ratio_mean"] == 1.0 for u in updates if u["inner_epoch"] == 1)


def test_a_run_cancelled_between_inner_epochs_resumes_exactly(mixture):
    from tests.training.test_diffusion_training import _comparable

    def run(name, cancel_at=None, resume=False):
        import threading

        policy = StepShiftToy(mixture, default_steps=6)
        config = DiffusionTrainConfig(name=name, scheme="dpok", learning_rate=0.05, eval_every=0, eval_size=8, samples=16)
        params = {"steps": 6, "batch_size": 8, "kl_coef": 0.1, "inner_epochs": 3, "clip_range": 0.1}
        cancel, events = threading.Event(), []
        for event in train_diffusion(config, params, policy=policy, reward=CoordinateReward(), cancel=cancel,
                                     resume=resume, runs_folder=training_home()):
            events.append(event)
            if event.kind == "update" and event.step == cancel_at:
                cancel.set()
        return events, policy

    whole, policy_a = run("whole")
    assert [e.metrics["inner_epoch"] for e in whole if e.kind == "update"] == [1, 2, 3, 1, 2, 3]  # a samples budget
    assert whole[-1].status == "budget"  # funds the last batch's epochs
    cancelled, _ = run("cut", cancel_at=2)
    assert cancelled[-1].status == "cancelled"
    resumed, policy_b = run("cut", resume=True)
    assert _comparable(resumed)[:-1] == _comparable(whole)[:-1]
    assert torch.equal(policy_a.theta, policy_b.theta)
