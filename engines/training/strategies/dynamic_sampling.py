"""``dynamic_sampling``: DAPO's dynamic sampling, over-sample until every group has signal.

Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
section 3.2. Following its public recipe (verl's ``recipe/dapo`` ray trainer): draw
generation batches of ``generation_prompts`` prompts x G samples; drop every group whose
rewards are all equal (rule ``no reward variance``: accuracy 0 or 1); keep drawing until
``prompts_per_batch`` groups with variance are held, then keep exactly that many (the
surplus of the last generation batch is dropped with rule ``batch full``); give up after
``max_generation_batches`` batches and train on what was kept (verl raises instead).
Every sample drawn, dropped or surplus, is counted in the run's cost. Advantages are
GRPO's (group mean / std).

Prompts are drawn uniformly with replacement, so each kept group is a draw from
P(prompt j, k right | 0 < k < G) ∝ Binom(k; G, p_j); with ``sample_sum`` the expected
update is (1/G) E_{(j,k) | kept}[c_j(k)] grad p_j with c_j(k) = k A+(k)/p_j - (G-k) A-(k)/(1-p_j).
"""

from __future__ import annotations

from engines.config import param
from engines.training import STRATEGIES
from engines.training.base import Group, RolloutStrategy, StrategyConfig, is_degenerate, mean_baseline


class DynamicSamplingConfig(StrategyConfig):
    label = "DAPO dynamic sampling"
    paper = "Yu et al. 2025, DAPO (dynamic sampling)"
    summary = "Over-sample prompts until the batch holds groups with reward variance."

    generation_prompts: int = param(8, label="Prompts per generation batch", min=1, max=4096)
    max_generation_batches: int = param(10, label="Max generation batches", min=1, max=1000)
    scale_by_std: bool = param(True, label="Divide by group std")


@STRATEGIES.register("dynamic_sampling")
class DynamicSampling(RolloutStrategy):
    Config = DynamicSamplingConfig
    name = "dynamic_sampling"

    def collect(self, policy, prompts, reward, budget, rng):
        cfg = self.config
        all_groups, kept = [], 0
        for round_index in range(cfg.max_generation_batches):
            if kept >= cfg.prompts_per_batch:
                break
            indices = prompts.draw(cfg.generation_prompts, rng)
            fit = budget.fit(len(indices) * cfg.group_size, cfg.max_new_tokens) // cfg.group_size
            if fit == 0:
                break
            groups = yield from self.draw_groups(policy, prompts, indices[:fit], cfg.group_size, reward, budget, rng)
            for group in groups:
                group.advantages = mean_baseline(group.rewards, std=cfg.scale_by_std)
                group.meta["generation_batch"] = round_index
            self.filter_groups(groups)
            for group in groups:
                if group.rule is None and kept >= cfg.prompts_per_batch:
                    group.rule = "batch full"
                elif group.rule is None:
                    kept += 1
                yield self.group_event(group)
            all_groups += groups
        return self.build_batch(all_groups)

    def filter_groups(self, groups: list[Group]) -> None:
        """Set the drop rule of every group of one generation batch that carries no signal."""
        for group in groups:
            if is_degenerate(group.rewards):
                group.rule = "no reward variance"
