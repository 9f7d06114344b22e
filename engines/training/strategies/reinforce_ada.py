"""``reinforce_ada``: adaptive sampling by online successive elimination.

Xiong et al. 2025, "Reinforce-Ada: An Adaptive Sampling Framework for Reinforce-Style LLM
Training" (arXiv 2510.04996). Rules followed from its public code
(RLHFlow/Reinforce-Ada, ``multi_round_adaptive_downsampling`` in
``verl/trainer/ppo/ray_trainer.py`` and the global-statistics GRPO advantage):

1. Rounds: every still-active prompt gets ``round_size`` new samples per round, for at
   most ``max_rounds`` rounds. After each round a prompt retires once it has enough
   signal: ``variant="balanced"`` needs at least G//2 right and G - G//2 wrong samples;
   ``variant="positive"`` (Reinforce-Ada-pos) needs at least one right sample.
2. Groups of fixed size G with enforced diversity: a retired prompt keeps its first
   min(G//2, #right) right samples and min(G - that, #wrong) wrong ones, topped up from
   whichever side has more. A prompt still active after the last round falls back to
   min(G, #drawn) samples (positive variant: ceil(share right * G) right ones, clipped to
   [1, take - 1]). Samples not in the group are dropped with rule ``not in group``.
3. Baseline from *all* the prompt's samples: A_i = r_i - mean over every sample drawn for
   the prompt (``scale_by_std`` divides by their std, off in the paper's runs).

Every sample drawn counts in the cost. Expected update for one prompt with success
probability p (``sample_sum``): with (P, N) the right / wrong counts when it retires and
(k+, k-) the group's composition, mu = P / (P + N),
E[g] = E_{(P,N)}[(k+ (1 - mu) / p + k- mu / (1 - p)) / (k+ + k-)] grad p.
"""

from __future__ import annotations

import math

from engines.config import param
from engines.errors import ConfigError
from engines.training import STRATEGIES
from engines.training.base import Group, RolloutStrategy, StrategyConfig


class ReinforceAdaConfig(StrategyConfig):
    label = "Reinforce-Ada"
    paper = "Xiong et al. 2025, Reinforce-Ada (arXiv 2510.04996)"
    summary = "Sample in rounds, retire prompts with enough signal, balanced groups, global baseline."

    variant: str = param("balanced", label="Exit rule", choices=("balanced", "positive"), help="balanced: G/2 right and G/2 wrong; positive: one right.")
    round_size: int = param(8, label="Samples per round", min=1, max=1024)
    max_rounds: int = param(4, label="Max rounds", min=1, max=100)
    scale_by_std: bool = param(False, label="Divide by std of all samples")
    threshold: float = param(0.5, label="Right above", advanced=True)

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise ConfigError("reinforce_ada needs group_size >= 2 (a group holds right and wrong samples)")


def group_composition(right: int, wrong: int, size: int) -> tuple[int, int]:
    """(#right, #wrong) a retired prompt keeps: half and half, topped up from the larger side."""
    keep_right = min(size // 2, right)
    return _top_up(right, wrong, keep_right, min(size - keep_right, wrong), size)


def _top_up(right: int, wrong: int, keep_right: int, keep_wrong: int, take: int) -> tuple[int, int]:
    """Fill a group short of ``take`` from the right samples first, else from the wrong ones (the code's order)."""
    short = take - keep_right - keep_wrong
    if short > 0 and right > keep_right:
        keep_right += min(right - keep_right, short)
    elif short > 0 and wrong > keep_wrong:
        keep_wrong += min(wrong - keep_wrong, short)
    return keep_right, keep_wrong


def fallback_composition(right: int, wrong: int, size: int, variant: str) -> tuple[int, int]:
    """(#right, #wrong) kept from a prompt that never retired."""
    take = min(size, right + wrong)
    if variant == "positive":
        target_right = math.ceil(right / (right + wrong) * size) if right + wrong else 0
        target_right = max(min(target_right, take - 1), 1)
    else:
        target_right = size // 2
    target_wrong = take - target_right if variant == "positive" else size - target_right
    return _top_up(right, wrong, min(right, target_right), min(wrong, target_wrong), take)


@STRATEGIES.register("reinforce_ada")
class ReinforceAda(RolloutStrategy):
    Config = ReinforceAdaConfig
    name = "reinforce_ada"

    def retired(self, right: int, wrong: int) -> bool:
        size = self.config.group_size
        if self.config.variant == "balanced":
            return right >= size // 2 and wrong >= size - size // 2
        return right >= 1

    def collect(self, policy, prompts, reward, budget, rng):
        cfg = self.config
        indices = prompts.draw(cfg.prompts_per_batch, rng)
        groups: list[Group] | None = None
        active: list[Group] = []
        for round_index in range(cfg.max_rounds):
            todo = active if groups is not None else None
            n_prompts = len(todo) if todo is not None else len(indices)
            fit = budget.fit(n_prompts * cfg.round_size, cfg.max_new_tokens) // cfg.round_size
            if fit == 0:
                break
            if todo is None:
                groups = yield from self.draw_groups(policy, prompts, indices[:fit], cfg.round_size, reward, budget, rng)
                todo = groups
            else:
                todo = todo[:fit]
                yield from self.draw_groups(policy, prompts, [], cfg.round_size, reward, budget, rng, groups=todo)
            for group in todo:
                right = sum(r > cfg.threshold for r in group.rewards)
                if self.retired(right, len(group.rewards) - right):
                    group.meta["retired_round"] = round_index
            active = [g for g in (groups or []) if "retired_round" not in g.meta]
            if not active:
                break
        for group in groups or []:
            self._shape(group)
            yield self.group_event(group)
        return self.build_batch(groups or [])

    def _shape(self, group: Group) -> None:
        cfg = self.config
        right_flags = [r > cfg.threshold for r in group.rewards]
        right, wrong = sum(right_flags), len(right_flags) - sum(right_flags)
        if "retired_round" in group.meta:
            keep_right, keep_wrong = group_composition(right, wrong, cfg.group_size)
        else:
            keep_right, keep_wrong = fallback_composition(right, wrong, cfg.group_size, cfg.variant)
            group.meta["unresolved"] = True
        kept, seen_right, seen_wrong = [], 0, 0
        for flag in right_flags:  # the first ones of each side, in the order drawn
            if flag:
                kept.append(seen_right < keep_right)
                seen_right += 1
            else:
                kept.append(seen_wrong < keep_wrong)
                seen_wrong += 1
        group.kept = kept
        values = group.rewards
        mean = sum(values) / len(values)
        spread = 1.0
        if cfg.scale_by_std and len(values) > 1:
            spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) + 1e-6
        group.advantages = [(v - mean) / spread for v in values]
        group.meta.update(drawn=len(values), right=right, kept_right=keep_right, kept_wrong=keep_wrong)
        if not any(kept):
            group.rule = "no samples"

    def group_event(self, group: Group):
        event = super().group_event(group)
        if any(group.kept) and not all(group.kept):
            event.meta["dropped_rule"] = "not in group"
        return event
