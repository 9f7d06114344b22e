"""``eepo``: sample-then-forget — half the group, a light unlearning step, the other half.

Chen, Han, Wang, Han, Bai, Schütze & Wong 2025, "EEPO: Exploration-Enhanced Policy
Optimization via Sample-Then-Forget" (arXiv 2510.05837, ICLR 2026). A two-stage rollout:
the policy draws the first half of each group; one lightweight unlearning step then
temporarily suppresses those samples, so the second half, drawn from the perturbed
policy, explores other regions of the output space; the weights are then restored
exactly and the update trains the *original* policy on the whole group.

Rules here:

1. Per prompt, G samples: the first ceil(G/2) from pi, the rest from pi' (``first_half``).
2. The unlearning step is one gradient-ascent step on the first-half samples' negative
   log-likelihood (mean over their tokens), with its own small learning rate
   ``unlearn_lr``. ``unlearn_step="adam"`` (default) takes the first step a fresh Adam
   optimiser would take, theta' = theta + lr * g / (|g| + 1e-8), g = grad NLL: every
   weight moves by about lr, as a single step of an LLM trainer's Adam does, so a small
   lr (1e-4 here, the arith lab's training rate) has an effect whatever the gradient's
   scale; ``"sgd"`` takes theta' = theta + lr * g (needs a much larger lr). Measured on
   the arith policy (16 prompts x 8 samples, 64 tokens, 3 seeds): the share of second-half
   samples that repeat a first-half sample of their prompt is 42.2% without unlearning,
   41.7% after an SGD step at lr 1e-3 and 27.6% after the Adam-style step at 1e-4. No optimiser
   state is kept, so the run's optimiser is untouched. With ``entropy_gate`` set the step
   is triggered only when the first half's mean token entropy is below the gate (the
   paper gates unlearning on entropy; off by default).
3. The weights are restored bit for bit (a copy taken before the step; restored even
   when the draw is cancelled or runs out of budget).
4. Advantages are GRPO's over the whole group (mean / std of all G rewards).
5. The second half's "old" log-probs (the importance ratio's denominator) are
   recomputed under the restored policy, as verl recomputes old log-probs with the
   actor after generation; the perturbed policy's log-prob of each second-half sample is
   kept in its node event and the group's meta (``perturbed_logprob``).

What we followed and what we could not: the abstract and the paper's public summaries
(two stages, half and half, a single lightweight unlearning step between them, entropy
gating, restoration). The paper also describes a complementary loss that concentrates
the unlearning on high-probability tokens; its exact form and the paper's learning rate
could not be read through the search tool, so the step here is plain NLL ascent (as the
issue states it) and ``unlearn_lr`` is a parameter to tune (default 1e-4, the lab's
training learning rate for arith).

Cost: G samples per prompt, as GRPO, plus one forward/backward pass on the first half.
The policy must expose ``parameters()`` and ``token_logprobs`` (the lab's loop; not the
TRL bridge's generation backend).
"""

from __future__ import annotations

import dataclasses

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.training import STRATEGIES
from engines.training.base import Group, RolloutStrategy, StrategyConfig, mean_baseline


class EEPOConfig(StrategyConfig):
    label = "EEPO (sample-then-forget)"
    paper = "Chen et al. 2025, EEPO: Exploration-Enhanced Policy Optimization via Sample-Then-Forget (arXiv 2510.05837)"
    summary = "Draw half the group, unlearn it for a moment, draw the other half, restore the weights."

    unlearn_lr: float = param(1e-4, label="Unlearning learning rate", min=0.0, max=10.0,
                              help="One gradient-ascent step on the first half's NLL.")
    unlearn_step: str = param("adam", label="Unlearning step", choices=("adam", "sgd"),
                              help="adam: a fresh Adam's first step (lr x sign of the gradient); sgd: lr x gradient.")
    entropy_gate: float | None = param(None, label="Unlearn only below entropy", min=0.0, max=100.0,
                                       help="Empty: always; else only when the first half's mean token entropy is below this.")
    scale_by_std: bool = param(True, label="Divide by group std")

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise ConfigError("eepo needs group_size >= 2 (two halves)")


