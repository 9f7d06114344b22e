"""``bcpg_nsa``'s gradient estimate on the toy tree, against the closed form its docstring states.

The toy (tests/training/toy.py) writes each of its two tokens as a step line ("a\\nb": token,
newline, token; the newline is forced, log-prob 0), and a toy step judge accepts a first
step when some right leaf of the prompt starts with it. The expected update is an exact sum
over every outcome of the group (4^G leaf tuples per prompt), computed here from the toy's
tables without the strategy's code: right samples and unmined wrong ones are one row with
A_i = r_i - mean(r); a wrong sample with a correct first step is a head row (its first
step, advantage 1 - mean(r), a right sample's) and a tail row (its second step given the
first, A_i); ``sample_sum`` divides by the number of rows. Bounds as in test_estimators.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from engines.errors import ConfigError
from engines.rewards.base import Reward, StepReward
from engines.task import Task
from engines.training import build_strategy
from engines.training.base import Allowance, PromptPool, Rollout
from engines.training.rewards import TrainingReward
from tests.training.test_estimators import RIGHT, SEEDS, _theta, assert_differs, assert_matches, estimates
from tests.training.toy import LEAVES, TreePolicy

NEWLINE = 2


class LinePolicy(TreePolicy):
    """The toy tree, its two tokens written on two lines."""

    def encode(self, text: str) -> list[int]:
        return [NEWLINE] if text == "\n" else ["ab".index(c) for c in text]

    def rollout(self, prompts, *, temperature, max_new_tokens, rng):
        return [
            Rollout(prompt_ids=r.prompt_ids, completion_ids=(r.completion_ids[0], NEWLINE, r.completion_ids[1]),
                    logprobs=(r.logprobs[0], 0.0, r.logprobs[1]), text=f"{r.text[0]}\n{r.text[1]}")
            for r in super().rollout(prompts, temperature=temperature, max_new_tokens=max_new_tokens, rng=rng)
        ]

    def token_logprobs(self, rollouts):
        logp = torch.log_softmax(self.theta, dim=-1)
        width = max(max(r.tokens for r in rollouts), 1)
        rows_lp, rows_h, rows_mask = [], [], []
        for r in rollouts:
            j, seen = r.prompt_ids[0], [t for t in r.prompt_ids[1:] if t != NEWLINE]
            lp, h = [], []
            for t in r.completion_ids:
                if t == NEWLINE:
                    lp.append(logp.new_zeros(()))
                    h.append(0.0)
                    continue
                node = 0 if not seen else 1 + seen[0]
                lp.append(logp[j, node, t])
                h.append(float(-(logp[j, node].exp() * logp[j, node]).sum().detach()))
                seen.append(t)
            pad = width - len(lp)
            rows_lp.append(torch.stack(lp + [logp.new_zeros(())] * pad))
            rows_h.append(h + [0.0] * pad)
            rows_mask.append([1.0] * len(lp) + [0.0] * pad)
        return torch.stack(rows_lp), torch.tensor(rows_h, dtype=logp.dtype), torch.tensor(rows_mask, dtype=logp.dtype)


class LineLeafReward(Reward):
    name = "leaf"

    def score(self, task, candidates, *, usage=None):
        good = RIGHT[int(task.prompt[1:])]
        return [1.0 if c.replace("\n", "") in good else 0.0 for c in candidates]


def first_step_ok(prompt: int, step: str) -> bool:
    return any(leaf.startswith(step) for leaf in RIGHT[prompt])


class ToyStepJudge(StepReward):
    """Step 1 is correct when a right leaf starts with it; step 2 when the leaf is right."""

    name = "toy_steps"

    def score_steps(self, task, candidates, *, usage=None):
        j = int(task.prompt[1:])
        out = []
        for steps in candidates:
            ok = first_step_ok(j, steps[0])
            out.append([float(ok)] + ([float(ok and "".join(steps[:2]) in RIGHT[j])] if len(steps) > 1 else []))
        return out


class NeverCorrect(StepReward):
    def score_steps(self, task, candidates, *, usage=None):
        return [[0.0] * len(steps) for steps in candidates]


def _setup():
    policy = LinePolicy(_theta())
    pool = PromptPool(tuple(Task(prompt=f"p{j}", chat=False) for j in range(2)))
    return policy, pool, TrainingReward(outcome=LineLeafReward())


def bcpg_expected(policy: LinePolicy, G: int, mined_weight: float = 1.0) -> torch.Tensor:
    """E[g] for one prompt per batch, drawn uniformly from the two, by enumerating every group outcome."""
    theta = policy.theta
    logp = torch.log_softmax(theta, dim=-1)
    probs = torch.softmax(theta.detach(), dim=-1)
    M = theta.shape[0]
    objective = theta.new_zeros(())
    for j in range(M):
        for outcome in itertools.product(LEAVES, repeat=G):
            prob = 1.0
            for leaf in outcome:
                a, b = "ab".index(leaf[0]), "ab".index(leaf[1])
                prob *= float(probs[j, 0, a] * probs[j, 1 + a, b])
            rewards = [float(leaf in RIGHT[j]) for leaf in outcome]
            mean = sum(rewards) / G
            rows = []  # (advantage, log-prob of the row's tokens)
            for leaf, r in zip(outcome, rewards, strict=True):
                a, b = "ab".index(leaf[0]), "ab".index(leaf[1])
                head, tail = logp[j, 0, a], logp[j, 1 + a, b]
                if r == 0 and first_step_ok(j, leaf[0]):
                    rows += [(mined_weight * (1 - mean), head), (r - mean, tail)]
                else:
                    rows.append((r - mean, head + tail))
            objective = objective + prob / M * sum(adv * lp for adv, lp in rows) / len(rows)
    (grad,) = torch.autograd.grad(objective, theta)
    return grad


def test_bcpg_nsa_gradient_matches_the_mined_rows_closed_form_and_no_mining_is_caught():
    policy, pool, reward = _setup()
    G = 3
    strategy = build_strategy("bcpg_nsa", {"aggregation": "sample_sum", "prompts_per_batch": 1, "group_size": G})
    strategy.judge = ToyStepJudge()
    exact = bcpg_expected(policy, G)
    samples = estimates(strategy, policy, pool, reward, 2 * SEEDS)
    assert_matches(samples, exact)
    assert_differs(samples, bcpg_expected(policy, G, mined_weight=0.0))  # the mined rows matter

    unmined = build_strategy("bcpg_nsa", {"aggregation": "sample_sum", "prompts_per_batch": 1, "group_size": G})
    unmined.judge = NeverCorrect()  # wrong variant: no step mined, every wrong sample penalised whole
    assert_differs(estimates(unmined, policy, pool, reward, 2 * SEEDS), exact)


def test_bcpg_nsa_refuses_a_policy_without_a_one_token_newline_before_drawing():
    """Without a one-token newline no sample could be cut at a step line: the run would silently be
    GRPO. It is refused in one line, and nothing is drawn."""
    policy, pool, reward = _setup()
    strategy = build_strategy("bcpg_nsa", {"prompts_per_batch": 1, "group_size": 3})
    strategy.judge = ToyStepJudge()

    class TwoTokenNewline(LinePolicy):
        def encode(self, text: str) -> list[int]:
            return [NEWLINE, NEWLINE] if text == "\n" else super().encode(text)

    class NoTokenizer(LinePolicy):
        encode = None

    for bad in (TwoTokenNewline(policy.theta), NoTokenizer(policy.theta)):
        budget = Allowance(samples=100)
        with pytest.raises(ConfigError, match="newline is one token") as info:
            next(strategy.collect(bad, pool, reward, budget, torch.Generator().manual_seed(0)))
        assert "\n" not in str(info.value) and budget.spent_samples == 0
