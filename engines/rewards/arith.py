"""Rewards for the reasoning lab (``embedded:arith`` on the ``arith*`` task sets).

Registered names
----------------
- ``arith_steps`` (exact process reward, :class:`ArithStepReward`): one score
  per step, 1.0 when the step and every step before it are correct, legal
  reductions of the problem (:func:`engines.tasks.arith.check_steps`), else
  0.0. A step text may hold several lines; it scores 1.0 only if all of them
  follow. So a planted wrong step and everything after it score 0.0, the
  Math-Shepherd label with a perfect completer (Wang et al. 2024), i.e. the
  "first wrong step" reading of Lightman et al. 2023 ("Let's Verify Step by
  Step"); the aggregations ``last`` and ``min`` agree on it. An empty step
  adds nothing and keeps the score so far (1.0 for ``[""]``, the empty
  prefix that CARDS scores first).
- ``arith_orm`` (learned outcome reward, :class:`ArithOutcomeModel`): a
  ``LlamaForSequenceClassification`` (one label, initialised from the
  policy) trained on the policy's own samples labelled by the final-answer
  check. The score is the logit read at the ``<eos>`` appended to
  ``prompt + completion``; higher means "more likely correct".
  ``arith_orm:prob`` gives sigmoid(logit), the estimated P(correct) in [0, 1]
  that reward-weighted voting needs (non-negative weights).
- ``arith_prm`` (learned process reward, :class:`ArithProcessModel`): a
  ``LlamaForTokenClassification`` (one label) trained, Math-Shepherd style,
  on the policy's samples with the ``arith_steps`` labels. The input is
  ``prompt + step_1 + "\\n" + ... + step_k + "\\n"``; step i's score is
  ``sigmoid(logit)`` read at its closing newline (PRM800K / Math-Shepherd
  read a step tag in the same place). An empty step is read where the text
  so far ends (the prompt's newline for the first), which is trained to 1.

The learned models load offline from ``engines/assets/arith/{orm,prm}``, once
per process, and add the tokens they read to ``usage.reward_tokens``. Inputs
longer than the model's context keep their first tokens; steps past the
context score 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from engines.errors import ConfigError
from engines.models.arith import ASSETS, load_hf
from engines.rewards import REWARDS, RewardEnv, RewardFactory
from engines.rewards.base import Reward, StepReward
from engines.task import Task
from engines.tasks.arith import Problem, check_steps, on_track, parse_expression
from engines.trace import Cost

ORM_DIR = ASSETS / "orm"
PRM_DIR = ASSETS / "prm"


def _problem(task: Task) -> Problem:
    try:
        return parse_expression(task.prompt)
    except ValueError as exc:
        raise ConfigError(f"arith rewards need an arithmetic prompt like 'Q: 3+4*5': {exc}") from None


# ---------------------------------------------------------------------------
# Input formats shared by the rewards and scripts/train_arith.py


def orm_input_ids(tokenizer: Any, prompt: str, completion: str) -> list[int]:
    """``prompt + completion`` (trailing whitespace dropped) then ``<eos>``, where the score is read."""
    text = prompt + completion.rstrip()
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def prm_input_ids(tokenizer: Any, prompt: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
    """(ids, read positions): each step stripped and closed by a newline; its score sits on that newline.

    An empty step adds no tokens and is read at the end of the text so far.
    """
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    positions: list[int] = []
    for step in steps:
        if step.strip():
            ids += tokenizer(step.strip() + "\n", add_special_tokens=False)["input_ids"]
        positions.append(len(ids) - 1)
    return ids, positions


def _pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


# ---------------------------------------------------------------------------
# Exact process reward


def step_scores(problem: Problem, steps: Sequence[str]) -> list[float]:
    """Prefix validity per step text (multi-line steps: all their lines must follow)."""
    lines: list[str] = []
    ends: list[int] = []  # index into lines of each step's last line (-1: none yet)
    for step in steps:
        lines += [line for line in step.splitlines() if line.strip()]
        ends.append(len(lines) - 1)
    valid = check_steps(problem, lines)
    return [1.0 if end < 0 or valid[end] else 0.0 for end in ends]


def partial_text(steps: Sequence[str]) -> str:
    """The text of steps whose last one is cut mid-line, in the format the checks and the PRM read:
    every finished line stripped and closed by a newline, blank lines dropped, the cut line stripped."""
    *lines, tail = "".join(steps).split("\n")
    return "".join(line.strip() + "\n" for line in lines if line.strip()) + tail.strip()


class ArithStepReward(StepReward):
    """``arith_steps``: exact prefix validity of every step (see the module docstring).

    A step cut mid-line (:meth:`score_partial`) scores 1.0 while the text can still grow into a
    fully valid solution (:func:`engines.tasks.arith.on_track` at its last character), else 0.0.
    """

    name = "arith_steps"

    def score_steps(
        self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None
    ) -> list[list[float]]:
        problem = _problem(task)
        return [step_scores(problem, steps) for steps in candidates]

    def score_partial(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[float]:
        problem = _problem(task)
        return [1.0 if all(on_track(problem, partial_text(steps))[-1:]) else 0.0 for steps in candidates]

    def check_task(self, task: Task) -> None:
        _problem(task)


# ---------------------------------------------------------------------------
# Learned rewards


class ArithOutcomeModel(Reward):
    """``arith_orm``: the learned outcome reward; the score is a logit (higher: more likely right)."""

    name = "arith_orm"
    kind = "outcome"

    def __init__(self, folder=ORM_DIR, device: str = "cpu", batch_size: int = 128, *, prob: bool = False) -> None:
        self.folder, self.device, self.batch_size, self.prob = folder, device, batch_size, prob
        if prob:
            self.name = "arith_orm:prob"

    @torch.no_grad()
    def score(self, task: Task, candidates: Sequence[str], *, usage: Cost | None = None) -> list[float]:
        model, tokenizer = load_hf(self.folder, self.device, "sequence")
        limit = int(model.config.max_position_embeddings)
        rows = [orm_input_ids(tokenizer, task.prompt, str(c))[:limit] for c in candidates]
        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            part = rows[start : start + self.batch_size]
            ids, mask = _pad_right(part, tokenizer.pad_token_id)
            logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            values = logits[:, 0].float().cpu()
            out += [float(v) for v in (torch.sigmoid(values) if self.prob else values)]
        if usage is not None:
            usage.add(reward_tokens=sum(len(r) for r in rows))
        return out


class ArithProcessModel(StepReward):
    """``arith_prm``: the learned process reward; each step's score is P(step still on track)."""

    name = "arith_prm"

    def __init__(self, folder=PRM_DIR, device: str = "cpu", batch_size: int = 128) -> None:
        self.folder, self.device, self.batch_size = folder, device, batch_size

    @torch.no_grad()
    def score_steps(
        self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None
    ) -> list[list[float]]:
        model, tokenizer = load_hf(self.folder, self.device, "token")
        limit = int(model.config.max_position_embeddings)
        encoded = [prm_input_ids(tokenizer, task.prompt, steps) for steps in candidates]
        out: list[list[float]] = []
        for start in range(0, len(encoded), self.batch_size):
            part = encoded[start : start + self.batch_size]
            nonempty = [ids[:limit] or [tokenizer.pad_token_id] for ids, _ in part]
            ids, mask = _pad_right(nonempty, tokenizer.pad_token_id)
            probs = torch.sigmoid(
                model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits[..., 0]
            ).cpu()
            for row, (_, positions) in enumerate(part):
                out.append([float(probs[row, p]) if p < limit else 0.0 for p in positions])
        if usage is not None:
            usage.add(reward_tokens=sum(min(len(ids), limit) for ids, _ in encoded))
        return out


    @torch.no_grad()
    def score_partial(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[float]:
        """P(on track) read at the last token of a step cut mid-line: the head is trained on the
        ``on_track`` label at every token (scripts/arith_data.py), so any prefix can be read."""
        model, tokenizer = load_hf(self.folder, self.device, "token")
        limit = int(model.config.max_position_embeddings)
        prompt = list(tokenizer(task.prompt, add_special_tokens=False)["input_ids"])
        rows = [(prompt + list(tokenizer(partial_text(steps), add_special_tokens=False)["input_ids"]))[:limit]
                for steps in candidates]
        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            part = rows[start : start + self.batch_size]
            ids, mask = _pad_right(part, tokenizer.pad_token_id)
            probs = torch.sigmoid(model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits[..., 0]).cpu()
            out += [float(probs[row, len(r) - 1]) for row, r in enumerate(part)]
        if usage is not None:
            usage.add(reward_tokens=sum(len(r) for r in rows))
        return out


def _device(env: RewardEnv) -> str:
    return str(env.options.get("device", "cpu"))


def _orm_output(arg: str | None) -> bool:
    if arg in (None, "logit", "prob"):
        return arg == "prob"
    raise ConfigError(f"arith_orm takes 'logit' (the default) or 'prob', got {arg!r}")


REWARDS.add(
    "arith_steps",
    RewardFactory(
        name="arith_steps",
        kind="step",
        modality="text",
        help="Exact process reward for arith tasks: 1 per step while every step so far is a correct, legal reduction",
        build=lambda arg, env: ArithStepReward(),
    ),
)
REWARDS.add(
    "arith_orm",
    RewardFactory(
        name="arith_orm",
        kind="outcome",
        modality="text",
        help="Learned outcome reward model for arith tasks: the logit that the final answer is right "
        "(arith_orm:prob gives the probability)",
        build=lambda arg, env: ArithOutcomeModel(device=_device(env), prob=_orm_output(arg)),
        arg="logit|prob",
    ),
)
REWARDS.add(
    "arith_prm",
    RewardFactory(
        name="arith_prm",
        kind="step",
        modality="text",
        help="Learned process reward model for arith tasks (per-step probability of still being on track)",
        build=lambda arg, env: ArithProcessModel(device=_device(env)),
    ),
)
