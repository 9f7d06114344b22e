"""What DTS and SVDD sample on the Gaussian-mixture toy, against the closed-form tilted target.

The toy: p0 = 0.7·N(−2, 0.5²) + 0.3·N(2, 0.5²) with an exact denoiser, r(x) = x, λ = 0.5
(for SVDD α = 1/λ = 2): base P(x>0) = 0.30, target P(x>0) = 0.76.

DTS. Descending a finished tree by exp(λ·v̂) with the soft Bellman backup picks a leaf with
probability exactly ∝ exp(λ·r(leaf))·Π 1/|C(x)| over its ancestors x: self-normalised
importance resampling of the tree's leaves (tested exactly, with a wrong draw that must fail).
With a cap of ``branching`` children per node the tree is biased toward the base model at any
affordable size: nodes whose first rollouts scored low are rarely revisited, so their low
estimates persist, while lucky nodes are revisited and regress to the mean. Measured (8 seeds,
40 steps, branching 4): P(x>0) 0.53 / 0.57 / 0.56 at 32 / 128 / 512 rollouts against a target
of 0.76 -- the method's finite-tree bias (the paper's exactness is a limit of infinite
rollouts), not a departure from its algorithm. The test pins down what is true: DTS moves the
law clearly away from the base toward the target and stays clearly short of it.

SVDD. With M candidates per step kept by softmax(v/α), v = r(x̂0): M = 1 is the base chain;
as M grows P(x>0) rises toward the target (measured 0.28 / 0.48 / 0.60 / 0.69 at M = 1, 2, 4,
16) but the posterior-mean value r(x̂0) is not the soft value α·log E[exp(r/α) | x_t], so even
M → ∞ is an approximation of p0·exp(r/α); the test checks M = 1 against the base law and M = 4
strictly between base and target.
"""

from __future__ import annotations

import math
import statistics

import torch

from engines.samplers import build_sampler
from engines.samplers.dts import DiffusionTreeSampling, TreeNode
from engines.task import Task
from engines.trace import collect

LAM = 0.5
TASK = Task(prompt="")


class KeepsTheTree(DiffusionTreeSampling):
    """DTS that hands its finished tree to the test (the algorithm itself is unchanged)."""

    def _draw(self, root, rng):  # noqa: ANN001, ANN202
        self.root = root
        return super()._draw(root, rng)


class DrawsUniformly(KeepsTheTree):
    """A wrong draw: descend to a uniformly chosen child, ignoring the values."""

    def _draw(self, root, rng):  # noqa: ANN001, ANN202
        self.root = root
        node = root
        while node.children:
            node = node.children[int(torch.randint(len(node.children), (1,), generator=rng))]
        return node


def leaf_weights(node: TreeNode, mass: float = 1.0) -> list[tuple[float, float]]:
    """(Π 1/|C| along the path, reward) for every leaf under ``node``."""
    if not node.children:
        return [(mass, node.reward)]
    return [pair for child in node.children for pair in leaf_weights(child, mass / len(node.children))]


def tree_law_above_zero(root: TreeNode) -> float:
    pairs = leaf_weights(root)
    log_w = torch.tensor([math.log(m) + LAM * r for m, r in pairs], dtype=torch.float64)
    xs = torch.tensor([r for _, r in pairs], dtype=torch.float64)
    return float((torch.softmax(log_w, 0) * (xs > 0)).sum())


def grow(cls, toy_model, reward, seed: int, rollouts: int = 32):  # noqa: ANN001, ANN201
    sampler = cls(cls.Config(rollouts=rollouts, lam=LAM, branching=4, steps=40))
    trace = collect(sampler.run(TASK, toy_model, reward, rng=torch.Generator().manual_seed(seed)))
    assert trace.done.status == "ok"
    return sampler


