"""tree: denoising rollout trees with per-depth noise and shared prefixes, GRPO inside the tree.

Fu, Ma, Guo, Zhou, Wang, Dong, Zhou, Liu, Fu, Sin, Shi, Chen, Huang & Li, "Dynamic-TreeRPO:
Breaking the Independent Trajectory Bottleneck with Structured Sampling" (arXiv:2509.23352).
What is followed here, on the DDPM/DDIM step protocol (the paper works on flow-matching SDEs):

- a *window* of the chain is stochastic and split into tree layers; outside it every step is a
  deterministic DDIM step (η = 0), as in the paper's sliding-window SDE sampling;
- layer d (``layer_steps`` consecutive steps from ``window_start + d·layer_steps``) draws its
  noise with its own η (``depth_eta``: the paper's *dynamic noise intensities along depth*),
  written into the per-step η schedule (:meth:`TreeConfig.eta_schedule`), so evaluation samples
  the same chain;
- at the first step of layer d every node branches into ``branching[d]`` children that share its
  state exactly (the shared prefix): a tree of depth D has ∏ branching leaves, its trunk (the
  steps before the window) and every inner node's steps are evaluated once for all the leaves
  below them;
- GRPO inside the tree: a leaf's value is its reward, an inner node's value the mean reward of
  the leaves below it, and a node's advantage compares its value with its *siblings'* (the
  children of one parent): GRPO's (V − mean)/std (``group_mean_std``) or leave-one-out
  (``group_loo``). The node's advantage multiplies the log-probs of its own layer's steps.

The advantage rule (node value = mean of its leaves, group-relative among siblings) is TreeRPO's
(Yang et al. 2025, arXiv:2506.05183; the lab's text ``tree_rpo`` follows it too); Dynamic-TreeRPO
performs "GRPO-guided optimization … within this tree structure", and its exact equations could
not be checked here (only the abstract was reachable). Not implemented: its LayerTuning-RL (the
SFT loss as a weighted progress reward with adaptive clipping bounds), PPO ratios and clipping
(one on-policy gradient step per batch), and a KL term.

The loss, with L_d the nodes at depth d, A_c a node's advantage and S(c) its layer's stochastic
steps (x^c the node's states, its parent's state where the layer starts)::

    loss = −Σ_d (1/|L_d|) Σ_{c∈L_d} A_c · Σ_{t∈S(c)} log p_θ(x^c_{t-1} | x^c_t)

With ``group_loo`` a child's value is an unbiased estimate of E[α·r | its state], independent of
its siblings given the parent, so the expected gradient is ∇θ E[α·r] through the window's
stochastic steps: Σ_d E_parent[∇θ_d E[α·r | parent]] (deterministic steps carry no log-prob term
and are not credited). With ``group_mean_std`` each sibling group is also divided by its std.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.diffusion import Eta, Schedule, parse_etas
from engines.trace import Event, GroupEvent, NodeEvent, ScoreEvent
from engines.training.diffusion import SCHEMES
from engines.training.diffusion.base import DiffusionPolicy, DiffusionScheme, SchemeConfig, SchemeContext
from engines.training.diffusion.single_sde import GROUP_BASELINES, group_advantages
from engines.training.tree import VALUE

# ---------------------------------------------------------------------------
# Rollout trees over the denoising chain (shared with the ``branch`` scheme)


@dataclass
class RolloutTree:
    """A batch of rollout trees: ``roots`` trees, each branching ``branching[d]`` ways at depth d.

    Nodes of depth d are rows laid out parent after parent (the children of one node are
    contiguous), so a node's leaves are a contiguous run of the leaf rows."""

    roots: int
    branching: tuple[int, ...]
    final: torch.Tensor  # x_0 of every leaf
    log_probs: list[torch.Tensor]  # per depth: each node's credited log-prob sum (with graph), [nodes at depth d]
    trunk_log_probs: torch.Tensor  # each root's credited log-prob sum over the trunk, [roots]
    credited_steps: list[int]

    def nodes(self, depth: int) -> int:
        """How many nodes the batch has at ``depth`` (0: the children of the roots)."""
        count = self.roots
        for k in self.branching[: depth + 1]:
            count *= k
        return count

    @property
    def leaves(self) -> int:
        return self.nodes(len(self.branching) - 1)


