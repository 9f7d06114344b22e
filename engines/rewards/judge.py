"""LLM-as-judge rewards from next-token log-probabilities, for any loaded text model.

- ``judge`` (pointwise): P(yes) = p(Yes) / (p(Yes) + p(No)) for the question
  "is this response correct and helpful?", read from the judge's next-token
  distribution (Zheng et al., 2023, "Judging LLM-as-a-Judge"; the P(yes)
  scoring of generative verifiers).
- ``judge_pairwise``: P(A) = p(A) / (p(A) + p(B)) for "which response is
  better?", averaged over both presentation orders to cancel position bias:
  P(a beats b) = ½·[P_A(a, b) + 1 - P_A(b, a)].

Each spelling of the answer words (``Yes``, `` yes``, ...) counts, summed over
the distinct first tokens they encode to. The judge is the run's own model
unless the spec names another (``judge:hf:/path``). Judge tokens are counted
as reward tokens, not as the policy's prefill.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engines.errors import ConfigError
from engines.rewards import REWARDS, RewardEnv, RewardFactory
from engines.rewards.base import PairwiseReward, Reward
from engines.task import Task
from engines.trace import Cost

POINTWISE = (
    "Question:\n{prompt}\n\n{reference}Response:\n{response}\n\n"
    "Is the response correct and helpful? Answer Yes or No."
)
PAIRWISE = (
    "Question:\n{prompt}\n\n{reference}Response A:\n{a}\n\nResponse B:\n{b}\n\n"
    "Which response is better? Answer A or B."
)
SYSTEM = "You are a careful, strict grader."


def _first_tokens(model, words: Sequence[str]) -> list[int]:
    ids: set[int] = set()
    for word in words:
        encoded = model.encode(word)
        if encoded:
            ids.add(encoded[0])
    return sorted(ids)


def _reference(task: Task) -> str:
    return f"Reference answer:\n{task.answer}\n\n" if task.answer else ""


class _Judge:
    def __init__(self, model, positive: Sequence[str], negative: Sequence[str]) -> None:
        if model is None or getattr(model, "modality", None) != "text":
            raise ConfigError("an LLM judge needs a text model (the run's model or judge:MODEL_SPEC)")
        self.model = model
        pos, neg = set(_first_tokens(model, positive)), set(_first_tokens(model, negative))
        # a first token shared by both words (a bare space in a character vocabulary) decides nothing
        self.pos, self.neg = sorted(pos - neg), sorted(neg - pos)
        if not self.pos or not self.neg:
            raise ConfigError(f"the judge model {model.name!r} cannot tell the answer words apart")

    def p_positive(self, prompts: Sequence[str], usage: Cost | None) -> list[float]:
        prefixes = [self.model.encode_task(Task(prompt=p, system=SYSTEM)) for p in prompts]
        spent = Cost()
        out: list[float] = []
        wanted = self.pos + self.neg
        targeted = getattr(self.model, "next_token_logprobs_for", None)  # served models: only these tokens
        for start in range(0, len(prefixes), 16):
            if targeted is not None:
                logp = targeted(prefixes[start : start + 16], wanted, usage=spent)
                index = {t: k for k, t in enumerate(wanted)}
            else:
                logp = self.model.next_token_logprobs(prefixes[start : start + 16], usage=spent)
                index = {t: t for t in wanted}
            for row in logp:
                pos = math.fsum(math.exp(float(row[index[i]])) for i in self.pos)
                neg = math.fsum(math.exp(float(row[index[i]])) for i in self.neg)
                out.append(pos / (pos + neg) if pos + neg > 0 else 0.5)
        if usage is not None:
            usage.add(reward_tokens=spent.prefill_tokens + spent.cached_prompt_tokens, requests=spent.requests)
        return out


class PointwiseJudge(Reward):
    def __init__(self, model, name: str = "judge") -> None:
        self.judge = _Judge(model, ["Yes", " Yes", "yes", " yes"], ["No", " No", "no", " no"])
        self.name = name

    def score(self, task: Task, candidates: Sequence[str], *, usage: Cost | None = None) -> list[float]:
        prompts = [
            POINTWISE.format(prompt=task.prompt, reference=_reference(task), response=c) for c in candidates
        ]
        return self.judge.p_positive(prompts, usage)


class PairwiseJudge(PairwiseReward):
    def __init__(self, model, name: str = "judge_pairwise") -> None:
        self.judge = _Judge(model, ["A", " A"], ["B", " B"])
        self.name = name

    def compare_many(self, task: Task, pairs, *, usage: Cost | None = None) -> list[float]:
        prompts = []
        for a, b in pairs:
            prompts.append(PAIRWISE.format(prompt=task.prompt, reference=_reference(task), a=a, b=b))
            prompts.append(PAIRWISE.format(prompt=task.prompt, reference=_reference(task), a=b, b=a))
        p = self.judge.p_positive(prompts, usage)
        return [0.5 * (p[2 * i] + 1.0 - p[2 * i + 1]) for i in range(len(pairs))]

    def compare(self, task: Task, a, b, *, usage: Cost | None = None) -> float:
        return self.compare_many(task, [(a, b)], usage=usage)[0]


def _judge_model(arg: str | None, env: RewardEnv):
    return env.loader()(arg) if arg else env.model


REWARDS.add(
    "judge",
    RewardFactory(
        name="judge",
        kind="outcome",
        modality="text",
        help="LLM judge: P(yes) that the response is correct and helpful (the run's model, or judge:MODEL)",
        build=lambda arg, env: PointwiseJudge(_judge_model(arg, env), name=f"judge:{arg}" if arg else "judge"),
        arg="MODEL_SPEC",
    ),
)
REWARDS.add(
    "judge_pairwise",
    RewardFactory(
        name="judge_pairwise",
        kind="pairwise",
        modality="text",
        help="LLM judge: P(A better than B), averaged over both orders",
        build=lambda arg, env: PairwiseJudge(
            _judge_model(arg, env), name=f"judge_pairwise:{arg}" if arg else "judge_pairwise"
        ),
        arg="MODEL_SPEC",
    ),
)