def test_dts_draws_follow_the_tree_law(toy_model, coordinate_reward) -> None:  # noqa: ANN001
    draws = 1500
    for cls, should_pass in ((KeepsTheTree, True), (DrawsUniformly, False)):
        sampler = grow(cls, toy_model, coordinate_reward, seed=3, rollouts=48)
        p = tree_law_above_zero(sampler.root)
        rng = torch.Generator().manual_seed(7)
        hits = sum(sampler._draw(sampler.root, rng).reward > 0 for _ in range(draws)) / draws
        bound = 4 * math.sqrt(p * (1 - p) / draws)
        assert (abs(hits - p) < bound) is should_pass, f"{cls.__name__}: draws {hits:.3f}, tree law {p:.3f} ± {bound:.3f}"


def test_dts_tilts_toward_the_target_but_a_finite_tree_falls_short(toy_model, mixture, coordinate_reward) -> None:  # noqa: ANN001
    base, target = mixture.mass_above(0.0), mixture.tilt_linear([1.0], LAM).mass_above(0.0)
    laws = [tree_law_above_zero(grow(KeepsTheTree, toy_model, coordinate_reward, seed).root) for seed in range(8)]
    mean, se = statistics.fmean(laws), statistics.stdev(laws) / math.sqrt(len(laws))
    assert base + 2 * se < mean < target - 2 * se, f"DTS P(x>0) = {mean:.3f} ± {se:.3f} (base {base:.2f}, target {target:.2f})"


def test_dts_star_descends_greedily_by_value() -> None:
    sampler = DiffusionTreeSampling(DiffusionTreeSampling.Config(mode="search"))
    parent = TreeNode(depth=0, x=None, parent=None, visits=10)
    parent.children = [TreeNode(depth=1, x=None, parent=parent, value=v, visits=n) for v, n in ((0.2, 1), (0.9, 8), (0.5, 1))]
    assert sampler._choose(parent, torch.Generator().manual_seed(0)) is parent.children[1]
    bonus = DiffusionTreeSampling(DiffusionTreeSampling.Config(mode="search", exploration=2.0))
    assert bonus._choose(parent, torch.Generator().manual_seed(0)) is not parent.children[1]  # the opt-in UCT bonus


def svdd_above_zero(toy_model, reward, m: int) -> tuple[float, int]:  # noqa: ANN001
    sampler = build_sampler("svdd", {"particles": 1000, "candidates": m, "alpha": 1 / LAM, "steps": 40})
    trace = collect(sampler.run(TASK, toy_model, reward, rng=torch.Generator().manual_seed(0)))
    finals = [i for i, node in trace.nodes.items() if node.final]
    return sum(trace.scores[i]["x0"] > 0 for i in finals) / len(finals), len(finals)


def test_svdd_with_one_candidate_is_the_base_chain_and_more_candidates_tilt_it(toy_model, mixture, coordinate_reward) -> None:  # noqa: ANN001
    base, target = mixture.mass_above(0.0), mixture.tilt_linear([1.0], LAM).mass_above(0.0)
    p1, n = svdd_above_zero(toy_model, coordinate_reward, 1)
    se = math.sqrt(base * (1 - base) / n)
    assert abs(p1 - base) < 4 * se, f"M = 1: P(x>0) = {p1:.3f}, base {base:.3f}"
    p4, _ = svdd_above_zero(toy_model, coordinate_reward, 4)
    assert base + 10 * se < p4 < target, f"M = 4: P(x>0) = {p4:.3f} (base {base:.2f}, target {target:.2f})"


def test_dts_star_stops_once_its_greedy_path_is_complete(toy_model, coordinate_reward) -> None:  # noqa: ANN001
    sampler = build_sampler("dts", {"rollouts": 1000, "steps": 4, "branching": 1, "mode": "search"})
    trace = collect(sampler.run(TASK, toy_model, coordinate_reward, rng=torch.Generator().manual_seed(0)))
    # one child per node: the first rollout completes the only path; greedy would walk it forever
    assert trace.done.metrics["converged"] and trace.done.metrics["leaves"] == 1
    assert trace.done.cost["nfe"] == 4  # one chain: each of the 4 states before x0 evaluated once
