"""``bcpg_nsa``: negative sample augmentation — train on the correct steps inside wrong samples.

Yang et al. 2025, "Unearthing Gems from Stones: Policy Optimization with Negative Sample
Augmentation for LLM Reasoning" (arXiv 2505.14403; no public code in the searchable
index, so this follows the paper's three stages as its abstract and method state them):
1) split each negative sample into steps, 2) judge each step's correctness (the paper: a
consensus of an LLM judge and a PRM; here the *exact* step checks of a step reward,
``arith_steps`` by default: prefix validity, engines.tasks.arith.check_steps), 3) policy
optimisation that mines the positive steps of negative samples instead of penalising
every token of them equally.

Rules here (an online group version of the paper's offline objective):

- Per prompt, G samples; advantage A_i = r_i - mean(r) (divided by the group std when
  ``scale_by_std``), as GRPO.
- A negative sample (reward <= ``threshold``) whose first m >= 1 steps are judged correct
  becomes two batch rows: its first m step lines (the newline after the m-th included)
  with the advantage a right sample has in the group, ``mined_weight`` * (1 - mean(r))
  (over the same std), and the rest, conditioned on that prefix, with A_i. Prefix validity
  makes the correct steps exactly a leading run of lines: after the first wrong step no
  later step counts. Samples without a correct step, and right samples, are one row.
- Steps are lines; the cut needs the policy's newline to be one token (the arith policy's
  is; other policies are refused in one line); when a sample's tokens and lines do not line
  up the sample is kept whole.

Cost: G samples per prompt, as GRPO; mining is free (exact checks).
"""

from __future__ import annotations

import dataclasses

from engines.config import param
from engines.errors import ConfigError
from engines.tasks.arith import split_steps
from engines.training import STRATEGIES
from engines.training.base import (
    Group,
    Rollout,
    RolloutStrategy,
    StrategyConfig,
    TrainingBatch,
    mean_baseline,
    newline_token,
    token_weights,
)


class BCPGNSAConfig(StrategyConfig):
    label = "BCPG-NSA"
    paper = "Yang et al. 2025, Unearthing Gems from Stones: Negative Sample Augmentation (arXiv 2505.14403)"
    summary = "GRPO groups; the correct leading steps of wrong samples are trained as positives."

    step_reward: str = param("arith_steps", label="Step judge", help="A step reward; a step is correct at score >= 1.")
    mined_weight: float = param(1.0, label="Mined-step weight", min=0.0, max=10.0, step=0.05,
                                help="Times a right sample's advantage in the group.")
    scale_by_std: bool = param(False, label="Divide by group std")
    threshold: float = param(0.5, label="Right above", advanced=True)


def correct_prefix_steps(judge, task, text: str) -> int:
    """How many leading step lines of ``text`` the step judge accepts (score >= 1)."""
    steps = split_steps(text)
    if not steps:
        return 0
    scores = judge.score_steps(task, [steps])[0]
    count = 0
    for score in scores:
        if score < 1.0:
            break
        count += 1
    return count


def cut_after_lines(rollout: Rollout, text_lines: int, newline: int) -> int | None:
    """The token index just after the newline that ends the ``text_lines``-th non-blank line,
    or None when the tokens and the text's lines do not line up."""
    raw = rollout.text.split("\n")
    breaks = [i for i, t in enumerate(rollout.completion_ids) if t == newline]
    if len(breaks) != len(raw) - 1:
        return None
    seen = 0
    for line_index, line in enumerate(raw):
        if line.strip():
            seen += 1
        if seen == text_lines:
            return breaks[line_index] + 1 if line_index < len(breaks) else None
    return None


@STRATEGIES.register("bcpg_nsa")
class BCPGNSA(RolloutStrategy):
    Config = BCPGNSAConfig
    name = "bcpg_nsa"

    def __init__(self, config=None) -> None:
        super().__init__(config)
        from engines.rewards import build_reward
        from engines.rewards.base import StepReward

        judge = build_reward(self.config.step_reward)
        if not isinstance(judge, StepReward):
            raise ConfigError(f"bcpg_nsa needs a step reward to judge steps; {self.config.step_reward!r} is not one")
        self.judge = judge

    def collect(self, policy, prompts, reward, budget, rng):
        cfg = self.config
        # without it no sample could be cut at a step line: the run would silently be GRPO
        newline = newline_token(policy, "bcpg_nsa cuts samples at step lines and")
        indices = prompts.draw(cfg.prompts_per_batch, rng)
        fit = budget.fit(len(indices) * cfg.group_size, cfg.max_new_tokens) // cfg.group_size
        if fit == 0:
            return self.mined_batch([], [])
        groups = yield from self.draw_groups(policy, prompts, indices[:fit], cfg.group_size, reward, budget, rng)
        rows: list[tuple[Rollout, float, float]] = []
        for group in groups:
            rows += self.split_group(group, newline)
            yield self.group_event(group)
        return self.mined_batch(rows, groups)

    def split_group(self, group: Group, newline: int) -> list[tuple[Rollout, float, float]]:
        """Set the group's advantages; the batch rows (segment, advantage, sample reward) it gives."""
        cfg = self.config
        group.advantages = mean_baseline(group.rewards, std=cfg.scale_by_std)
        mean = sum(group.rewards) / len(group.rewards)
        spread = 1.0
        if cfg.scale_by_std and len(group.rewards) > 1:
            std = (sum((r - mean) ** 2 for r in group.rewards) / (len(group.rewards) - 1)) ** 0.5
            spread = std + 1e-6 if std > 0 else 1.0
        mined_advantage = cfg.mined_weight * (1.0 - mean) / spread
        rows, mined_steps = [], []
        for rollout, r, a in zip(group.rollouts, group.rewards, group.advantages, strict=True):
            m = correct_prefix_steps(self.judge, group.task, rollout.text) if r <= cfg.threshold else 0
            cut = cut_after_lines(rollout, m, newline) if m else None
            mined_steps.append(m if cut else 0)
            if not cut:
                rows.append((rollout, a, r))
                continue
            head_ids = rollout.completion_ids[:cut]
            head = dataclasses.replace(rollout, completion_ids=head_ids, logprobs=rollout.logprobs[:cut],
                                       text="\n".join(rollout.text.split("\n")[: head_ids.count(newline)]) + "\n",
                                       finished=False)
            tail = dataclasses.replace(rollout, prompt_ids=rollout.prompt_ids + head_ids,
                                       completion_ids=rollout.completion_ids[cut:], logprobs=rollout.logprobs[cut:],
                                       text=rollout.text[len(head.text):])
            rows += [(head, mined_advantage, r), (tail, a, r)]
        group.meta.update(mined_steps=mined_steps, mined_advantage=mined_advantage)
        return rows

    def mined_batch(self, rows: list[tuple[Rollout, float, float]], groups: list[Group]) -> TrainingBatch:
        rollouts = [row[0] for row in rows]
        weights = [1.0] * len(rows)
        return TrainingBatch(
            rollouts=rollouts,
            rewards=[row[2] for row in rows],
            advantages=[row[1] for row in rows],
            sample_weights=weights,
            token_weights=token_weights(rollouts, weights, self.config.aggregation),  # type: ignore[arg-type]
            groups_drawn=len(groups),
            groups_kept=len(groups),
            samples_drawn=sum(len(g.rollouts) for g in groups),
            samples_kept=sum(len(g.rollouts) for g in groups),  # a mined sample is two rows
        )
