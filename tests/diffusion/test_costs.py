"""Diffusion cost counts all the work: VAE decodes for rewards and backward passes, not only NFE.

A tiny random Stable Diffusion pipeline (a real VAE decoder in front of every reward) and the
embedded digits model (pixel space: decoding is a clamp, which costs nothing and counts 0).
Each count is checked against the plan the sampler's docstring states, a ``Budget`` on the new
counters is respected, and runs stored before the counters existed still load (they read 0).
"""

from __future__ import annotations

import pytest
import torch

from engines.rewards import build_reward
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import Budget, Cost, CostEvent, DoneEvent, NodeEvent, Trace, collect

TASK = Task(prompt="a cat")


def run(name: str, params: dict, model, reward, budget: Budget | None = None):  # noqa: ANN001, ANN201
    sampler = build_sampler(name, params)
    return collect(sampler.run(TASK, model, reward, budget=budget, rng=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def sd(tiny_sd_folder):  # noqa: ANN001, ANN201
    from engines.models import load_model

    return load_model(f"diffusers:{tiny_sd_folder}", device="cpu")


@pytest.fixture(scope="module")
def ink():  # noqa: ANN201
    reward = build_reward("ink")
    assert reward.differentiable
    return reward


def test_fk_counts_a_decode_per_particle_at_every_potential_and_at_the_end(sd, ink) -> None:  # noqa: ANN001
    n, k, every = 3, 6, 2
    trace = run("fk_steering", {"particles": n, "steps": k, "resample_every": every}, sd, ink)
    looks = len(range(0, k, every))  # potentials at steps 0, 2, 4
    assert trace.done.cost["decodes"] == n * (looks + 1) == trace.done.cost["reward_calls"]
    assert trace.done.cost["backward_passes"] == 0


def test_fk_guidance_counts_reward_backward_passes_and_shares_the_decode(sd, ink) -> None:  # noqa: ANN001
    n, k, every = 2, 6, 3
    trace = run("fk_steering", {"particles": n, "steps": k, "resample_every": every, "guidance": 0.1}, sd, ink)
    guided = sum(1 for i in range(k) if sd.schedule(k).std(i, 1.0) > 0)
    assert guided == k - 1  # the last DDIM step is noiseless: no push there
    # one decode and reward call per particle at each guided step (potential steps 0 and 3 share it) and at the end
    assert trace.done.cost["decodes"] == n * (guided + 1) == trace.done.cost["reward_calls"]
    assert trace.done.cost["backward_passes"] == n * guided
    assert trace.done.cost["backward_nfe"] == 0  # the gradient is taken at x̂0: the UNet is not differentiated


def test_svdd_counts_n_times_m_decodes_per_noisy_step_and_n_at_the_noiseless_last(sd, ink) -> None:  # noqa: ANN001
    n, m, k = 2, 3, 4
    trace = run("svdd", {"particles": n, "candidates": m, "steps": k}, sd, ink)
    assert trace.done.cost["decodes"] == n * m * (k - 1) + n == trace.done.cost["reward_calls"]
    assert trace.done.cost["nfe"] == (n + n * m * (k - 1)) * sd.nfe_for(TASK)


def test_dts_decodes_each_leaf_once(sd, ink) -> None:  # noqa: ANN001
    trace = run("dts", {"rollouts": 5, "steps": 3, "branching": 2}, sd, ink)
    leaves = [i for i, node in trace.nodes.items() if node.final]
    assert trace.done.cost["decodes"] == len(leaves) == trace.done.cost["reward_calls"]


def test_best_of_n_decodes_each_sample_once(sd, ink) -> None:  # noqa: ANN001
    trace = run("best_of_n", {"n": 3, "steps": 3}, sd, ink)
    assert trace.done.cost["decodes"] == 3


def test_reno_counts_backward_passes_through_reward_and_chain(digits_model) -> None:  # noqa: ANN001
    n, iterations, k = 2, 3, 4
    trace = run("reno", {"particles": n, "iterations": iterations, "steps": k}, digits_model, build_reward("ink"))
    assert trace.done.cost["backward_passes"] == n * (iterations - 1)  # no step after the last image
    assert trace.done.cost["backward_nfe"] == n * k * (iterations - 1)
    assert trace.done.cost["decodes"] == 0  # pixel space: decoding is a clamp


def test_a_decode_budget_shrinks_the_plan(sd, ink) -> None:  # noqa: ANN001
    full = run("fk_steering", {"particles": 4, "steps": 4, "resample_every": 2}, sd, ink)
    per_particle = full.done.cost["decodes"] // 4
    capped = run("fk_steering", {"particles": 4, "steps": 4, "resample_every": 2}, sd, ink, Budget(decodes=2 * per_particle + 1))
    assert capped.done.status == "ok" and capped.done.metrics["particles"] == 2
    assert capped.done.cost["decodes"] == 2 * per_particle
    svdd = run("svdd", {"particles": 3, "candidates": 4, "steps": 3}, sd, ink, Budget(decodes=10))
    assert svdd.done.cost["decodes"] <= 10 and svdd.done.picks
    nothing = run("svdd", {"particles": 1, "candidates": 2, "steps": 3}, sd, ink, Budget(decodes=1))
    assert nothing.done.status == "budget" and nothing.done.cost["decodes"] <= 1


def test_a_backward_budget_caps_reno_iterations(digits_model) -> None:  # noqa: ANN001
    trace = run("reno", {"particles": 2, "iterations": 5, "steps": 3}, digits_model, build_reward("ink"), Budget(backward_passes=4))
    assert trace.done.status == "ok" and trace.done.metrics["iterations"] == 3
    assert trace.done.cost["backward_passes"] == 4


def test_runs_stored_before_the_counters_still_load() -> None:
    old = {"generated_tokens": 0, "prefill_tokens": 0, "model_calls": 3, "reward_calls": 4, "reward_tokens": 0, "nfe": 12, "wall_seconds": 0.5}
    cost = Cost.from_dict(old)
    assert (cost.decodes, cost.backward_passes, cost.backward_nfe) == (0, 0, 0) and cost.nfe == 12
    trace = Trace([NodeEvent(id="x1", parent=None, final=True), CostEvent(cost=old), DoneEvent(picks=["x1"], candidates=["x1"], cost=old)])
    again = Trace.from_json(trace.to_json())
    assert again.cost == old
    new = Cost(nfe=5, decodes=7, backward_passes=2, backward_nfe=9)
    assert Cost.from_dict(new.as_dict()) == new
    assert Budget.from_dict({"decodes": 3, "backward_nfe": 1}) == Budget(decodes=3, backward_nfe=1)


def test_the_cost_table_shows_decodes_and_backward_passes() -> None:
    from app.views.trace import cost_markdown

    table = cost_markdown(Cost(nfe=10, decodes=4, backward_passes=2, backward_nfe=6).as_dict())
    assert "| decodes (VAE) | 4 |" in table
    assert "| reward backward passes | 2 |" in table
    assert "| network evaluations back-propagated | 6 |" in table
    assert "decodes" not in cost_markdown({"nfe": 3})  # zero rows stay hidden, old runs render unchanged
