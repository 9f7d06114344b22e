"""Monte Carlo tree search over reasoning steps (UCT with value backup).

Kocsis & Szepesvári, 2006 ("Bandit based Monte-Carlo Planning", UCT), as
used for LLM reasoning by e.g. Hao et al., 2023 (RAP) and Zhang et al., 2024
(ReST-MCTS*). Each simulation:

1. **select**: from the root, follow the child maximising
   UCT = Q(child) + c·sqrt(ln N(node) / N(child)), while the node is fully
   expanded and not terminal. A node is fully expanded when it has ``width``
   children, or when its distinct children are exhausted: the next steps not yet
   seen hold less than 1/``simulations`` of the proposal's probability mass (the
   children's step probabilities under the sampling distribution are known), so
   another expansion would almost surely repeat a child. Without this, a node with
   fewer than ``width`` likely next steps would be expanded forever;
2. **expand**: sample one new next step of that node; a step that duplicates
   an existing child descends into that child (the proposal chose it) and the
   simulation goes on from there, so every simulation adds a node unless it
   ends on a finished solution;
3. **evaluate**: the new node's value is its process score (the aggregated
   step scores), or, with ``rollout`` on, the score of one sampled completion
   of it;
4. **backup**: add the value to every node on the path (Q is the running mean).

After ``simulations`` simulations the pick is the finished solution with the
best score seen (``pick=best``) or the end of the most-visited path
(``pick=visits``, completed by a rollout if it is not finished).

No target law: UCT is a search for a high-value solution among steps drawn from
the proposal (the model at the sampling temperature).

Symbols: c = ``c``; the number of children a node may have = ``width``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from engines.config import param
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.stepwise import Partial, StepConfig, StepSampler, expand, root_partial, score
from engines.trace import Event, SelectEvent


class MCTSConfig(StepConfig):
    size_field = "simulations"
    label = "MCTS (UCT)"
    paper = "Kocsis & Szepesvári 2006, Bandit based Monte-Carlo Planning (UCT); Hao et al. 2023, RAP (arXiv:2305.14992)"
    summary = "UCT over steps: select by Q + c·sqrt(ln N / n), expand one step, evaluate with the PRM, back up."

    simulations: int = param(16, label="Simulations", min=1, max=10000, help="Select-expand-evaluate-backup rounds.")
    width: int = param(3, label="Children per node", min=1, max=64,
                       help="A node is fully expanded at this many distinct children (or when its likely next steps are exhausted).")
    c: float = param(1.0, label="Exploration c", min=0.0, max=100.0, step=0.1, help="UCT exploration constant.")
    rollout: bool = param(False, label="Rollouts", help="Value a new node by one sampled completion instead of its own score.")
    pick: str = param("best", label="Pick", choices=("best", "visits"), help="Best finished score, or the most-visited path.")


@dataclass
class _Node:
    partial: Partial
    children: list[_Node] = field(default_factory=list)
    visits: int = 0
    total: float = 0.0

    @property
    def q(self) -> float:
        return self.total / self.visits if self.visits else 0.0


@SAMPLERS.register("mcts")
class MCTS(StepSampler):
    name = "mcts"
    Config = MCTSConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: MCTSConfig = self.config  # type: ignore[assignment]
        root_p, node = root_partial(ctx)
        yield node
        root = _Node(root_p)
        finished: list[Partial] = []
        for sim in range(cfg.simulations):
            path = [root]
            current = root
            value = None
            while value is None:
                while not current.partial.done and self._fully_expanded(current, cfg):
                    current = max(current.children, key=lambda ch: self._uct(current, ch, cfg.c))
                    path.append(current)
                if current.partial.done:
                    value = current.partial.value or 0.0
                    break
                (child,) = yield from expand(ctx, [current.partial], 1, cfg)
                twin = next((ch for ch in current.children if ch.partial.ids == child.ids), None)
                if twin is not None:  # a duplicate step: descend into the existing child, go on from there
                    path.append(twin)
                    current = twin
                    continue
                leaf = _Node(child)
                current.children.append(leaf)
                path.append(leaf)
                yield from score(ctx, [child], cfg.aggregate)
                if child.done:
                    finished.append(child)
                value = child.value
                if cfg.rollout and not child.done:
                    end = yield from self._rollout(ctx, cfg, child)
                    finished.append(end)
                    value = end.value
            for n in path:
                n.visits += 1
                n.total += value
            ctx.metrics["simulations"] = sim + 1
            yield ctx.cost_event()
        if cfg.pick == "visits":
            current = root
            while current.children:
                current = max(current.children, key=lambda ch: (ch.visits, ch.q))
            end = current.partial
            if not end.done:
                end = yield from self._rollout(ctx, cfg, end)
            yield SelectEvent(nodes=[end.id], reason="end of the most-visited path")
            return
        if not finished:
            best = max((n for n in self._walk(root) if n is not root), key=lambda n: n.q).partial
            end = yield from self._rollout(ctx, cfg, best)
            finished.append(end)
        best = max(finished, key=lambda p: p.value)
        ctx.metrics["finished"] = len(finished)
        yield SelectEvent(nodes=[best.id], reason=f"best of {len(finished)} finished solutions")

    @staticmethod
    def _fully_expanded(node: _Node, cfg: MCTSConfig) -> bool:
        if len(node.children) >= cfg.width:
            return True
        if not node.children:
            return False
        base = node.partial.proposal_logprob
        covered = math.fsum(math.exp(ch.partial.proposal_logprob - base) for ch in node.children)
        return 1.0 - covered < 1.0 / cfg.simulations

    @staticmethod
    def _uct(parent: _Node, child: _Node, c: float) -> float:
        if child.visits == 0:
            return math.inf
        return child.q + c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)

    def _rollout(self, ctx: RunContext, cfg: MCTSConfig, start: Partial):
        """Complete a partial solution by sampling steps; returns the finished partial."""
        current = start
        while not current.done:
            (current,) = yield from expand(ctx, [current], 1, cfg)
        yield from score(ctx, [current], cfg.aggregate)
        return current

    def _walk(self, node: _Node) -> Iterator[_Node]:
        yield node
        for child in node.children:
            yield from self._walk(child)
