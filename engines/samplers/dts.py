"""Diffusion Tree Sampling (DTS) and its greedy variant, Diffusion Tree Search (DTS*).

Jain, Sareen, Pedramfar & Ravanbakhsh, "Diffusion Tree Sampling: Scalable
inference-time alignment of diffusion models" (2025, arXiv:2506.20701);
project page: diffusion-tree-sampling.github.io.

The reverse chain is a depth-K tree: a node holds a state x_t, a soft value
estimate v̂(x_t) and a visit count; an edge is one stochastic denoising step.
Every iteration (one "rollout"):

1. **Selection** -- from the root, descend through nodes whose children are
   all expanded (``branching`` children), choosing a child by the Boltzmann
   policy ∝ exp(λ·v̂(child)) (DTS), or greedily by the UCT score
   v̂(child) + c·√(ln N(parent) / N(child)) (DTS*, ``mode = "search"``).
2. **Expansion** -- at the first node with room, draw a new child
   x_{t-1} ~ p_θ(·|x_t).
3. **Rollout** -- denoise the new child to x0 with p_θ; every state on the way
   joins the tree.
4. **Backup** -- v̂(x0) = r(x0); up the path, the soft Bellman backup
   v̂(x_t) = (1/λ)·log( (1/|C|)·Σ_{c∈C(x_t)} exp(λ·v̂(c)) ), the children
   being samples of p_θ(·|x_t); visit counts grow by one.

The soft value solves V_t(x_t) = (1/λ) log E_{p_θ}[exp(λ V_{t-1}(x_{t-1}))], so
descending by exp(λ·v̂) samples the target p_θ(x0)·exp(λ·r(x0))/Z as the tree
grows (DTS returns ``samples`` such draws); DTS* returns the best leaf found.
The root is a dummy state whose children are the initial noises x_T ~ N(0, I).

| code | paper | meaning |
|---|---|---|
| ``lam`` | λ | inverse temperature of the target |
| ``value`` | v̂(x_t) | soft value estimate |
| ``visits`` | N(x_t) | visit count |
| ``branching`` | maximum children | children per node before selection descends |
| ``exploration`` | c_uct | DTS* exploration constant |

Nodes cache their network prediction, so expanding a second child of a node
costs no extra evaluation; a rollout from depth d costs K − d evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.diffusion_common import (
    DiffusionConfig,
    DiffusionSampler,
    image_uris,
    preview_uris,
    reward_name,
    scores,
    state_nodes,
)
from engines.trace import Event, SelectEvent


class DTSConfig(DiffusionConfig):
    size_field = "rollouts"
    label = "Diffusion Tree Sampling / Search"
    paper = "Jain et al. 2025, Diffusion Tree Sampling: Scalable inference-time alignment of diffusion models"
    summary = "A tree over denoising trajectories with soft value backups; sample (DTS) or search (DTS*)."

    mode: Literal["sample", "search"] = param(
        "sample", label="Mode", choices=("sample", "search"), help="sample: DTS (Boltzmann); search: DTS* (greedy UCT)."
    )
    rollouts: int = param(32, label="Rollouts", min=1, max=100000, help="Tree iterations (each ends at a new x0).")
    lam: float = param(10.0, label="λ (reward weight)", min=1e-6, max=1000.0, help="Target p(x)·exp(λ·r(x)).")
    branching: int = param(4, label="Children per node", min=1, max=1024, help="Expansions before a node is full.")
    exploration: float = param(
        0.5, label="UCT exploration (DTS*)", min=0.0, max=100.0, step=0.05, help="c in v̂ + c·√(ln N / n).", advanced=True
    )
    samples: int = param(1, label="Samples (DTS)", min=1, max=1024, help="Draws from the finished tree.")

    def validate(self) -> None:
        if self.eta == 0 and self.branching > 1:
            raise ConfigError("dts branches on stochastic steps; eta must be > 0")


@dataclass(eq=False)
class TreeNode:
    depth: int  # denoising steps taken; -1 for the dummy root
    x: torch.Tensor | None
    parent: TreeNode | None
    node_id: str | None = None
    pred: Any = None  # the network prediction at x (cached for further expansions)
    children: list[TreeNode] = field(default_factory=list)
    value: float = 0.0
    visits: int = 0
    reward: float | None = None


@SAMPLERS.register("dts")
class DiffusionTreeSampling(DiffusionSampler):
    name = "dts"
    Config = DTSConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg = self.config
        model = ctx.model
        sched = model.schedule(cfg.steps)
        total = len(sched)
        rname = reward_name(ctx)
        root = TreeNode(depth=-1, x=None, parent=None)
        leaves: list[TreeNode] = []
        rollouts = 0
        for _ in range(cfg.rollouts):
            node = self._select(root, ctx, total)
            if node.depth == total:
                # A full leaf was reached: back up its known reward again (no network work).
                self._backup(node)
                rollouts += 1
                continue
            cost = self._rollout_cost(node, total)
            if cost * model.nfe_for(ctx.task) > ctx.remaining("nfe") or ctx.remaining("reward_calls") < 1:
                break
            leaf = None
            for event in self._expand_and_rollout(ctx, node, sched, rollout=rollouts):
                if isinstance(event, TreeNode):
                    leaf = event
                else:
                    yield event
            assert leaf is not None
            images = model.decode(leaf.x)
            leaf.reward = leaf.value = float(ctx.score(images)[0])
            leaves.append(leaf)
            yield from scores([leaf.node_id], [leaf.reward], rname, partial=False)
            path = self._backup(leaf)
            inner = path[1:-1]  # the dummy root has no node; the leaf's value is its reward
            yield from scores([n.node_id for n in inner], [n.value for n in inner], rname, partial=True)
            rollouts += 1
        if not leaves:
            raise BudgetExhausted("budget exhausted: not even one rollout fits the nfe / reward budget")
        if cfg.mode == "search":
            picks = [max(leaves, key=lambda leaf: leaf.reward)]
            reason = f"best leaf of {len(leaves)} (DTS*)"
        else:
            picks = [self._draw(root, ctx.rng) for _ in range(cfg.samples)]
            reason = f"{cfg.samples} draw(s) from the tree by exp(λ·v̂) (DTS)"
        unique = list(dict.fromkeys(p.node_id for p in picks))
        ctx.metrics.update(
            {"rollouts": rollouts, "leaves": len(leaves), "root_value": root.value, "steps": total, "mode": cfg.mode}
        )
        yield SelectEvent(nodes=unique, reason=reason)

    # -- the four phases -------------------------------------------------------------

    def _select(self, root: TreeNode, ctx: RunContext, total: int) -> TreeNode:
        node = root
        while node.depth < total and len(node.children) >= self.config.branching:
            node = self._choose(node, ctx.rng)
        return node

    def _choose(self, node: TreeNode, rng: torch.Generator) -> TreeNode:
        cfg = self.config
        values = torch.tensor([c.value for c in node.children], dtype=torch.float64)
        if cfg.mode == "search":
            visits = torch.tensor([max(c.visits, 1) for c in node.children], dtype=torch.float64)
            bonus = cfg.exploration * torch.sqrt(math.log(max(node.visits, 1)) / visits)
            return node.children[int(torch.argmax(values + bonus))]
        probs = torch.softmax(cfg.lam * values, dim=0)
        return node.children[int(torch.multinomial(probs, 1, generator=rng))]

    def _rollout_cost(self, node: TreeNode, total: int) -> int:
        """Network evaluations to expand ``node`` and roll out to x0."""
        return total - (node.depth + 1)  # one per new state before x0; the parent's prediction is cached

    def _expand_and_rollout(self, ctx: RunContext, node: TreeNode, sched: Any, rollout: int) -> Iterator[Any]:
        """Yield the new nodes' events, then (last) the new leaf TreeNode; node meta ``particle``
        is the rollout that created the node."""
        model, cfg, total = ctx.model, self.config, len(sched)
        if node.depth < 0:
            x = model.initial_noise(1, ctx.rng)
        else:
            x = model.step(node.x, node.depth, sched, node.pred, eta=cfg.eta, rng=ctx.rng).sample
        parent = node
        for depth in range(node.depth + 1, total + 1):
            child = TreeNode(depth=depth, x=x, parent=parent)
            parent.children.append(child)
            if depth == total:
                uris = image_uris(ctx, model.decode(x))
                timestep = None
            else:
                child.pred = ctx.denoise(x, depth, sched)
                uris = preview_uris(ctx, child.pred.x0)
                timestep = sched.timesteps[depth]
            ids, events = state_nodes(
                ctx,
                depth=depth,
                parents=[parent.node_id],
                images=uris,
                timestep=timestep,
                final=depth == total,
                particles=[rollout],
            )
            child.node_id = ids[0]
            yield from events
            if depth < total:
                x = model.step(x, depth, sched, child.pred, eta=cfg.eta, rng=ctx.rng).sample
            parent = child
        yield parent

    def _backup(self, leaf: TreeNode) -> list[TreeNode]:
        """Soft Bellman backup from ``leaf`` to the root; the path, root first."""
        lam = self.config.lam
        path = []
        node: TreeNode | None = leaf
        while node is not None:
            node.visits += 1
            if node.children:
                values = torch.tensor([c.value for c in node.children], dtype=torch.float64)
                node.value = float((torch.logsumexp(lam * values, 0) - math.log(len(values))) / lam)
            path.append(node)
            node = node.parent
        return path[::-1]

    def _draw(self, root: TreeNode, rng: torch.Generator) -> TreeNode:
        """Descend the finished tree by exp(λ·v̂) to a leaf (DTS's output)."""
        node = root
        while node.children:
            probs = torch.softmax(self.config.lam * torch.tensor([c.value for c in node.children], dtype=torch.float64), 0)
            node = node.children[int(torch.multinomial(probs, 1, generator=rng))]
        return node