def grow_trees(
    ctx: SchemeContext,
    sched: Schedule,
    eta: Eta,
    roots: int,
    splits: Sequence[int],
    branching: Sequence[int],
    credited: Callable[[int], bool],
) -> RolloutTree:
    """Draw ``roots`` trees: the steps before ``splits[0]`` once per root (the trunk); at
    ``splits[d]`` every node branches into ``branching[d]`` copies of its state, which then run
    their own noise to the next split (the last layer to the end of the chain). The log-prob of
    a stochastic step ``i`` with ``credited(i)`` is kept with its graph (metered as
    ``backward_nfe``); every other step runs without one."""
    policy = ctx.policy
    stochastic = sched.stochastic(eta)
    bounds = [*splits, len(sched)]
    steps: list[int] = []

    def run(x: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for i in range(start, stop):
            grad = stochastic[i] and credited(i)
            pred = ctx.denoise(policy, x, i, sched, grad=grad)
            with torch.set_grad_enabled(grad):
                trans = policy.step(x, i, sched, pred, eta=eta, rng=ctx.rng)
                if grad:
                    total = total + trans.log_prob(trans.sample.detach()).to(torch.float64)
                    steps.append(i)
            x = trans.sample.detach()
        return x, total

    x, trunk = run(policy.initial_noise(roots, ctx.rng), 0, bounds[0])
    log_probs = []
    for d, k in enumerate(branching):
        # the children start from their parent's exact state
        x, total = run(x.repeat_interleave(k, dim=0), bounds[d], bounds[d + 1])
        log_probs.append(total)
    return RolloutTree(roots=roots, branching=tuple(branching), final=x, log_probs=log_probs, trunk_log_probs=trunk,
                       credited_steps=steps)


def node_values(rewards: torch.Tensor, tree: RolloutTree) -> list[torch.Tensor]:
    """Per depth, every node's value: the mean reward of the leaves below it (a leaf's: its reward)."""
    return [rewards.reshape(tree.nodes(d), -1).mean(1) for d in range(len(tree.branching))]


def sibling_advantages(values: list[torch.Tensor], tree: RolloutTree, baseline: str) -> list[torch.Tensor]:
    """Per depth, each node's advantage among its siblings (the children of one parent); a node
    without siblings (branching 1) has none to compare with: 0."""
    return [group_advantages(v, k, baseline) if k > 1 else torch.zeros_like(v)
            for v, k in zip(values, tree.branching, strict=True)]


def tree_loss(advantages: list[torch.Tensor], tree: RolloutTree) -> torch.Tensor:
    """−Σ_d mean over depth d's nodes of A·(their layer's log-probs), and a trunk term: each root's
    trunk log-prob times the mean advantage of its children. Sibling-normalised advantages sum to
    0 under every parent, so that term vanishes: a shared prefix gets no credit."""
    layers = sum((a.detach().to(lp) * lp).mean() for a, lp in zip(advantages, tree.log_probs, strict=True))
    trunk = advantages[0].detach().to(tree.trunk_log_probs).reshape(tree.roots, -1).mean(1)
    return -(layers + (trunk * tree.trunk_log_probs).mean())


def learn_from_trees(
    ctx: SchemeContext, tree: RolloutTree, sched: Schedule, eta: Eta, *, weight: float, baseline: str,
    meta: dict[str, Any],
) -> Generator[Event, None, tuple[torch.Tensor, dict[str, Any]]]:
    """Score the leaves, back up the node values, take the sibling advantages (of α·V), yield the
    trees' trace and return (the loss, its metrics)."""
    ctx.budget.spend(samples=tree.leaves)
    images = ctx.policy.decode(tree.final)
    rewards = ctx.score(images)
    values = node_values(rewards, tree)
    advantages = sibling_advantages([weight * v for v in values], tree, baseline)
    loss = tree_loss(advantages, tree)
    yield from tree_events(ctx, tree, images, values, advantages, stochastic=sched.stochastic(eta), meta=meta)
    return loss, {"loss": float(loss.detach()), "reward_mean": float(rewards.mean()),
                  "logprob_terms": len(set(tree.credited_steps)), "trees": tree.roots}


def tree_events(
    ctx: SchemeContext,
    tree: RolloutTree,
    images: torch.Tensor,
    values: list[torch.Tensor],
    advantages: list[torch.Tensor],
    *,
    stochastic: Sequence[bool],
    meta: dict[str, Any] | None = None,
) -> list[Event]:
    """The trace of one update's trees: a root per update, a node per tree (its trunk) and per
    tree node (inner nodes score their value as a partial ``score``; leaves carry their image
    and reward), each with its advantage, and one group event over the leaves."""
    root = f"u{ctx.step}"
    reward_name = str(getattr(ctx.reward, "name", "reward"))
    events: list[Event] = [NodeEvent(id=root, parent=None, meta={"update": ctx.step})]
    parents = [f"{root}.t{j}" for j in range(tree.roots)]
    tree_values = values[0].reshape(tree.roots, -1).mean(1).tolist()
    values, advantages = [v.tolist() for v in values], [a.tolist() for a in advantages]
    for j, node in enumerate(parents):
        events.append(NodeEvent(id=node, parent=root, depth=1, meta={"tree": j}))
        events.append(ScoreEvent(node=node, reward=VALUE, value=tree_values[j], partial=True))
    depth = len(tree.branching)
    uris = ctx.policy.to_data_uris(images.detach())
    for d, k in enumerate(tree.branching):
        ids = [f"{parents[row // k]}.{row % k}" for row in range(tree.nodes(d))]
        last = d == depth - 1
        for row, node in enumerate(ids):
            events.append(NodeEvent(id=node, parent=parents[row // k], depth=d + 2, image=uris[row] if last else None,
                                    final=last, meta={"advantage": advantages[d][row], "tree_depth": d}))
            events.append(ScoreEvent(node=node, reward=reward_name if last else VALUE, value=values[d][row],
                                     partial=not last))
        parents = ids
    events.append(
        GroupEvent(
            step=ctx.step, prompt=root, nodes=parents, rewards=values[-1], advantages=advantages[-1],
            meta={"stochastic_steps": [i for i, s in enumerate(stochastic) if s], "branching": list(tree.branching),
                  "credited_steps": sorted(set(tree.credited_steps)), **(meta or {})},
        )
    )
    return events


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated whole numbers, got {text!r}") from None
    return values


# ---------------------------------------------------------------------------
# The scheme


class TreeConfig(SchemeConfig):
    label = "Rollout tree (Dynamic-TreeRPO)"
    paper = "Fu et al. 2025, Dynamic-TreeRPO: Breaking the Independent Trajectory Bottleneck with Structured Sampling"
    summary = "Tree rollouts over a stochastic window, η per tree layer, shared prefixes; GRPO among siblings on mean-leaf values."

    batch_size: int = param(16, label="Leaves per update", min=1, max=4096, help="Final samples per update: whole trees.")
    branching: str = param("2,2", label="Branching per depth", help="Children per node at each tree layer, e.g. 2,2: 4 leaves a tree.")
    depth_eta: str = param(
        "1.0,0.7", label="η per depth", help="The step noise of each tree layer, one η per depth (Dynamic-TreeRPO's dynamic noise)."
    )
    window_start: int = param(0, label="Window start", min=0, max=999, help="Chain step where the first layer begins (ODE before).")
    layer_steps: int = param(2, label="Steps per layer", min=1, max=1000, help="Consecutive stochastic steps in each tree layer.")
    baseline: str = param(
        "group_mean_std", label="Advantage", choices=GROUP_BASELINES,
        help="Among siblings: GRPO's (V − mean)/std, or leave-one-out (unbiased, no rescaling).",
    )

    def validate(self) -> None:
        super().validate()
        if self.eta_steps.strip() or self.eta_shape != "constant" or self.eta != 1.0:
            raise ConfigError("tree sets η per step itself (depth_eta on the window, 0 elsewhere); "
                              "leave eta, eta_steps and eta_shape")
        branching, etas = self.branching_factors(), self.depth_etas()
        if any(k < 1 for k in branching) or all(k < 2 for k in branching):
            raise ConfigError(f"branching {self.branching!r}: every factor >= 1, and at least one >= 2")
        if len(etas) != len(branching):
            raise ConfigError(f"depth_eta has {len(etas)} values for {len(branching)} tree layers")
        if self.batch_size % self.leaves_per_tree():
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of {self.leaves_per_tree()} leaves per tree")

    def branching_factors(self) -> tuple[int, ...]:
        return parse_ints(self.branching, "branching")

    def depth_etas(self) -> tuple[float, ...]:
        return parse_etas(self.depth_eta, "depth_eta")

    def leaves_per_tree(self) -> int:
        count = 1
        for k in self.branching_factors():
            count *= k
        return count

    def splits(self) -> tuple[int, ...]:
        """The chain step where each tree layer starts."""
        return tuple(self.window_start + d * self.layer_steps for d in range(len(self.branching_factors())))

    def eta_schedule(self, sched: Schedule) -> tuple[float, ...]:
        """η per step: layer d's η on its steps, 0 (deterministic) before and after the window and
        on any step whose σ would fall below ``noise_floor``."""
        splits = self.splits()
        end = splits[-1] + self.layer_steps
        if end > len(sched):
            raise ConfigError(f"the tree window (steps {splits[0]}–{end - 1}) runs past a {len(sched)}-step chain")
        etas = [0.0] * len(sched)
        for start, e in zip(splits, self.depth_etas(), strict=True):
            etas[start:start + self.layer_steps] = [e] * self.layer_steps
        return tuple(e if sched.std(i, e) >= self.noise_floor else 0.0 for i, e in enumerate(etas))


@SCHEMES.register("tree")
class Tree(DiffusionScheme):
    name = "tree"
    Config = TreeConfig

    def check_inputs(self, policy: DiffusionPolicy, reward: Any) -> None:
        super().check_inputs(policy, reward)
        sched = policy.schedule(self.config.steps)
        stochastic = sched.stochastic(self.config.eta_schedule(sched))
        for d, start in enumerate(self.config.splits()):
            if self.config.branching_factors()[d] > 1 and not stochastic[start]:
                raise ConfigError(f"tree layer {d} branches at step {start}, which has σ = 0 there: its branches would be "
                                  "identical; give it η > 0 or move the window earlier")

    def plan(self, sched: Schedule) -> dict[str, int]:
        # An upper bound per leaf: the trunk and inner nodes are evaluated once for all the leaves below them.
        stochastic = sum(sched.stochastic(self.config.eta_schedule(sched)))
        return {"nfe": len(sched), "backward_nfe": stochastic, "backward_passes": 0}

    def loss(self, ctx: SchemeContext, n: int):
        cfg = self.config
        per_tree = cfg.leaves_per_tree()
        if n < per_tree:  # the loop shrank the batch to what the budget allows
            raise BudgetExhausted(f"budget exhausted: no room for a tree of {per_tree} leaves")
        sched = ctx.policy.schedule(cfg.steps)
        eta = cfg.eta_schedule(sched)
        tree = grow_trees(ctx, sched, eta, n // per_tree, cfg.splits(), cfg.branching_factors(), lambda i: True)
        return (yield from learn_from_trees(ctx, tree, sched, eta, weight=cfg.reward_weight, baseline=cfg.baseline,
                                            meta={"depth_eta": list(cfg.depth_etas())}))
