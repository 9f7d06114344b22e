"""``tree_rpo``: tree rollouts, step-level groups of siblings, node value = mean leaf reward.

Yang et al. 2025, "TreeRPO: Tree Relative Policy Optimization" (arXiv 2506.05183; code
github.com/yangzhch6/TreeRPO, not in the searchable index, so the rules below follow the
paper): per prompt, an N-ary tree of depth D is sampled; each node adds one segment of
the response; a node's reward is the expected reward of its subtree, estimated by the
mean reward of the leaves below it; GRPO's group-relative advantage is computed inside
each step-level group (the siblings under one parent) and given to that step's tokens.

Here N = ``group_size`` siblings per group and D = ``depth`` levels. A segment is at most
``segment_tokens`` tokens or, with ``step="newline"``, one line (an arith step, the
newline kept); the last level runs to end-of-text within ``max_new_tokens`` for the whole
response. A branch that reaches end-of-text early is a leaf. Advantage of a child c with
siblings S: A_c = (V_c - mean_S V) / (std_S V + eps) (``scale_by_std``, GRPO's rule) or
V_c - mean_S V (off). A group of one has A = 0. Every segment is one batch row (its
prefix is the row's prompt), so the update sees the step's tokens with its advantage.

Cost: every segment's tokens; every leaf counts as one sample.

Expected update (``scale_by_std=False``, ``sample_sum``, a full tree: no early ends):
a sibling's value is an unbiased estimate of E[r | its prefix] independent of the other
siblings, so each group contributes (N - 1) times the gradient of E[r | parent] through
the decision of that level, and level d (0-based) has N^d groups::

    E[g] = (N - 1) / rows * sum_d N^d grad_{theta_d} p,     rows = B (N + ... + N^D)

where grad_{theta_d} p is the part of the success-probability gradient that flows through
the level-d segments' log-probs (tests/training/test_tree_strategies.py checks it).
"""

from __future__ import annotations

from engines.config import param
from engines.errors import ConfigError
from engines.training import STRATEGIES
from engines.training.base import StrategyConfig, mean_baseline
from engines.training.tree import TreeNode, TreeStrategy, grow


class TreeRPOConfig(StrategyConfig):
    label = "TreeRPO"
    paper = "Yang et al. 2025, TreeRPO: Tree Relative Policy Optimization (arXiv 2506.05183)"
    summary = "Tree rollouts; step value = mean leaf reward; GRPO advantages inside sibling groups."
    size_field = "group_size"

    depth: int = param(2, label="Tree depth (D)", min=1, max=8, help="Levels of segments; N^D leaves per prompt.")
    step: str = param("newline", label="Segment", choices=("newline", "tokens"), help="newline: one line (an arith step).")
    segment_tokens: int = param(24, label="Segment tokens", min=1, max=4096, help="Cap on a non-final segment.")
    scale_by_std: bool = param(True, label="Divide by sibling std", help="Off: mean-only baseline (Dr. GRPO style).")

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise ConfigError("tree_rpo needs group_size >= 2 (siblings per step-level group)")
        if (self.depth - 1) * self.segment_tokens >= self.max_new_tokens:
            raise ConfigError("max_new_tokens must exceed (depth - 1) * segment_tokens (the last level needs room)")


@STRATEGIES.register("tree_rpo")
class TreeRPO(TreeStrategy):
    Config = TreeRPOConfig
    name = "tree_rpo"

    def level_cap(self, level: int) -> int:
        cfg = self.config
        return cfg.max_new_tokens - (cfg.depth - 1) * cfg.segment_tokens if level == cfg.depth - 1 else cfg.segment_tokens

    def worst_case(self) -> tuple[int, int]:
        n, d = self.config.group_size, self.config.depth
        return n**d, sum(n ** (level + 1) * self.level_cap(level) for level in range(d))

    def build_trees(self, policy, roots: list[TreeNode], budget, rng) -> None:
        cfg = self.config
        stop_ids = self.stop_ids(policy)
        frontier = roots
        for level in range(cfg.depth):
            last = level == cfg.depth - 1
            cap = self.level_cap(level)
            frontier = [n for n in frontier if n.segment is None or not n.finished]
            if not frontier:
                break
            children = grow(
                policy, budget, frontier, cfg.group_size, temperature=cfg.temperature, max_new_tokens=cap,
                rng=rng, stop_ids=() if last else stop_ids,
            )
            frontier = children

    def set_advantages(self, root: TreeNode) -> None:
        for node in root.walk():
            if len(node.children) < 2:
                for child in node.children:
                    child.advantage = 0.0
                continue
            values = [c.value for c in node.children]
            for child, a in zip(node.children, mean_baseline(values, std=self.config.scale_by_std), strict=True):
                child.advantage = a
