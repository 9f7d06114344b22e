"""Step credit "for free" (CoCA): cosine-similarity credits per step, by hand and inside DPOK.

- On hand-made 2-d tensors the credits and the split reward are the hand-computed numbers.
- On random tensors the credits of every chain sum telescopically to 1 − cos(x̂0_0, x_0), the
  final-minus-initial similarity, and the split rewards sum back to r.
- DPOK with ``step_credit='cosine'`` uses those shares: its per-step advantages (baseline none)
  are the credited rewards of a chain replayed with the same generator, on its stochastic steps.
"""

from __future__ import annotations

import math

import torch

from engines.training.diffusion import build_scheme
from engines.training.diffusion.base import DiffusionAllowance, SchemeContext
from engines.training.diffusion.step_credit import cosine_step_credits, credited_rewards
from tests.diffusion.test_single_sde import events_and_result
from tests.diffusion.trainable_toys import StepShiftToy

R2 = 1 / math.sqrt(2)


def test_credits_and_split_rewards_by_hand():
    x0_hats = torch.tensor([[[0.0, 1.0], [1.0, 1.0]],  # cos to [1, 0]: 0, then 1/√2
                            [[-3.0, -4.0], [4.0, 3.0]]])  # cos to [3, 4]: −1, then 24/25
    final = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    credits = cosine_step_credits(x0_hats, final)
    hand = torch.tensor([[R2 - 0.0, 1 - R2], [24 / 25 + 1, 1 - 24 / 25]], dtype=torch.float64)
    assert torch.allclose(credits, hand, atol=1e-12)
    split = credited_rewards(torch.tensor([2.0, -1.0]), credits)
    hand_split = torch.tensor([[2 * R2, 2 * (1 - R2)], [-(49 / 25) / 2, -(1 / 25) / 2]], dtype=torch.float64)
    assert torch.allclose(split, hand_split, atol=1e-12)
    # a chain whose first prediction is already the final image: nothing to split by, r spread evenly
    same = credited_rewards(torch.tensor([3.0]), cosine_step_credits(torch.ones(1, 3, 2), torch.ones(1, 2)))
    assert torch.allclose(same, torch.full((1, 3), 1.0, dtype=torch.float64))


def test_credits_sum_telescopically_to_the_final_minus_initial_similarity():
    gen = torch.Generator().manual_seed(0)
    x0_hats, final = torch.randn(5, 7, 1, 8, 8, generator=gen), torch.randn(5, 1, 8, 8, generator=gen)
    credits = cosine_step_credits(x0_hats, final)
    first = torch.stack([torch.dot(a.flatten(), b.flatten()) / (a.norm() * b.norm()) for a, b in
                         zip(x0_hats[:, 0], final, strict=True)]).double()
    assert credits.shape == (5, 7)
    assert torch.allclose(credits.sum(1), 1 - first, atol=1e-6)
    rewards = torch.randn(5, generator=gen)
    assert torch.allclose(credited_rewards(rewards, credits).sum(1), rewards.double(), atol=1e-9)


def test_dpok_with_cosine_credit_gives_each_stochastic_step_its_share(mixture, coordinate_reward):
    policy = StepShiftToy(mixture, default_steps=4)
    with torch.no_grad():
        policy.theta[:, 0] = 0.2
    scheme = build_scheme("dpok", {"step_credit": "cosine", "baseline": "none", "kl_coef": 0.0, "noise_floor": 0.0})
    ctx = SchemeContext(policy=policy, reward=coordinate_reward, budget=DiffusionAllowance(), rng=torch.Generator().manual_seed(3))
    events, _ = events_and_result(scheme.loss(ctx, 16))
    group = events[-1]
    # the same chain replayed: the scheme draws x_T, then each step's noise, from the one generator
    sched, rng = policy.schedule(), torch.Generator().manual_seed(3)
    eta = scheme.config.eta_schedule(sched)
    with torch.no_grad():
        x = policy.initial_noise(16, rng)
        x0_hats = []
        for i in range(len(sched)):
            pred = policy.predict(x, i, sched)
            x0_hats.append(pred.x0)
            x = policy.step(x, i, sched, pred, eta=eta, rng=rng).sample
    stochastic = torch.tensor(sched.stochastic(eta))
    assert stochastic.tolist() == [True, True, True, False]
    expected = credited_rewards(x[:, 0], cosine_step_credits(torch.stack(x0_hats, 1), x))[:, stochastic]
    assert torch.allclose(torch.tensor(group.advantages, dtype=torch.float64), expected[:, 0], atol=1e-6)
    assert torch.allclose(torch.tensor(group.meta["step_advantages"], dtype=torch.float64), expected.mean(0), atol=1e-6)
    plain = torch.tensor(group.rewards, dtype=torch.float64)
    assert not torch.allclose(torch.tensor(group.advantages, dtype=torch.float64), plain)  # not the same reward on every step
