"""An enumerable toy policy for the training tests: a tabular softmax over a depth-2 binary tree.

Each prompt ``p0``, ``p1``... has its own table of logits ``theta[prompt, node, token]``
(node 0 is the root, nodes 1 and 2 the children after token ``a`` / ``b``); a completion
is two tokens (``aa``, ``ab``, ``ba``, ``bb``), so every quantity (success probability, its
gradient, the KL to a reference per visited prefix) is exact by enumeration.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from engines.rewards.base import Reward
from engines.task import Task
from engines.training.base import Rollout

LEAVES = ["".join(t) for t in itertools.product("ab", repeat=2)]


class TreePolicy:
    trainable = True
    name = "toy:tree"

    def __init__(self, theta: torch.Tensor) -> None:
        self.theta = theta.clone().double().requires_grad_(True)

    def parameters(self):
        return [self.theta]

    def state_dict(self):
        return {"theta": self.theta.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.theta.copy_(state["theta"])

    def frozen_copy(self) -> TreePolicy:
        copy = type(self)(self.theta.detach())  # subclasses (prefix, line policies) keep their token layout
        copy.theta.requires_grad_(False)
        return copy

    @staticmethod
    def prompt_index(prompt: str) -> int:
        return int(prompt[1:])

    def rollout(self, prompts: Sequence[str], *, temperature: float, max_new_tokens: int, rng: torch.Generator) -> list[Rollout]:
        rows = torch.tensor([self.prompt_index(p) for p in prompts])
        with torch.no_grad():
            logp = torch.log_softmax(self.theta[rows], dim=-1)  # [B, 3, 2]
            first = torch.multinomial(logp[:, 0].exp(), 1, generator=rng).squeeze(-1)
            second_logp = logp[torch.arange(len(rows)), 1 + first]
            second = torch.multinomial(second_logp.exp(), 1, generator=rng).squeeze(-1)
        out = []
        for i, prompt in enumerate(prompts):
            a, b = int(first[i]), int(second[i])
            out.append(
                Rollout(
                    prompt_ids=(self.prompt_index(prompt),),
                    completion_ids=(a, b),
                    logprobs=(float(logp[i, 0, a]), float(second_logp[i, b])),
                    text="ab"[a] + "ab"[b],
                )
            )
        return out

    def token_logprobs(self, rollouts: Sequence[Rollout]):
        rows = torch.tensor([r.prompt_ids[0] for r in rollouts])
        first = torch.tensor([r.completion_ids[0] for r in rollouts])
        second = torch.tensor([r.completion_ids[1] for r in rollouts])
        logp = torch.log_softmax(self.theta[rows], dim=-1)
        idx = torch.arange(len(rollouts))
        lp = torch.stack([logp[idx, 0, first], logp[idx, 1 + first, second]], dim=1)
        ent = -(logp.exp() * logp).sum(-1)
        entropies = torch.stack([ent[idx, 0], ent[idx, 1 + first]], dim=1).detach()
        return lp, entropies, torch.ones_like(lp).detach()

    # -- exact quantities ------------------------------------------------------

    def leaf_probs(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """[prompts, 4] probabilities of aa, ab, ba, bb (differentiable in theta)."""
        theta = self.theta if theta is None else theta
        p = torch.softmax(theta, dim=-1)
        return torch.stack([p[:, 0, a] * p[:, 1 + a, b] for a in (0, 1) for b in (0, 1)], dim=1)


class LeafReward(Reward):
    """1 when the completion is one of the prompt's right leaves."""

    name = "leaf"

    def __init__(self, right: dict[int, set[str]]) -> None:
        self.right = right

    def score(self, task: Task, candidates, *, usage=None) -> list[float]:
        good = self.right[int(task.prompt[1:])]
        return [1.0 if c in good else 0.0 for c in candidates]
