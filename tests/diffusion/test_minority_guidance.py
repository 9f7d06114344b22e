"""Minority guidance raises the share of the low-weight mixture component above its prior weight.

The toy p0 = 0.7·N(−2, 0.5²) + 0.3·N(2, 0.5²) with its exact denoiser: a sample of the minority
component (x > 0) is reconstructed badly from the perturbation level (the posterior mean there
leans toward the majority), so its minority score is larger and the guidance pushes toward it.
The bound: the share of N independent samples has a standard error √(w(1−w)/N) around its
mean; the guided share must exceed the prior weight w = 0.3 by four of them, the unguided
model must stay within four of it (the check can tell the two apart), and a variant that
descends the minority score instead of ascending it must fail the check.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.errors import ConfigError
from engines.rewards import build_reward
from engines.samplers import build_sampler
from engines.samplers.minority_guidance import MinorityGuidance, perturbation_step
from engines.task import Task
from engines.trace import collect

N = 2000
WEIGHT = 0.3
BOUND = 4 * math.sqrt(WEIGHT * (1 - WEIGHT) / N)


def minority_share(sampler, toy_model, reward) -> float:  # noqa: ANN001
    trace = collect(sampler.run(Task(prompt=""), toy_model, reward, rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok"
    finals = [i for i, node in trace.nodes.items() if node.final]
    assert trace.selected == finals and len(finals) == N  # every draw is a pick
    return sum(trace.scores[i]["x0"] > 0 for i in finals) / N


def guided(cls=MinorityGuidance, scale: float = 1.0) -> MinorityGuidance:  # noqa: ANN001
    return cls(cls.Config(particles=N, steps=50, scale=scale))


class DescendsTheMinorityScore(MinorityGuidance):
    """Pushes toward a smaller reconstruction loss: toward the majority."""

    def _push(self, grad, std):  # noqa: ANN001, ANN202
        return -super()._push(grad, std)


def test_the_minority_share_rises_above_its_prior_weight(toy_model, coordinate_reward) -> None:  # noqa: ANN001
    assert toy_model.mixture.weights[1] == pytest.approx(WEIGHT)
    assert minority_share(guided(), toy_model, coordinate_reward) > WEIGHT + BOUND
    assert abs(minority_share(guided(scale=0.0), toy_model, coordinate_reward) - WEIGHT) < BOUND


def test_descending_the_minority_score_fails_the_check(toy_model, coordinate_reward) -> None:  # noqa: ANN001
    assert minority_share(guided(DescendsTheMinorityScore), toy_model, coordinate_reward) <= WEIGHT + BOUND


def test_minority_guidance_meters_its_backward_passes(digits_model) -> None:  # noqa: ANN001
    n, steps = 2, 5
    sampler = build_sampler("minority_guidance", {"particles": n, "steps": steps})
    trace = collect(sampler.run(Task(prompt=""), digits_model, build_reward("digit:3"), rng=torch.Generator().manual_seed(0)))
    sched = digits_model.schedule(steps)
    guided_steps = sum(1 for i in range(steps) if sched.std(i, 1.0) > 0)
    assert trace.done.metrics["guided_steps"] == guided_steps == steps - 1
    assert trace.done.cost["nfe"] == n * (steps + guided_steps)
    assert trace.done.cost["backward_passes"] == trace.done.cost["backward_nfe"] == n * guided_steps
    scored = [node for node in trace.nodes.values() if "minority_score" in node.meta]
    assert len(scored) == n * guided_steps and all(node.meta["minority_score"] >= 0 for node in scored)


def test_perturbation_level_and_bad_configs(toy_model) -> None:  # noqa: ANN001
    sched = toy_model.schedule(10)
    step = perturbation_step(sched, 0.8, 1000)
    assert step.timesteps[0] == min(sched.timesteps, key=lambda t: abs(t - 800))
    with pytest.raises(ConfigError, match="eta"):
        build_sampler("minority_guidance", {"eta": 0.0})
    build_sampler("minority_guidance", {"eta": 0.0, "schedule": "fixed"})
