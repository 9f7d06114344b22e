"""Tree rollouts for training: segments that share prefixes, leaf rewards, node values.

A rollout tree grows from a prompt (the root). Each non-root :class:`TreeNode` holds one
*segment*: a :class:`Rollout` whose ``prompt_ids`` are every token before it (prompt and
ancestors' segments) and whose ``completion_ids`` are the tokens it adds, drawn with
``policy.extend`` (``HFPolicy.extend`` continues token-id prefixes with its KV cache).
A leaf is a complete response; its reward is the outcome reward of the concatenated
segment texts, and a node's value is the mean reward of the leaves below it.

Batch rows are segments, so a step's tokens carry that step's advantage and the update
(``engines.training.update``) needs nothing tree-specific: the log-prob of a segment given
its prefix is what ``token_logprobs`` computes for a rollout with that prompt.

Cost: every node's tokens are counted in the budget as they are drawn; every leaf counts
as one sample (a complete response). :func:`reserve` checks a whole tree's worst case
before the first segment is drawn, so budgets are never passed.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from engines.errors import BudgetExhausted, ConfigError
from engines.trace import Event, NodeEvent, ScoreEvent
from engines.training.base import (
    Allowance,
    Group,
    Policy,
    Rollout,
    RolloutStrategy,
    TrainingBatch,
    newline_token,
    token_weight,
    token_weights,
)

VALUE = "value"  # the reward name of node-value score events (partial=True)


@dataclass
class TreeNode:
    id: str
    parent: TreeNode | None
    segment: Rollout | None  # None at the root
    prompt_ids: tuple[int, ...]
    depth: int = 0
    children: list[TreeNode] = field(default_factory=list)
    reward: float | None = None  # leaves only
    value: float | None = None
    advantage: float = 0.0
    leaves_below: int = 0  # set by back_up_values
    prompt_index: int = -1  # roots: the prompt's index in the pool
    ids_given: int = 0  # child ids handed out so far: a split moves children, so ids never come from len(children)

    def child_id(self) -> str:
        """A new child's id, never one this node gave before (unique in the tree)."""
        self.ids_given += 1
        return f"{self.id}.{self.ids_given - 1}"

    @property
    def ids(self) -> tuple[int, ...]:
        """Every token up to the end of this node (prompt included): a child's prefix."""
        return self.prompt_ids if self.segment is None else self.segment.prompt_ids + self.segment.completion_ids

    @property
    def finished(self) -> bool:
        return self.segment is not None and self.segment.finished

    @property
    def text(self) -> str:
        """The completion text from the root down to this node."""
        parts, node = [], self
        while node is not None and node.segment is not None:
            parts.append(node.segment.text)
            node = node.parent
        return "".join(reversed(parts))

    @property
    def tokens(self) -> int:
        return 0 if self.segment is None else self.segment.tokens

    def walk(self) -> Iterator[TreeNode]:
        """This node and every descendant, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()

    def leaves(self) -> list[TreeNode]:
        return [n for n in self.walk() if not n.children and n.segment is not None]


def reserve(budget: Allowance, leaves: int, nodes: int, max_new_tokens: int) -> bool:
    """Whether a tree of at most ``leaves`` responses and ``nodes`` segments of at most
    ``max_new_tokens`` tokens each fits what is left of the sample and token caps."""
    budget.check()
    if budget.samples is not None and budget.spent_samples + leaves > budget.samples:
        return False
    return budget.tokens is None or budget.spent_tokens + nodes * max_new_tokens <= budget.tokens


def grow(
    policy: Policy,
    budget: Allowance,
    parents: Sequence[TreeNode],
    k: int,
    *,
    temperature: float,
    max_new_tokens: int,
    rng: torch.Generator,
    stop_ids: Sequence[int] = (),
    prefixes: Sequence[tuple[int, ...]] | None = None,
) -> list[TreeNode]:
    """``k`` children of every parent in one batched call (parent by parent), each a segment
    of at most ``max_new_tokens`` tokens ending at a stop token or end-of-text. ``prefixes``
    (one per parent) replaces a parent's ids as the conditioning prefix (a branch that starts
    inside the parent's segment). Tokens are counted here; the caller counts leaves."""
    budget.check()
    if budget.tokens is not None and budget.spent_tokens + len(parents) * k * max_new_tokens > budget.tokens:
        raise BudgetExhausted("budget exhausted: tokens")
    heads = list(prefixes) if prefixes is not None else [p.ids for p in parents]
    flat = [head for head in heads for _ in range(k)]
    segments = policy.extend(flat, temperature=temperature, max_new_tokens=max_new_tokens, rng=rng, stop_ids=stop_ids)
    budget.spent_tokens += sum(s.tokens for s in segments)
    children = []
    for i, segment in enumerate(segments):
        parent = parents[i // k]
        child = TreeNode(
            id=parent.child_id(),
            parent=parent,
            segment=segment,
            prompt_ids=parent.prompt_ids,
            depth=parent.depth + 1,
        )
        parent.children.append(child)
        children.append(child)
    return children


def back_up_values(root: TreeNode) -> None:
    """Every node's value: the mean reward of the leaves below it (a leaf's is its reward)."""
    for node in reversed(list(root.walk())):  # children before parents
        if not node.children:
            node.value, node.leaves_below = node.reward, int(node.reward is not None)
            continue
        node.leaves_below = sum(c.leaves_below for c in node.children)
        # weighted by leaf counts: the mean over leaves, not the mean of the children's means
        total = sum(c.value * c.leaves_below for c in node.children if c.leaves_below)
        node.value = total / node.leaves_below if node.leaves_below else None


def tree_events(root: TreeNode, reward_name: str, meta: dict | None = None) -> Iterator[Event]:
    """A ``node`` event per segment (parent ids, so the tree view draws it), the leaves'
    rewards as ``score`` events and every inner node's value as a partial ``score``."""
    meta = meta or {}
    for node in root.walk():
        if node.segment is None:
            continue
        yield NodeEvent(
            id=node.id,
            parent=node.parent.id if node.parent is not None else None,
            depth=node.depth,
            text=node.segment.text,
            tokens=node.tokens,
            logprob=float(sum(node.segment.logprobs)),
            final=not node.children,
            meta={**meta, "advantage": node.advantage},
        )
        if node.children:
            if node.value is not None:
                yield ScoreEvent(node=node.id, reward=VALUE, value=float(node.value), partial=True)
        elif node.reward is not None:
            yield ScoreEvent(node=node.id, reward=reward_name, value=float(node.reward))


class TreeStrategy(RolloutStrategy):
    """Draw one rollout tree per prompt (``prompts_per_batch`` prompts), score its leaves,
    back up node values, and train on every segment with the advantage
    :meth:`set_advantages` gives it. Subclasses say how a tree grows and its worst case."""

    @abstractmethod
    def worst_case(self) -> tuple[int, int]:
        """(leaves, tokens) one tree can use at most: what is reserved before it is drawn."""

    @abstractmethod
    def build_trees(self, policy: Policy, roots: list[TreeNode], budget: Allowance, rng: torch.Generator) -> None:
        """Grow the trees under ``roots`` (batched across them)."""

    @abstractmethod
    def set_advantages(self, root: TreeNode) -> None:
        """Set ``advantage`` on every node below ``root`` (values are known)."""

    def stop_ids(self, policy: Policy) -> tuple[int, ...]:
        """The newline token when segments are lines (``step="newline"``)."""
        if getattr(self.config, "step", "tokens") != "newline":
            return ()
        return (newline_token(policy, f"{self.name} with step=newline (else use step=tokens)"),)

    def collect(self, policy, prompts, reward, budget, rng):
        cfg = self.config
        indices = prompts.draw(cfg.prompts_per_batch, rng)
        leaves, tokens = self.worst_case()
        fit = 0
        while fit < len(indices) and reserve(budget, leaves * (fit + 1), 0, 0) and (
            budget.tokens is None or budget.spent_tokens + tokens * (fit + 1) <= budget.tokens
        ):
            fit += 1
        roots = []
        for index in indices[:fit]:
            drawn = self._groups_per_step.get(self.step, 0)
            self._groups_per_step[self.step] = drawn + 1
            prompt_ids = tuple(policy_encode(policy, prompts.tasks[index].prompt))
            root = TreeNode(id=f"b{self.step}.g{drawn}", parent=None, segment=None, prompt_ids=prompt_ids, prompt_index=index)
            yield NodeEvent(id=root.id, parent=None, text=prompts.tasks[index].prompt, meta={"prompt": index})
            roots.append(root)
        if roots:
            self.build_trees(policy, roots, budget, rng)
        rows: list[TreeNode] = []
        groups = []
        for root in roots:
            task = prompts.tasks[root.prompt_index]
            found = root.leaves()
            for leaf, value in zip(found, reward(task, [leaf.text for leaf in found], rng), strict=True):
                leaf.reward = float(value)
            budget.spent_samples += len(found)
            back_up_values(root)
            self.set_advantages(root)
            yield from tree_events(root, reward.name, {"prompt": root.prompt_index})
            group = Group(
                prompt_index=root.prompt_index,
                task=task,
                rollouts=[leaf.segment for leaf in found],  # type: ignore[misc]
                rewards=[leaf.reward for leaf in found],  # type: ignore[misc]
                node_ids=[leaf.id for leaf in found],
                advantages=[leaf.advantage for leaf in found],
                meta={"root": root.id, "segments": sum(1 for _ in root.walk()) - 1, "value": root.value},
            )
            groups.append(group)
            yield self.group_event(group)
            rows += [n for n in root.walk() if n.segment is not None]
        return self.segment_batch(rows, groups)

    def segment_batch(self, rows: Sequence[TreeNode], groups: Sequence[Group]) -> TrainingBatch:
        """One batch row per segment, its advantage the node's."""
        rollouts = [n.segment for n in rows]
        weights = [1.0] * len(rows)
        return TrainingBatch(
            rollouts=rollouts,  # type: ignore[arg-type]
            rewards=[float(n.value) if n.value is not None else 0.0 for n in rows],
            advantages=[n.advantage for n in rows],
            sample_weights=weights,
            token_weights=token_weights(rollouts, weights, self.config.aggregation),  # type: ignore[arg-type]
            groups_drawn=len(groups),
            groups_kept=len(groups),
            samples_drawn=sum(len(g.rollouts) for g in groups),
            samples_kept=sum(len(g.rollouts) for g in groups),  # every leaf; rows are segments
        )


def path_token_weights(rows: Sequence[TreeNode], aggregation: str) -> list[list[float]]:
    """Token weights of segment rows that give the loss of training on every root-to-leaf path
    instead: one sequence per leaf (its segments' tokens in a row, each carrying its segment's
    advantage), weighted by ``aggregation`` over those sequences as :func:`token_weights` would,
    and each segment's weight summed over the paths through it (a segment above k leaves counts
    k times). The paths' token counts include the shared segments every time."""
    leaves = [n for n in rows if not n.children]
    lengths = []
    for leaf in leaves:
        length, node = 0, leaf
        while node is not None and node.segment is not None:
            length, node = length + node.tokens, node.parent
        lengths.append(length)
    n, total = len(leaves), sum(lengths)
    weight: dict[int, float] = {id(row): 0.0 for row in rows}
    for leaf, length in zip(leaves, lengths, strict=True):
        each = token_weight(aggregation, 1.0, length, n, total)  # type: ignore[arg-type]
        node = leaf
        while node is not None and node.segment is not None:
            weight[id(node)] += each
            node = node.parent
    return [[weight[id(row)]] * row.tokens for row in rows]


def policy_encode(policy: Policy, prompt: str) -> list[int]:
    """The prompt's token ids (the tree's root prefix)."""
    encode = getattr(policy, "encode", None)
    if encode is None:
        raise ConfigError(f"tree rollouts need a policy that encodes prompts and extends prefixes; {policy.name} does not")
    return list(encode(prompt))
