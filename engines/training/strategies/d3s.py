"""``d3s``: dynamic dual-level down-sampling — the rollouts and tokens with the most signal.

Wang et al. 2025, "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework
for Efficient Policy Optimization" (D3S, arXiv 2509.22115). Per prompt, G samples with
GRPO's advantages A_i (group mean / std over all G); then two levels of down-sampling:

1. Sample level: keep the subset of k = ceil(sample_keep * n) rollouts whose advantages
   have the largest variance (the paper: Var(A) of the kept subset bounds the policy
   gradient's norm from above). ``scope="group"`` picks k of each group's G (the paper's
   intra-group variant, D3S-I), ``"batch"`` picks k of all the batch's rollouts. The
   maximum-variance k-subset of a set of numbers is always some of the smallest together
   with the rest from the largest (moving any inner point outward does not lower the
   spread about the subset's mean), so :func:`max_variance_subset` checks those k + 1
   candidates: exact, and tests/training compare it with brute force.
2. Token level: among the kept rollouts' tokens, keep the ceil(token_keep * T) with the
   largest |A_i| x H_it (H the policy's entropy at that token), as per-token weights:
   0 on the others; with ``token_mean`` aggregation the kept tokens share the batch
   weight (1 / kept tokens), with the other aggregations the dropped tokens only lose
   theirs.
3. Schedule: both keep fractions move linearly from ``*_start`` (aggressive) to
   ``*_end`` (relaxed) over ``schedule_steps`` updates (the step is the loop's update
   index), then stay at ``*_end``. The paper states a curriculum "from aggressive
   down-sampling to relaxed"; the linear shape and the default fractions are ours.

Advantages are not recomputed on the subset. Cost: G samples per prompt (all drawn,
dropped ones included). The token level needs the policy's entropies
(``policy.token_logprobs``: the lab's loop; not the TRL bridge's generation backend).

Expected update with token_keep = 1, ``scope="group"``, binary rewards, k = 2 of G: a
group with 0 < m < G right keeps one right and one wrong sample (any other pair has less
variance), so E[g] = (1/(2M)) sum_j sum_m Binom(m; G, p_j) [0<m<G] (A+(m)/p_j - A-(m)/(1-p_j)) grad p_j
for M prompts drawn uniformly (tests/training check it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.training import STRATEGIES
from engines.training.base import Group, RolloutStrategy, StrategyConfig, TrainingBatch, mean_baseline


class D3SConfig(StrategyConfig):
    label = "D3S (dual-level down-sampling)"
    paper = "Wang et al. 2025, Learning More with Less: Dynamic Dual-Level Down-Sampling (D3S, arXiv 2509.22115)"
    summary = "Keep the max-advantage-variance rollouts and the tokens with the largest |A| x entropy; relax over training."

    scope: str = param("group", label="Sample level over", choices=("group", "batch"),
                       help="group: k of each prompt's G (D3S-I); batch: k of all rollouts.")
    sample_keep_start: float = param(0.5, label="Rollouts kept at step 0", min=0.01, max=1.0, step=0.05)
    sample_keep_end: float = param(1.0, label="Rollouts kept at the end", min=0.01, max=1.0, step=0.05)
    token_keep_start: float = param(0.5, label="Tokens kept at step 0", min=0.01, max=1.0, step=0.05)
    token_keep_end: float = param(1.0, label="Tokens kept at the end", min=0.01, max=1.0, step=0.05)
    schedule_steps: int = param(50, label="Schedule length (updates)", min=1, max=100000)
    scale_by_std: bool = param(True, label="Divide by group std")

    def validate(self) -> None:
        super().validate()
        if self.sample_keep_end < self.sample_keep_start or self.token_keep_end < self.token_keep_start:
            raise ConfigError("d3s relaxes over training: the end fractions must be at least the start ones")


def scheduled(start: float, end: float, step: int, steps: int) -> float:
    """The keep fraction at update ``step``: linear from ``start`` to ``end`` over ``steps``, then ``end``."""
    return start + (end - start) * min(step / steps, 1.0)


def keep_count(fraction: float, n: int) -> int:
    return min(max(math.ceil(fraction * n - 1e-9), 1), n)


def population_variance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def max_variance_subset(values: Sequence[float], k: int) -> list[int]:
    """Indices (ascending) of a size-``k`` subset of ``values`` with the largest variance."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    best, best_var = None, -1.0
    for low in range(k + 1):
        chosen = order[:low] + order[len(order) - (k - low):]
        var = population_variance([values[i] for i in chosen])
        if var > best_var + 1e-12:
            best, best_var = chosen, var
    return sorted(best)


