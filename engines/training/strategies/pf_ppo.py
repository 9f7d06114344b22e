"""``pf_ppo``: policy filtration — train only on the samples whose learned reward is reliable.

Zhang, Shen, Zhao et al. 2025 (ICML), "Policy Filtration for RLHF to Mitigate Noise in
Reward Models" (PF-PPO, arXiv 2409.06957; first titled "Policy Filtration in RLHF to
Fine-Tune LLM for Code Generation"). A learned reward is more reliable in some regions
(e.g. at its highest scores) than in others, so per prompt the policy draws N samples and
a *filter* keeps only some of them for the update. The filters of the paper (and of its
public port in verl, ``compute_pf_ppo_reweight_data``: ``max_min``, ``max_random``):

- ``keep_all``: every sample (plain PPO / GRPO);
- ``best_of_n`` (BoN): the highest-rewarded sample;
- ``best_random`` (BR): the highest-rewarded sample and one other drawn uniformly;
- ``best_worst`` (BW): the highest- and the lowest-rewarded samples.

The filter is chosen by the coefficient of determination R^2 between the rewards and the
actual scores *on the filtered samples* (the paper's criterion): the R^2 of the
least-squares line score ~ reward over the pooled kept (reward, score) pairs. With
``filter="auto"`` each batch draws ``calibration_prompts`` extra groups that are held out
of the update (group rule ``held out: filter calibration``; their samples count in the
cost), scores them with the actual score (``true_score``, a reward spec: on arith the
exact verifier ``math`` against the learned ``arith_orm`` training reward), measures
R^2 for every filter and applies the best one to the batch's training groups. A filter
whose kept pairs have no spread in reward or score has no R^2 and cannot be chosen; when
none has one the batch keeps every sample (``keep_all``). Ties go to the first filter in
the order above. Calibrating on every batch (rather than once before training, as the
paper does offline) keeps a run resumable from any checkpoint exactly.

Advantages: critic-free, A_i = r_i - mean(r) over *all* N samples of the prompt (divided
by their std when ``scale_by_std``), then the filter keeps some of them; the dropped ones
get the rule ``<filter> filter`` in the group event's meta.

Expected update with a fixed filter, binary rewards, group std, ``sample_sum``, M prompts
drawn uniformly (A+(k), A-(k): GRPO's advantages of a right and a wrong sample in a group
with k of N right; a right sample kept by "best" is distributed as p(x | right))::

    best_worst:  E[g] = (1/(2M)) sum_j sum_{0<k<N} Binom(k; N, p_j) (A+(k)/p_j - A-(k)/(1-p_j)) grad p_j
    best_of_n:   E[g] = (1/M)    sum_j sum_{0<k<N} Binom(k; N, p_j) A+(k)/p_j grad p_j

(tests/training check both against the toy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.training import STRATEGIES
from engines.training.base import Group, RolloutStrategy, StrategyConfig, mean_baseline

FILTERS = ("keep_all", "best_of_n", "best_random", "best_worst")


class PFPPOConfig(StrategyConfig):
    label = "PF-PPO (policy filtration)"
    paper = "Zhang et al. 2025, Policy Filtration for RLHF to Mitigate Noise in Reward Models (PF-PPO, arXiv 2409.06957)"
    summary = "Keep the samples whose learned reward is reliable; the filter chosen by R^2 against the true score."

    filter: str = param("auto", label="Filter", choices=("auto", *FILTERS),
                        help="auto: the filter with the highest R^2 between reward and true score on held-out groups.")
    true_score: str = param("math", label="True score (calibration)",
                            help="An outcome reward spec: the actual score the learned reward is checked against.")
    calibration_prompts: int = param(8, label="Held-out groups per batch", min=1, max=4096,
                                     help="auto only: groups drawn to measure R^2, never trained on.")
    scale_by_std: bool = param(True, label="Divide by group std")

    def validate(self) -> None:
        super().validate()
        if self.filter in ("best_random", "best_worst") and self.group_size < 2:
            raise ConfigError(f"pf_ppo's {self.filter} filter needs group_size >= 2")


def filtered_indices(rewards: Sequence[float], rule: str, rng: torch.Generator) -> list[int]:
    """The samples a filter keeps (ascending): best is the first of the highest rewards, worst the
    first of the lowest among the others, random one of the others drawn uniformly with ``rng``."""
    n = len(rewards)
    if rule == "keep_all" or n == 1:
        return list(range(n))
    best = max(range(n), key=lambda i: (rewards[i], -i))
    if rule == "best_of_n":
        return [best]
    others = [i for i in range(n) if i != best]
    if rule == "best_worst":
        return sorted([best, min(others, key=lambda i: (rewards[i], i))])
    return sorted([best, others[int(torch.randint(len(others), (1,), generator=rng))]])


def r_squared(rewards: Sequence[float], scores: Sequence[float]) -> float | None:
    """R^2 of the least-squares line scores ~ rewards (None when either has no spread)."""
    if len(rewards) < 2:
        return None
    x = torch.tensor(rewards, dtype=torch.float64)
    y = torch.tensor(scores, dtype=torch.float64)
    sxx, syy = ((x - x.mean()) ** 2).sum(), ((y - y.mean()) ** 2).sum()
    if float(sxx) == 0 or float(syy) == 0:
        return None
    sxy = ((x - x.mean()) * (y - y.mean())).sum()
    return float(sxy**2 / (sxx * syy))


@STRATEGIES.register("pf_ppo")
class PFPPO(RolloutStrategy):
    Config = PFPPOConfig
    name = "pf_ppo"

    def __init__(self, config=None) -> None:
        super().__init__(config)
        from engines.rewards import build_reward
        from engines.rewards.base import Reward

        scorer = build_reward(self.config.true_score)
        if not isinstance(scorer, Reward):
            raise ConfigError(f"pf_ppo's true score must be an outcome reward; {self.config.true_score!r} is not one")
        self.true_score = scorer

    def collect(self, policy, prompts, reward, budget, rng):
        cfg = self.config
        held_out = cfg.calibration_prompts if cfg.filter == "auto" else 0
        indices = prompts.draw(cfg.prompts_per_batch + held_out, rng)
        fit = budget.fit(len(indices) * cfg.group_size, cfg.max_new_tokens) // cfg.group_size
        if fit == 0 or (held_out and fit <= held_out):
            return self.build_batch([])
        # the held-out groups come first, so a short budget cuts training groups, never calibration
        indices = indices[cfg.prompts_per_batch :] + indices[: cfg.prompts_per_batch]
        groups = yield from self.draw_groups(policy, prompts, indices[:fit], cfg.group_size, reward, budget, rng)
        calibration, training = groups[:held_out], groups[held_out:]
        chosen, r2 = self.choose_filter(calibration, rng) if held_out else (cfg.filter, {})
        for group in calibration:
            group.rule = "held out: filter calibration"
            group.kept = [False] * len(group.rewards)
            group.advantages = [0.0] * len(group.rewards)
            group.meta.update(filter=chosen, r2=r2)
            yield self.group_event(group)
        for group in training:
            group.advantages = mean_baseline(group.rewards, std=cfg.scale_by_std)
            kept = set(filtered_indices(group.rewards, chosen, rng))
            group.kept = [i in kept for i in range(len(group.rewards))]
            group.meta.update(filter=chosen, r2=r2, kept_indices=sorted(kept))
            event = self.group_event(group)
            if len(kept) < len(group.rewards):
                event.meta["dropped_rule"] = f"{chosen} filter"
            yield event
        return self.build_batch(groups)

    def choose_filter(self, groups: Sequence[Group], rng: torch.Generator) -> tuple[str, dict[str, float | None]]:
        """The filter with the highest R^2 on ``groups`` (held out), and every filter's R^2."""
        scores = [[float(s) for s in self.true_score.score(g.task, [r.text for r in g.rollouts])] for g in groups]
        kept_by_filter: dict[str, list[list[int]]] = {}
        r2: dict[str, float | None] = {}
        for rule in FILTERS:
            kept_by_filter[rule] = [filtered_indices(g.rewards, rule, rng) for g in groups]
            pairs = [(g.rewards[i], s[i]) for g, s, kept in zip(groups, scores, kept_by_filter[rule], strict=True) for i in kept]
            r2[rule] = r_squared([p[0] for p in pairs], [p[1] for p in pairs])
        for k, group in enumerate(groups):
            group.meta.update(true_scores=scores[k], filter_kept={rule: kept[k] for rule, kept in kept_by_filter.items()})
        measured = [rule for rule in FILTERS if r2[rule] is not None]
        best = max(measured, key=lambda rule: (r2[rule], -FILTERS.index(rule))) if measured else "keep_all"
        return best, r2
