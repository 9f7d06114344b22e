"""``tree_rl``: EPTree rollouts — fork where the policy is least sure (highest token entropy).

Hou et al. 2025, "TreeRL: LLM Reinforcement Learning with On-Policy Tree Search"
(arXiv 2506.11902; code github.com/THUDM/TreeRL). The rules follow the paper's EPTree
description; the training weights (point 4) the released code (openrlhf/trainer/ppo_utils/
parallel_mcts.py ``gather_paths``, tree_node.py ``compute_weighted_update``):

1. Per prompt, M = ``group_size`` independent responses (the first level of the tree).
2. ``iterations`` times: over every token of the tree, take the ``forks`` tokens of highest
   entropy (under the sampling policy, not already forked), and from each draw
   ``branches`` new continuations that *re-sample* that token: the prefix is everything
   before it. Forking inside a segment splits it, so the tree stays a tree of segments.
   ``fork_at="random"`` picks the fork tokens uniformly instead (the paper's ablation).
3. A node's value V(s) is the mean reward of the leaves below it; every segment's
   tokens get R(s) = (V(s) - V(root) + V(s) - V(parent)) / sqrt(|L(s)|): the global
   advantage plus the local one, scaled down for nodes shared by many responses
   (|L(s)| leaves below s).
4. The policy trains on the tree's responses, one sequence per root-to-leaf path, so a
   segment's tokens appear in each of the |L(s)| paths through it (the released code's
   ``gather_paths`` builds the training paths from the selected leaves, and its "sqrt"
   ``compute_weighted_update`` divides each node's value by sqrt of the leaves below it:
   a shared segment's total weight is sqrt(|L(s)|) times its (g + l)). Rows here stay
   segments, each token weighted by the sum of its weights over the paths through it
   (``engines.training.tree.path_token_weights``): the same loss with one row per segment.

Cost: every segment's tokens; every leaf is one sample. The worst case reserved per tree
is (M + iterations * forks * branches) responses of ``max_new_tokens`` each.

Expected update, the smallest tree (M = 1 chain, one fork, T branches, one iteration, one
prompt per batch, ``sample_sum``: T + 1 paths, each weighted 1/(T + 1)), with e(a) the fork
offset the entropy rule picks after first token a, Q(a) = E[r | a], p = E[r]::

    E[g] = sum_a pi(a) * { 2/(T+1) * [T/(T+1) (Q(a) grad log pi(a) + grad Q(a) - p grad log pi(a))
                                      + T^2/(T+1) grad p]                 if e(a) = 0 (fork at the root)
                           2T/(T+1) * grad Q(a)                          if e(a) = 1 (fork after a) }

(forking after a leaves the shared head [a] with advantage 0: only the decision at the
fork learns). tests/training/test_tree_strategies.py checks it, that the other fork
point gives a different expectation, and that the segment rows' gradient equals the one of
training on every path (one row per segment weighted once fails it).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from engines.config import param
from engines.training import STRATEGIES
from engines.training.base import StrategyConfig
from engines.training.tree import TreeNode, TreeStrategy, grow, path_token_weights


class TreeRLConfig(StrategyConfig):
    label = "TreeRL (EPTree)"
    paper = "Hou et al. 2025, TreeRL: LLM Reinforcement Learning with On-Policy Tree Search (arXiv 2506.11902)"
    summary = "Fork rollouts at the highest-entropy tokens; global + local advantages per segment."

    forks: int = param(2, label="Fork tokens per tree (N)", min=1, max=64)
    branches: int = param(2, label="Branches per fork (T)", min=1, max=64)
    iterations: int = param(1, label="Fork iterations (L)", min=0, max=8)
    fork_at: str = param("entropy", label="Fork at", choices=("entropy", "random"), help="random: the ablation.")


def split(node: TreeNode, offset: int, decode) -> TreeNode:
    """Cut ``node``'s segment before token ``offset``: ``node`` keeps the head, a new only
    child takes the rest and ``node``'s children. Returns ``node``."""
    seg = node.segment
    assert seg is not None and 0 < offset < seg.tokens
    head_ids, tail_ids = seg.completion_ids[:offset], seg.completion_ids[offset:]
    tail = TreeNode(
        id=node.child_id(), parent=node, prompt_ids=node.prompt_ids, depth=node.depth + 1,
        segment=dataclasses.replace(seg, prompt_ids=seg.prompt_ids + head_ids, completion_ids=tail_ids,
                                    logprobs=seg.logprobs[offset:], text=decode(tail_ids)),
        children=node.children,
    )
    for child in tail.children:
        child.parent = tail
    for below in tail.walk():
        if below is not tail:
            below.depth += 1
    node.segment = dataclasses.replace(seg, completion_ids=head_ids, logprobs=seg.logprobs[:offset],
                                       text=decode(head_ids), finished=False)
    node.children = [tail]
    return node


