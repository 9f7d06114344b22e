"""Process rewards: scores for every step of partial solutions.

- ``partial:SPEC``: an outcome reward applied to each prefix of steps (the
  reward of a partial text), as CARDS and speculative rejection score partial
  generations with an outcome reward model.
- ``judge_steps``: an LLM judge on partial solutions, P(yes) for "is every step
  so far correct?" after each step (the run's model, or ``judge_steps:MODEL``).
- ``prm:PATH``: a Math-Shepherd-style process reward model (Wang et al., 2024,
  "Math-Shepherd", arXiv:2312.08935): a causal LM that, at a step tag placed
  after every step, predicts a "good" or "bad" token; the step's score is
  P(good) / (P(good) + P(bad)) read at the tag positions. The tag and the two
  tokens are configurable (``prm:PATH`` uses Math-Shepherd's ``ки``, ``+``, ``-``
  unless the model folder's ``prm.json`` says otherwise); the text format is
  :class:`~engines.rewards.shepherd.ShepherdFormat`, shared with ``prm:openai:``.

Step texts are passed as generated (with their trailing newline, if any).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from engines.errors import ConfigError
from engines.rewards import REWARDS, RewardEnv, RewardFactory, build_reward
from engines.rewards.base import Reward, StepReward
from engines.rewards.judge import _Judge
from engines.rewards.shepherd import ShepherdFormat
from engines.task import Task
from engines.trace import Cost


class OutcomeAsStep(StepReward):
    """v(s_1..s_k) = r(s_1 + ... + s_k): an outcome reward on every prefix (one call each)."""

    per_prefix = True

    def __init__(self, reward: Reward) -> None:
        if not isinstance(reward, Reward):
            raise ConfigError(f"partial: needs an outcome reward, got {getattr(reward, 'kind', reward)!r}")
        self.reward = reward
        self.name = f"partial:{reward.name}"
        self.requires_answer = reward.requires_answer  # type: ignore[misc]

    def score_steps(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[list[float]]:
        prefixes = ["".join(steps[: k + 1]) for steps in candidates for k in range(len(steps))]
        values = self.reward.score(task, prefixes, usage=usage) if prefixes else []
        out, at = [], 0
        for steps in candidates:
            out.append(list(values[at : at + len(steps)]))
            at += len(steps)
        return out

    def score_last(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[float]:
        return self.reward.score(task, ["".join(steps) for steps in candidates], usage=usage)

    def check_task(self, task: Task) -> None:
        self.reward.check_task(task)


STEP_QUESTION = (
    "Question:\n{prompt}\n\n{reference}Partial solution:\n{steps}\n\n"
    "Is every step of this partial solution correct so far? Answer Yes or No."
)


class JudgeSteps(StepReward):
    """An LLM judge's P(yes) that the solution is correct up to each step (one judge prompt per prefix)."""

    per_prefix = True

    def __init__(self, model, name: str = "judge_steps") -> None:
        self.judge = _Judge(model, ["Yes", " Yes", "yes", " yes"], ["No", " No", "no", " no"])
        self.name = name

    @staticmethod
    def _prompt(task: Task, steps: Sequence[str]) -> str:
        reference = f"Reference answer:\n{task.answer}\n\n" if task.answer else ""
        return STEP_QUESTION.format(prompt=task.prompt, reference=reference, steps="".join(steps))

    def score_steps(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[list[float]]:
        prompts = [self._prompt(task, steps[: k + 1]) for steps in candidates for k in range(len(steps))]
        values = self.judge.p_positive(prompts, usage)
        out, at = [], 0
        for steps in candidates:
            out.append(values[at : at + len(steps)])
            at += len(steps)
        return out

    def score_last(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[float]:
        return self.judge.p_positive([self._prompt(task, steps) for steps in candidates], usage)


class ShepherdPRM(StepReward):
    """A causal-LM process reward model read at step tags (Math-Shepherd; the format is :mod:`engines.rewards.shepherd`)."""

    def __init__(self, model, tokenizer, *, step_tag: str, good: str, bad: str, name: str) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.format = ShepherdFormat(step_tag, good, bad)
        self.tag_id, self.good_id, self.bad_id = self.format.token_ids(tokenizer)
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def score_steps(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[list[float]]:
        out: list[list[float]] = []
        for steps in candidates:
            if not steps:
                out.append([])
                continue
            text = self.format.text(task.prompt, steps)
            ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]], device=self.device)
            logits = self.model(input_ids=ids).logits[0].float()
            pair = logits[:, [self.good_id, self.bad_id]].softmax(-1)[:, 0]
            scores = pair[ids[0] == self.tag_id].tolist()
            if usage is not None:
                usage.add(reward_tokens=int(ids.shape[1]))
            out.append(self.format.check_scores(scores, steps))
        return out