def top_tokens(scores: Sequence[Sequence[float]], k: int) -> set[tuple[int, int]]:
    """The (row, position) of the ``k`` largest scores; ties go to the earlier token."""
    cells = [(-s, i, t) for i, row in enumerate(scores) for t, s in enumerate(row)]
    cells.sort()
    return {(i, t) for _, i, t in cells[:k]}


@STRATEGIES.register("d3s")
class D3S(RolloutStrategy):
    Config = D3SConfig
    name = "d3s"

    def keep_fractions(self) -> tuple[float, float]:
        """(rollout, token) keep fractions at this update."""
        cfg = self.config
        return (
            scheduled(cfg.sample_keep_start, cfg.sample_keep_end, self.step, cfg.schedule_steps),
            scheduled(cfg.token_keep_start, cfg.token_keep_end, self.step, cfg.schedule_steps),
        )

    def collect(self, policy, prompts, reward, budget, rng):
        cfg = self.config
        sample_keep, token_keep = self.keep_fractions()
        if token_keep < 1 and not hasattr(policy, "token_logprobs"):
            raise ConfigError("d3s's token level needs the policy's entropies (token_logprobs); set token_keep_start to 1")
        indices = prompts.draw(cfg.prompts_per_batch, rng)
        fit = budget.fit(len(indices) * cfg.group_size, cfg.max_new_tokens) // cfg.group_size
        if fit == 0:
            return self.build_batch([])
        groups = yield from self.draw_groups(policy, prompts, indices[:fit], cfg.group_size, reward, budget, rng)
        for group in groups:
            group.advantages = mean_baseline(group.rewards, std=cfg.scale_by_std)
        self.select_samples(groups, sample_keep)
        for group in groups:
            yield self.group_event(group)
        batch = self.build_batch(groups)
        if token_keep < 1 and len(batch):
            batch.token_weights = self.token_level(policy, batch, token_keep)
        return batch

    def select_samples(self, groups: list[Group], fraction: float) -> None:
        """Mark each group's kept samples: the max-variance subset of its group or of the batch."""
        if self.config.scope == "group":
            for group in groups:
                chosen = set(max_variance_subset(group.advantages, keep_count(fraction, len(group.rewards))))
                group.kept = [i in chosen for i in range(len(group.rewards))]
            return
        flat = [(group, i) for group in groups for i in range(len(group.rewards))]
        chosen = set(max_variance_subset([g.advantages[i] for g, i in flat], keep_count(fraction, len(flat))))
        for group in groups:
            group.kept = [False] * len(group.rewards)
        for n, (group, i) in enumerate(flat):
            group.kept[i] = n in chosen
        for group in groups:
            if not any(group.kept):
                group.rule = "not in the max-variance subset"

    def group_event(self, group: Group):
        event = super().group_event(group)
        sample_keep, token_keep = self.keep_fractions()
        event.meta.update(sample_keep=sample_keep, token_keep=token_keep)
        if any(group.kept) and not all(group.kept):
            event.meta["dropped_rule"] = "not in the max-variance subset"
        return event

    def token_level(self, policy, batch: TrainingBatch, token_keep: float) -> list[list[float]]:
        """Per-token weights keeping the top ``token_keep`` share of tokens by |A| x entropy."""
        with torch.no_grad():
            _, entropies, _ = policy.token_logprobs(batch.rollouts)
        scores = [
            [abs(a) * float(entropies[i, t]) for t in range(r.tokens)]
            for i, (r, a) in enumerate(zip(batch.rollouts, batch.advantages, strict=True))
        ]
        total = sum(r.tokens for r in batch.rollouts)
        keep = top_tokens(scores, keep_count(token_keep, total)) if total else set()
        out = []
        for i, row in enumerate(batch.token_weights):
            if self.config.aggregation == "token_mean":
                row = [batch.sample_weights[i] / len(keep)] * len(row)
            out.append([w if (i, t) in keep else 0.0 for t, w in enumerate(row)])
        return out