@STRATEGIES.register("tree_rl")
class TreeRL(TreeStrategy):
    Config = TreeRLConfig
    name = "tree_rl"

    def worst_case(self) -> tuple[int, int]:
        cfg = self.config
        leaves = cfg.group_size + cfg.iterations * cfg.forks * cfg.branches
        return leaves, leaves * cfg.max_new_tokens

    def build_trees(self, policy, roots, budget, rng) -> None:
        cfg = self.config
        grow(policy, budget, roots, cfg.group_size, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, rng=rng)
        forked: dict[str, set[tuple[int, ...]]] = {root.id: set() for root in roots}  # per tree
        for _ in range(cfg.iterations):
            for root in roots:
                for node, offset in self.fork_points(policy, root, forked[root.id], rng):
                    prefix = node.segment.prompt_ids + node.segment.completion_ids[:offset]
                    forked[root.id].add(prefix)
                    if offset > 0:
                        node = split(node, offset, policy.decode)
                    else:
                        node = node.parent
                    room = cfg.max_new_tokens - (len(prefix) - len(root.prompt_ids))
                    grow(policy, budget, [node], cfg.branches, temperature=cfg.temperature, max_new_tokens=room, rng=rng)

    def fork_points(self, policy, root: TreeNode, forked: set, rng: torch.Generator) -> list[tuple[TreeNode, int]]:
        """The ``forks`` (segment node, token offset) to fork at: highest entropy first
        (ties: tree order), or uniformly at random for ``fork_at="random"``."""
        nodes = [n for n in root.walk() if n.segment is not None and n.tokens]
        candidates, seen = [], set(forked)
        for n in nodes:
            for o in range(n.tokens):
                prefix = n.segment.prompt_ids + n.segment.completion_ids[:o]
                if prefix not in seen:  # siblings' first tokens share their parent's prefix: one fork
                    seen.add(prefix)
                    candidates.append((n, o))
        if not candidates:
            return []
        if self.config.fork_at == "random":
            order = torch.randperm(len(candidates), generator=rng).tolist()
        else:
            with torch.no_grad():
                _, entropies, _ = policy.token_logprobs([n.segment for n in nodes])
            row = {id(n): i for i, n in enumerate(nodes)}
            scores = torch.tensor([float(entropies[row[id(n)], o]) for n, o in candidates])
            order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        # forks inside one segment are taken deepest first, so a split keeps the other offsets valid
        chosen = [candidates[i] for i in order[: self.config.forks]]
        return sorted(chosen, key=lambda c: -c[1])

    def segment_batch(self, rows, groups):
        """Segment rows weighted as training on every root-to-leaf path (point 4 above)."""
        batch = super().segment_batch(rows, groups)
        return dataclasses.replace(batch, token_weights=path_token_weights(rows, self.config.aggregation))

    def set_advantages(self, root: TreeNode) -> None:
        for node in root.walk():
            if node.segment is None or node.value is None:
                continue
            parent = node.parent.value if node.parent is not None and node.parent.value is not None else 0.0
            node.advantage = (2 * node.value - root.value - parent) / math.sqrt(max(node.leaves_below, 1))