def load_prm(path: str, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path.startswith("openai:"):  # a served PRM (engines.rewards.served)
        from engines.rewards.served import served_prm

        return served_prm(path[len("openai:"):], name)

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"prm needs a local model folder, {path!r} is not one")
    defaults = ShepherdFormat()
    settings = {"step_tag": defaults.step_tag, "good": defaults.good, "bad": defaults.bad}
    extra = folder / "prm.json"
    if extra.exists():
        settings.update(json.loads(extra.read_text()))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    return ShepherdPRM(model, tokenizer, name=name, **settings)


class StepAsOutcome(Reward):
    """``last:SPEC``: a process reward's score after the last step of a whole candidate.

    The candidate is cut into steps at newlines (each step keeps its newline),
    so a process reward can rank complete solutions: best-of-N "by the PRM".
    """

    def __init__(self, step_reward: StepReward) -> None:
        self.step_reward = step_reward
        self.name = f"last:{step_reward.name}"
        self.requires_answer = step_reward.requires_answer  # type: ignore[misc]

    def score(self, task: Task, candidates: Sequence[str], *, usage: Cost | None = None) -> list[float]:
        steps = [text.splitlines(keepends=True) or [""] for text in candidates]
        return self.step_reward.score_last(task, steps, usage=usage)

    def check_task(self, task: Task) -> None:
        self.step_reward.check_task(task)


def _last(arg: str | None, env: RewardEnv) -> StepAsOutcome:
    inner = build_reward(arg or "", env)
    if not isinstance(inner, StepReward):
        raise ConfigError(f"last: needs a process reward, {arg!r} is {getattr(inner, 'kind', inner)}")
    return StepAsOutcome(inner)


def as_step_reward(reward) -> StepReward:
    """Step samplers accept an outcome reward too, applied to partial texts."""
    if isinstance(reward, StepReward):
        return reward
    if isinstance(reward, Reward):
        return OutcomeAsStep(reward)
    raise ConfigError(f"reward {getattr(reward, 'name', reward)!r} cannot score steps")


def _partial(arg: str | None, env: RewardEnv) -> OutcomeAsStep:
    inner = build_reward(arg or "", env)
    return OutcomeAsStep(inner)


REWARDS.add("partial", RewardFactory(
    name="partial", kind="step", modality="text", build=_partial, arg="REWARD", arg_required=True,
    help="an outcome reward scored on every prefix of steps (process reward from an outcome one)",
))
REWARDS.add("last", RewardFactory(
    name="last", kind="outcome", modality="text", build=_last, arg="STEP_REWARD", arg_required=True,
    help="a process reward's score after the last line of a whole candidate (best-of-N by a PRM)",
))
REWARDS.add("judge_steps", RewardFactory(
    name="judge_steps", kind="step", modality="text", arg="MODEL_SPEC",
    help="LLM judge on partial solutions: P(yes) that every step so far is correct",
    build=lambda arg, env: JudgeSteps(env.loader()(arg) if arg else env.model, name=f"judge_steps:{arg}" if arg else "judge_steps"),
))
REWARDS.add("prm", RewardFactory(
    name="prm", kind="step", modality="text", arg="PATH", arg_required=True,
    help="a Math-Shepherd-style process reward model (score read at step tags)",
    build=lambda arg, env: load_prm(arg or "", f"prm:{arg}"),
))
