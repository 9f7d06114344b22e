"""``branch`` (B²-DiffuRL) and ``tree`` (Dynamic-TreeRPO) on the Gaussian-mixture toy: their rules and gradients.

The toy (:class:`StepShiftToy`) has one (shift, slope) row of θ per timestep and r(x) = x, so a
gradient's rows say which steps it reached.

Rules: branch samples start from the exact same state at the branch point and the prefix is drawn
once per group; the trained interval follows the released code's stage schedule and only its
stochastic steps get log-prob terms (gradient rows); a prefix log-prob term would cancel inside a
branch; tree nodes share their parent's exact state, each layer draws noise with its own η,
every node's value is the mean reward of the leaves below it, and advantages are normalised
within each sibling group; the network evaluations count the shared prefixes once.

Estimators (leave-one-out baselines, the unbiased option): the mean gradient over seeds equals
the pathwise (reparameterised) gradient of E[x_0] on the rows the docstring credits (4 standard
errors + 2% for the pathwise estimate's own error) and is exactly 0 elsewhere. Wrong variants
fail: for branch, log-probs on every step with the advantage taken across branches (DDPO over the
whole chain); for tree, the advantage normalised across the whole tree instead of among siblings.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.errors import ConfigError
from engines.trace import Trace
from engines.training.diffusion import branch as branch_module
from engines.training.diffusion import build_scheme
from engines.training.diffusion import tree as tree_module
from engines.training.diffusion.base import DiffusionAllowance, SchemeContext
from engines.training.diffusion.branch import Branch
from engines.training.diffusion.single_sde import group_advantages
from engines.training.diffusion.tree import VALUE, Tree
from tests.diffusion.test_decaying_noise import pathwise_gradient
from tests.diffusion.test_single_sde import events_and_result
from tests.diffusion.trainable_toys import StepShiftToy

STEPS = 6


class RecordingToy(StepShiftToy):
    """Remembers every state the network is asked about, by chain step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[int, torch.Tensor] = {}

    def predict(self, x, step, schedule, task=None, *, usage=None):  # noqa: ANN001, ANN201
        self.seen[step] = x.detach().clone()
        return super().predict(x, step, schedule, task, usage=usage)


@pytest.fixture()
def toy(mixture):
    return StepShiftToy(mixture, default_steps=STEPS)


def run_loss(scheme, policy, reward, n: int, *, step: int = 0, seed: int = 0):
    budget = DiffusionAllowance()
    ctx = SchemeContext(policy=policy, reward=reward, budget=budget, rng=torch.Generator().manual_seed(seed), step=step)
    events, (loss, metrics) = events_and_result(scheme.loss(ctx, n))
    return events, loss, metrics, budget


def grad_rows(policy, loss) -> list[int]:
    policy.module.zero_grad(set_to_none=True)
    loss.backward()
    return [t for t in range(policy.theta.shape[0]) if policy.theta.grad[t].abs().sum() > 0]


# ---------------------------------------------------------------------------
# branch: rules


def test_branch_samples_share_the_exact_prefix_state_and_the_prefix_is_drawn_once(mixture, coordinate_reward):
    policy = RecordingToy(mixture, default_steps=STEPS)
    scheme = build_scheme("branch", {"branch_size": 4, "batch_size": 12, "first_interval": 3, "noise_floor": 0.0})
    events, _, _, budget = run_loss(scheme, policy, coordinate_reward, 12)
    start = STEPS - 3
    for i in range(start):  # the prefix: one chain per group
        assert policy.seen[i].shape[0] == 3
    at_branch = policy.seen[start].reshape(3, 4, -1)
    assert torch.equal(at_branch, at_branch[:, :1].expand_as(at_branch))  # bit-for-bit the same state
    assert not torch.equal(at_branch[0, 0], at_branch[1, 0])  # groups have their own prefixes
    after = policy.seen[start + 1].reshape(3, 4, -1)
    assert all(len({tuple(row.tolist()) for row in group}) == 4 for group in after)  # the branches' own noise
    assert budget.spent == {"samples": 12, "nfe": 3 * start + 12 * 3, "backward_nfe": 12 * 2, "backward_passes": 0,
                            "reward_calls": 12}
    group = events[-1]
    assert group.meta["interval"] == [start, STEPS] and group.meta["credited_steps"] == [start, start + 1]