def first_half(group_size: int) -> int:
    return (group_size + 1) // 2


def unlearning_step(policy, rollouts, lr: float, kind: str = "adam") -> tuple[float, float]:
    """One ascent step on the mean token NLL of ``rollouts`` (``kind``: see the module docstring);
    returns (NLL, mean entropy) before the step."""
    params = [p for p in policy.parameters() if p.requires_grad]
    logps, entropies, mask = policy.token_logprobs(rollouts)
    mask = mask.to(logps.device)
    tokens = mask.sum().clamp(min=1)
    nll = -(logps * mask).sum() / tokens
    grads = torch.autograd.grad(nll, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.add_(g / (g.abs() + 1e-8) if kind == "adam" else g, alpha=lr)
    return float(nll.detach()), float((entropies.to(mask.device) * mask).sum() / tokens)


@STRATEGIES.register("eepo")
class EEPO(RolloutStrategy):
    Config = EEPOConfig
    name = "eepo"

    def collect(self, policy, prompts, reward, budget, rng):
        cfg = self.config
        if not (hasattr(policy, "parameters") and hasattr(policy, "token_logprobs")):
            raise ConfigError("eepo perturbs the policy's weights: it needs an in-process policy (parameters, token_logprobs)")
        indices = prompts.draw(cfg.prompts_per_batch, rng)
        fit = budget.fit(len(indices) * cfg.group_size, cfg.max_new_tokens) // cfg.group_size
        if fit == 0:
            return self.build_batch([])
        first = first_half(cfg.group_size)
        groups = yield from self.draw_groups(policy, prompts, indices[:fit], first, reward, budget, rng)
        saved = [p.detach().clone() for p in policy.parameters()]
        try:
            nll, entropy = self._forget(policy, groups)
            yield from self.draw_groups(policy, prompts, [], cfg.group_size - first, reward, budget, rng, groups=groups)
            perturbed = [[sum(r.logprobs) for r in g.rollouts[first:]] for g in groups]
        finally:
            with torch.no_grad():
                for p, copy in zip(policy.parameters(), saved, strict=True):
                    p.copy_(copy)
        self._rescore_second_half(policy, groups, first)
        for group, values in zip(groups, perturbed, strict=True):
            group.advantages = mean_baseline(group.rewards, std=cfg.scale_by_std)
            group.meta.update(first_half=first, unlearned=nll is not None, unlearn_nll=nll,
                              first_half_entropy=entropy, perturbed_logprob=values)
            yield self.group_event(group)
        return self.build_batch(groups)

    def _forget(self, policy, groups: list[Group]) -> tuple[float | None, float]:
        """The unlearning step on every first-half sample (skipped above the entropy gate)."""
        cfg = self.config
        rollouts = [r for g in groups for r in g.rollouts]
        if cfg.entropy_gate is not None:
            with torch.no_grad():
                _, entropies, mask = policy.token_logprobs(rollouts)
            entropy = float((entropies * mask).sum() / mask.sum().clamp(min=1))
            if entropy >= cfg.entropy_gate:
                return None, entropy
        return unlearning_step(policy, rollouts, cfg.unlearn_lr, cfg.unlearn_step)

    @staticmethod
    def _rescore_second_half(policy, groups: list[Group], first: int) -> None:
        """Old log-probs of the second half under the restored policy (what the update's ratio compares with)."""
        second = [r for g in groups for r in g.rollouts[first:]]
        if not second:
            return
        with torch.no_grad():
            logps, _, _ = policy.token_logprobs(second)
        k = 0
        for group in groups:
            for i in range(first, len(group.rollouts)):
                rollout = group.rollouts[i]
                group.rollouts[i] = dataclasses.replace(rollout, logprobs=tuple(logps[k, : rollout.tokens].tolist()))
                k += 1
