"""One behaviour suite for the reward protocols, run on every registered reward.

Every name in the reward registry must appear in ``SPECS`` (a spec that builds offline, from
the shipped assets or a tiny local model) or in ``NOT_HERE`` (with the test that covers it),
so a newly registered reward fails here until it is added. By kind, each reward must:

- outcome (text or image): one finite float per candidate, the same on a second call, and
  nothing for no candidates;
- pairwise: P(a beats b) in [0, 1] for each pair;
- step: one finite score per step of each candidate, and ``score_last`` equal to the last one.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.rewards import REWARDS, RewardEnv, build_reward
from engines.rewards.arith import ORM_DIR
from engines.rewards.base import PairwiseReward, Reward, StepReward
from engines.task import Task

ARITH = Task(prompt="Q: 3+4*5\n", answer="23", chat=False)
TEXT = Task(prompt="What is 6*7?", answer="42")
IMAGE = Task(prompt="a digit")

# registered name -> (spec, task, candidates: "text", "arith" or "image"); ``{clip}`` is a tiny local CLIP
SPECS = {
    "arith_orm": ("arith_orm", ARITH, "arith"),
    "arith_prm": ("arith_prm", ARITH, "arith"),
    "arith_steps": ("arith_steps", ARITH, "arith"),
    "clip": ("clip:{clip}", IMAGE, "image"),
    "direction": ("direction:30:sentiment,length:20", TEXT, "text"),
    "digit": ("digit:3", IMAGE, "image"),
    "ink": ("ink:0.3", IMAGE, "image"),
    "judge": ("judge", TEXT, "text"),
    "judge_pairwise": ("judge_pairwise", TEXT, "text"),
    "judge_steps": ("judge_steps", TEXT, "text"),
    "keywords": ("keywords:sun,sea", TEXT, "text"),
    "last": ("last:arith_steps", ARITH, "arith"),
    "length": ("length:40", TEXT, "text"),
    "math": ("math", TEXT, "text"),
    "pairwise": ("pairwise:sentiment", TEXT, "text"),
    "random": ("random:7", TEXT, "text"),
    "partial": ("partial:length:10", TEXT, "text"),
    "regex": (r"regex:^\d+$", TEXT, "text"),
    "rm": (f"rm:{ORM_DIR}", ARITH, "arith"),
    "sentiment": ("sentiment", TEXT, "text"),
    "symmetry": ("symmetry:v", IMAGE, "image"),
}
NOT_HERE = {
    "learned": "needs a head trained on stored votes: tests/rewards/test_train.py and test_image_votes.py",
    "prm": "needs a Math-Shepherd model folder; the served twin is checked in tests/engines/test_served.py",
}
# the judges read P(yes) from a chat model's own tokens: the embedded SmolLM2 (``-m model``)
NEEDS_CHAT_MODEL = {"judge", "judge_pairwise", "judge_steps"}

CANDIDATES = {
    "text": ["42", "The answer is 42, under the sun by the sea.", ""],
    "arith": ["4*5=20\n3+20=23\n#23", "4*5=21\n3+21=24\n#24", "4*5=20\n"],
}


def test_every_registered_reward_is_in_the_suite() -> None:
    assert set(SPECS) | set(NOT_HERE) == set(REWARDS.names())
    assert not set(SPECS) & set(NOT_HERE)


def _candidates(kind: str, count: int = 3):
    if kind == "image":
        return torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return CANDIDATES[kind][:count]


def _params(kind: str) -> list:
    names = [name for name in SPECS if REWARDS.get(name).kind == kind]
    return [pytest.param(name, marks=pytest.mark.model if name in NEEDS_CHAT_MODEL else ()) for name in names]


_built: dict[str, tuple] = {}


def _case(name: str, request, tmp_path_factory) -> tuple:
    """The reward ``SPECS[name]`` builds (once per module), its task and candidate kind."""
    if name not in _built:
        spec, task, kind = SPECS[name]
        env = RewardEnv(model=request.getfixturevalue("smollm2") if name in NEEDS_CHAT_MODEL else None)
        if "{clip}" in spec:
            from tests.diffusion.tiny_parts import save_tiny_clip

            spec = spec.format(clip=save_tiny_clip(tmp_path_factory.mktemp("clip")))
        reward = build_reward(spec, env)
        factory = REWARDS.get(name)
        assert (reward.kind, getattr(reward, "modality", "text")) == (factory.kind, factory.modality)
        _built[name] = (reward, task, kind)
    return _built[name]


@pytest.mark.parametrize("name", _params("outcome"))
def test_scores_are_one_finite_float_per_candidate_and_repeatable(name, request, tmp_path_factory):
    reward, task, kind = _case(name, request, tmp_path_factory)
    assert isinstance(reward, Reward)
    candidates = _candidates(kind)
    first = reward.score(task, candidates)
    assert len(first) == 3 and all(isinstance(v, float) and math.isfinite(v) for v in first)
    assert reward.score(task, candidates) == pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize("name", _params("pairwise"))
def test_pairwise_gives_a_probability_per_pair(name, request, tmp_path_factory):
    reward, task, kind = _case(name, request, tmp_path_factory)
    assert isinstance(reward, PairwiseReward)
    a, b, c = _candidates(kind)
    values = reward.compare_many(task, [(a, b), (b, a), (a, c)])
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)


@pytest.mark.parametrize("name", _params("step"))
def test_step_scores_one_per_step_and_the_last_agrees(name, request, tmp_path_factory):
    reward, task, kind = _case(name, request, tmp_path_factory)
    assert isinstance(reward, StepReward)
    steps = [[line + "\n" for line in c.split("\n") if line] for c in _candidates(kind)]
    steps = [s for s in steps if s]
    scores = reward.score_steps(task, steps)
    assert [len(s) for s in scores] == [len(s) for s in steps]
    assert all(math.isfinite(v) for s in scores for v in s)
    assert reward.score_last(task, steps) == pytest.approx([s[-1] for s in scores], abs=1e-5)