def test_the_trained_interval_follows_the_curriculum_and_only_its_steps_get_log_probs(toy, coordinate_reward):
    params = {"branch_size": 2, "batch_size": 4, "first_interval": 2, "last_interval": 5, "curriculum_updates": 8,
              "noise_floor": 0.0}
    cfg = build_scheme("branch", params).config
    # the released code's stage schedule: left + ⌊i·(right − left + 1)/stages⌋, one stage per update, then held
    assert [cfg.trained_steps(u, STEPS) for u in range(10)] == [2 + u * 4 // 8 for u in range(8)] + [5, 5]
    assert [cfg.trained_steps(u, STEPS) for u in range(10)] == [2, 2, 3, 3, 4, 4, 5, 5, 5, 5]
    whole = build_scheme("branch", {**params, "last_interval": None, "curriculum_updates": 3}).config
    assert [whole.trained_steps(u, STEPS) for u in range(5)] == [2, 3, 5, 6, 6]  # empty: up to the whole chain
    sched = toy.schedule()
    stochastic = sched.stochastic(cfg.eta_schedule(sched))
    assert stochastic == (True,) * 5 + (False,)  # the last step lands on ᾱ = 1
    scheme = Branch(cfg)
    for update in (0, 2, 4, 7, 50):
        m = cfg.trained_steps(update, STEPS)
        _, loss, metrics, _ = run_loss(scheme, toy, coordinate_reward, 4, step=update)
        trained = [sched.timesteps[i] for i in range(STEPS - m, STEPS) if stochastic[i]]
        assert grad_rows(toy, loss) == sorted(trained), (update, m)
        assert metrics["interval_start"] == STEPS - m and metrics["logprob_terms"] == len(trained)


def test_a_prefix_log_prob_cancels_inside_a_branch(toy, coordinate_reward):
    """Why branching isolates the interval: the branches share the prefix, their advantages sum to 0."""
    scheme = CreditEveryStep(build_scheme("branch", {"branch_size": 4, "batch_size": 8, "first_interval": 2,
                                                     "baseline": "group_loo", "noise_floor": 0.0}).config)
    _, loss, _, _ = run_loss(scheme, toy, coordinate_reward, 8)
    toy.module.zero_grad(set_to_none=True)
    loss.backward()
    prefix_rows = list(toy.schedule().timesteps[: STEPS - 2])
    assert torch.allclose(toy.theta.grad[prefix_rows], torch.zeros(STEPS - 2, 2, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("name", ["branch", "tree"])
def test_advantages_are_normalised_within_each_branch_or_sibling_group(toy, coordinate_reward, name):
    params = {"branch": {"branch_size": 4, "batch_size": 12},
              "tree": {"branching": "3,2", "depth_eta": "1,0.5", "batch_size": 12, "layer_steps": 2}}[name]
    events, _, _, _ = run_loss(build_scheme(name, params), toy, coordinate_reward, 12)
    nodes = [e for e in events if e.kind == "node" and "advantage" in e.meta]
    by_parent: dict[str, list[float]] = {}
    for node in nodes:
        by_parent.setdefault(node.parent, []).append(node.meta["advantage"])
    sizes = {len(v) for v in by_parent.values()}
    assert sizes == ({4} if name == "branch" else {3, 2})
    for siblings in by_parent.values():
        adv = torch.tensor(siblings, dtype=torch.float64)
        assert abs(float(adv.mean())) < 1e-9 and math.isclose(float(adv.std()), 1.0, rel_tol=1e-4)


# ---------------------------------------------------------------------------
# tree: rules


def test_tree_nodes_share_their_parents_state_and_each_layer_has_its_own_eta(mixture, coordinate_reward):
    policy = RecordingToy(mixture, default_steps=STEPS)
    scheme = build_scheme("tree", {"branching": "2,3", "depth_eta": "1.0,0.4", "window_start": 1, "layer_steps": 2,
                                   "batch_size": 12, "noise_floor": 0.0})
    sched = policy.schedule()
    eta = scheme.config.eta_schedule(sched)
    assert eta == (0.0, 1.0, 1.0, 0.4, 0.4, 0.0)  # ODE trunk, layer 0, layer 1, ODE to the end
    events, _, _, budget = run_loss(scheme, policy, coordinate_reward, 12)
    assert policy.seen[0].shape[0] == 2  # the trunk: once per tree
    layer0 = policy.seen[1].reshape(2, 2, -1)
    assert torch.equal(layer0, layer0[:, :1].expand_as(layer0))
    layer1 = policy.seen[3].reshape(4, 3, -1)
    assert torch.equal(layer1, layer1[:, :1].expand_as(layer1))
    assert len({tuple(r.tolist()) for r in policy.seen[3].reshape(4, 3, -1)[:, 0]}) == 4  # the 4 inner nodes differ
    # network evaluations: trunk 2 trees × 1 step, layer 0: 4 nodes × 2 steps, layer 1 and the ODE tail: 12 leaves × 3
    assert budget.spent == {"samples": 12, "nfe": 2 + 4 * 2 + 12 * 3, "backward_nfe": 4 * 2 + 12 * 2, "backward_passes": 0,
                            "reward_calls": 12}
    assert [sched.std(i, eta) for i in (3, 4)] == [sched.std(i, 0.4) for i in (3, 4)]
    assert scheme.plan(sched)["nfe"] * 12 >= budget.spent["nfe"]


def test_tree_node_values_are_the_mean_of_their_leaves(toy, coordinate_reward):
    scheme = build_scheme("tree", {"branching": "2,2,3", "depth_eta": "1,0.8,0.6", "layer_steps": 1, "batch_size": 24})
    events, _, _, _ = run_loss(scheme, toy, coordinate_reward, 24)
    trace = Trace(events)
    parent = {e.id: e.parent for e in events if e.kind == "node"}
    leaves = {e.node: e.value for e in events if e.kind == "score" and not e.partial}
    inner = {e.node: e.value for e in events if e.kind == "score" and e.partial}
    assert len(leaves) == 24 and len(inner) == 2 + 4 + 8  # trees, depth-0 and depth-1 nodes
    assert all(e.reward == VALUE for e in events if e.kind == "score" and e.partial)

    def below(node: str) -> list[float]:
        return [v for leaf, v in leaves.items() if leaf.startswith(node + ".")]

    for node, value in inner.items():
        assert math.isclose(value, sum(below(node)) / len(below(node)), rel_tol=1e-12), node
    assert len(trace.groups) == 1 and trace.groups[0].rewards == [leaves[n] for n in trace.groups[0].nodes]
    assert all(parent[n].count(".") == 3 for n in trace.groups[0].nodes)  # leaves hang under depth-1 nodes


def test_bad_tree_and_branch_settings_are_one_line_errors(toy, coordinate_reward):
    cases = [
        ("tree", {"branching": "2,x"}, "whole numbers"),
        ("tree", {"branching": "1,1", "depth_eta": "1,1"}, "at least one >= 2"),
        ("tree", {"depth_eta": "1"}, "1 values for 2 tree layers"),
        ("tree", {"depth_eta": "1,1.5"}, "every η in depth_eta must be between 0 and 1"),
        ("tree", {"depth_eta": "1,-0.5"}, "every η in depth_eta must be between 0 and 1"),
        ("tree", {"batch_size": 6}, "multiple of 4 leaves"),
        ("tree", {"eta_steps": "1,1,1,1,1,1"}, "sets η per step itself"),
        ("tree", {"eta": 0.5}, "sets η per step itself"),
        ("branch", {"batch_size": 6, "branch_size": 4}, "multiple of branch_size"),
        ("branch", {"first_interval": 4, "last_interval": 2}, "shorter than"),
    ]
    for name, params, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_scheme(name, params)
    with pytest.raises(ConfigError, match="runs past"):
        build_scheme("tree", {"window_start": 4, "layer_steps": 2}).check_inputs(toy, coordinate_reward)
    with pytest.raises(ConfigError, match="σ = 0"):  # the last step lands on ᾱ = 1: its branches would be identical
        build_scheme("tree", {"window_start": 4, "layer_steps": 1}).check_inputs(toy, coordinate_reward)
    with pytest.raises(ConfigError, match="raise first_interval"):
        build_scheme("branch", {"first_interval": 1}).check_inputs(toy, coordinate_reward)
    with pytest.raises(ConfigError, match="longer than"):
        build_scheme("branch", {"first_interval": 7}).check_inputs(toy, coordinate_reward)


# ---------------------------------------------------------------------------
# Estimators


class CreditEveryStep(Branch):
    """Log-prob terms on every stochastic step, the prefix's too (what the curriculum leaves out)."""

    def loss(self, ctx, n):
        real = branch_module.grow_trees
        branch_module.grow_trees = lambda c, s, e, r, splits, k, credited: real(c, s, e, r, splits, k, lambda i: True)
        try:
            return (yield from super().loss(ctx, n))
        finally:
            branch_module.grow_trees = real


class WholeChainAcrossBranches(CreditEveryStep):
    """Wrong: DDPO over the whole chain, the advantage taken across branches (the whole batch)."""

    def loss(self, ctx, n):
        within = tree_module.sibling_advantages
        tree_module.sibling_advantages = lambda values, tree, b: [group_advantages(v, v.numel(), b) for v in values]
        try:
            return (yield from super().loss(ctx, n))
        finally:
            tree_module.sibling_advantages = within


class AcrossTheTree(Tree):
    """Wrong: every node's advantage from its leaves' rewards normalised across the whole tree (leave-one-out
    over all the tree's leaves, averaged over the node's leaves) instead of among its siblings."""

    def loss(self, ctx, n):
        within = tree_module.sibling_advantages

        def across(values, tree, baseline):
            leaves = values[-1].reshape(tree.roots, -1)
            size = leaves.shape[1]
            loo = (leaves - (leaves.sum(1, keepdim=True) - leaves) / (size - 1)).reshape(-1)
            return [loo.reshape(tree.nodes(d), -1).mean(1) for d in range(len(tree.branching))]

        tree_module.sibling_advantages = across
        try:
            return (yield from super().loss(ctx, n))
        finally:
            tree_module.sibling_advantages = within


def mc(scheme, policy, reward, n: int, batches: int = 12, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    def one(seed):
        policy.module.zero_grad(set_to_none=True)
        ctx = SchemeContext(policy=policy, reward=reward, budget=DiffusionAllowance(), rng=torch.Generator().manual_seed(seed),
                            step=step)
        loss, _ = events_and_result(scheme.loss(ctx, n))[1]
        loss.backward()
        return -policy.theta.grad.detach().clone()

    grads = torch.stack([one(seed) for seed in range(batches)])
    return grads.mean(0), grads.std(0) / math.sqrt(batches)


def matches(mean, se, exact) -> bool:
    return bool(torch.all((mean - exact).abs() < 4 * se + 0.02 * exact.abs() + 1e-9))


def test_branch_gradient_is_the_interval_gradient_and_whole_chain_across_branches_fails(toy, coordinate_reward):
    params = {"branch_size": 4, "batch_size": 4000, "first_interval": 3, "baseline": "group_loo", "noise_floor": 0.0}
    scheme = build_scheme("branch", params)
    sched = toy.schedule()
    eta = scheme.config.eta_schedule(sched)
    stochastic = sched.stochastic(eta)
    rows = list(sched.timesteps)
    interval = [rows[i] for i in range(STEPS - 3, STEPS) if stochastic[i]]
    prefix = [rows[i] for i in range(STEPS - 3)]
    exact = pathwise_gradient(toy, sched, eta, 200_000, 1)
    target = torch.zeros_like(exact)
    target[interval] = exact[interval]  # ∇ E[x_0] through the interval's stochastic steps only
    mean, se = mc(scheme, toy, coordinate_reward, 4000)
    assert matches(mean[interval], se[interval], target[interval]), (mean[interval], target[interval], se[interval])
    assert torch.count_nonzero(mean[prefix]) == 0 and torch.count_nonzero(exact[prefix]) > 0
    wrong, wrong_se = mc(WholeChainAcrossBranches(scheme.config), toy, coordinate_reward, 4000)
    assert not matches(wrong[interval + prefix], wrong_se[interval + prefix], target[interval + prefix])


def test_tree_gradient_is_the_window_gradient_and_normalising_across_the_tree_fails(toy, coordinate_reward):
    params = {"branching": "2,2", "depth_eta": "1.0,0.6", "window_start": 1, "layer_steps": 2, "batch_size": 4000,
              "baseline": "group_loo", "noise_floor": 0.0}
    scheme = build_scheme("tree", params)
    sched = toy.schedule()
    eta = scheme.config.eta_schedule(sched)
    stochastic = sched.stochastic(eta)
    window = [t for t, s in zip(sched.timesteps, stochastic, strict=True) if s]
    assert len(window) == 4
    outside = [t for t, s in zip(sched.timesteps, stochastic, strict=True) if not s]
    exact = pathwise_gradient(toy, sched, eta, 200_000, 1)
    mean, se = mc(scheme, toy, coordinate_reward, 4000)
    assert matches(mean[window], se[window], exact[window]), (mean[window], exact[window], se[window])
    assert torch.count_nonzero(mean[outside]) == 0  # ODE steps: no log-prob term
    wrong, wrong_se = mc(AcrossTheTree(scheme.config), toy, coordinate_reward, 4000)
    assert not matches(wrong[window], wrong_se[window], exact[window]), (wrong[window], exact[window])


@pytest.mark.parametrize("name", ["branch", "tree"])
def test_the_train_tab_draws_the_schemes_rollout_tree(toy, coordinate_reward, name):
    """The Train tab's rollout-tree panel (app.views.rollouts.RolloutTree) picks up both schemes' events."""
    from app.views.rollouts import RolloutTree

    params = {"branch_size": 4} if name == "branch" else {"branching": "2,2"}
    events, _, _, _ = run_loss(build_scheme(name, params), toy, coordinate_reward, 8)
    tree = RolloutTree()
    assert any([tree.add(e) for e in events]) and tree.newest is not None
    drawn = sum(len(t.x) for t in tree.figure().data if t.mode == "markers")
    assert drawn == sum(1 for e in events if e.kind == "node")
