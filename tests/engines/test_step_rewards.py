from __future__ import annotations

import json

import pytest

from engines.errors import ConfigError
from engines.rewards import RewardEnv, build_reward
from engines.rewards.steps import OutcomeAsStep, as_step_reward
from engines.task import Task

T = Task(prompt="2+3*4?", answer="14")


def test_partial_scores_every_prefix_with_an_outcome_reward():
    reward = build_reward("partial:length")
    assert isinstance(reward, OutcomeAsStep)
    assert reward.score_steps(T, [["one two\n", "three\n"], ["x\n"]]) == [[2.0, 3.0], [1.0]]
    assert reward.score_last(T, [["one two\n", "three\n"]]) == [3.0]
    with pytest.raises(ConfigError):
        build_reward("partial:judge_pairwise", RewardEnv(model=None))


def test_outcome_rewards_become_step_rewards_in_step_samplers():
    assert isinstance(as_step_reward(build_reward("length")), OutcomeAsStep)
    step = build_reward("partial:length")
    assert as_step_reward(step) is step


def test_llm_judge_on_partial_solutions(tiny_lm):
    judge = build_reward("judge_steps", RewardEnv(model=tiny_lm))
    scores = judge.score_steps(T, [["3*4=12\n", "2+12=14\n"], ["3*4=13\n"]])
    assert [len(s) for s in scores] == [2, 1]
    assert all(0 <= v <= 1 for row in scores for v in row)


def test_math_shepherd_prm_loader(tmp_path):
    from tests.tiny import tiny_llama

    folder = tiny_llama(tmp_path / "prm", seed=3, chat=False)
    (folder / "prm.json").write_text(json.dumps({"step_tag": "#", "good": "+", "bad": "-"}))
    prm = build_reward(f"prm:{folder}")
    steps = [["3*4=12\n", "2+12=14\n", "so 14"], ["3*4=13\n"]]
    scores = prm.score_steps(T, steps)
    assert [len(s) for s in scores] == [3, 1]
    assert all(0 < v < 1 for row in scores for v in row)
    again = prm.score_steps(T, [steps[1]])
    assert again[0] == pytest.approx(scores[1])
    with pytest.raises(ConfigError, match="step tag"):
        prm.score_steps(T, [["a # b\n"]])  # a step containing the tag would shift every score
    with pytest.raises(ConfigError, match="folder"):
        build_reward("prm:/no/such/folder")


def test_last_step_score_ranks_whole_candidates():
    reward = build_reward("last:partial:length")
    assert reward.kind == "outcome"
    assert reward.score(T, ["one two\nthree four five\n", "x"]) == [5.0, 1.0]
    with pytest.raises(ConfigError, match="process reward"):
        build_reward("last:length")
