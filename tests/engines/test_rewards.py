from __future__ import annotations

import math

import pytest

from engines.errors import ConfigError, UnknownNameError
from engines.rewards import REWARDS, RewardEnv, build_reward, check_reward_names
from engines.rewards.base import KLRegularized, ScalarAsPairwise, WeightedSum, aggregate
from engines.rewards.verifiable import extract_answer
from engines.task import Task

T = Task(prompt="What is 6*7?", answer="42")


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so 6*7 = 42\n#### 42", "42"),
        ("#### 1,234", "1234"),
        ("The answer is \\boxed{42}.", "42"),
        ("I think the answer is: 17", "17"),
        ("6*7 = 42 and then 42+1 = 43", "43"),
        ("it costs $1,000.00 in total", "1000"),
        ("half is 3/6", "1/2"),
        ("-5 is the result", "-5"),
        ("no numbers here", None),
        ("#### 12 but later 99", "12"),  # the explicit #### form wins over later numbers
    ],
)
def test_answer_extraction(text, answer):
    assert extract_answer(text) == answer


def test_math_reward_needs_an_answer_and_matches_numbers():
    reward = build_reward("math")
    assert reward.score(T, ["#### 42", "#### 42.0", "#### 41", ""]) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="reference answer"):
        reward.check_task(Task(prompt="x"))


def test_text_rewards():
    task = Task(prompt="x")
    assert build_reward("regex:^\\d+$").score(task, ["123", " 45 ", "12a"]) == [1.0, 1.0, 0.0]
    assert build_reward("length").score(task, ["one two three", ""]) == [3.0, 0.0]
    assert build_reward("length:2").score(task, ["one two three", "a b"]) == [-1.0, 0.0]
    assert build_reward("keywords:sun,sea").score(task, ["The Sun!", "sun and sea", "sunny seas"]) == [0.5, 1.0, 0.0]
    happy, sad = build_reward("sentiment").score(task, ["I love this, wonderful!", "This is terrible and sad."])
    assert happy > 0.5 and sad < -0.5


@pytest.mark.parametrize("spec", ["", "nope", "regex", "regex:(", "length:x", "keywords:", "rm", "pairwise:judge_pairwise"])
def test_bad_reward_specs_fail_with_one_line(spec, tiny_lm):
    with pytest.raises((ConfigError, UnknownNameError)) as info:
        build_reward(spec, RewardEnv(model=tiny_lm))
    assert "\n" not in str(info.value)


def test_weighted_sum_and_bradley_terry_view():
    task = Task(prompt="x")
    total = build_reward("0.5*length + 2*keywords:sun")
    assert isinstance(total, WeightedSum)
    assert total.score(task, ["sun sun"]) == [0.5 * 2 + 2 * 1.0]
    bt = ScalarAsPairwise(build_reward("length"), tau=2.0)
    p = bt.compare(task, "a b c d", "a b")
    assert p == pytest.approx(1 / (1 + math.exp(-(4 - 2) / 2.0)))
    assert bt.compare(task, "a b", "a b c d") == pytest.approx(1 - p)
    assert isinstance(build_reward("pairwise:length"), ScalarAsPairwise)


def test_step_aggregations():
    assert aggregate([0.9, 0.5, 0.8], "last") == 0.8
    assert aggregate([0.9, 0.5, 0.8], "min") == 0.5
    assert aggregate([0.5, 0.5], "product") == 0.25
    assert aggregate([1.0, 0.0], "mean") == 0.5
    with pytest.raises(ValueError):
        aggregate([], "min")


def test_llm_judges_on_any_text_model(tiny_lm):
    judge = build_reward("judge", RewardEnv(model=tiny_lm))
    from engines.trace import Cost

    usage = Cost()
    values = judge.score(T, ["42", "I do not know"], usage=usage)
    assert all(0.0 <= v <= 1.0 for v in values)
    assert usage.reward_tokens > 0 and usage.prefill_tokens == 0  # judge tokens are reward tokens
    pairwise = build_reward("judge_pairwise", RewardEnv(model=tiny_lm))
    ab, ba = pairwise.compare(T, "42", "41"), pairwise.compare(T, "41", "42")
    # averaged over both orders: position bias cancels exactly
    assert ab + ba == pytest.approx(1.0, abs=1e-6)


def test_reward_model_loader(tmp_path):
    from tests.tiny import tiny_llama

    folder = tiny_llama(tmp_path / "rm", head="classifier", num_labels=1)
    reward = build_reward(f"rm:{folder}")
    batch = reward.score(T, ["42", "forty-two", "no idea at all"])
    single = [reward.score(T, [c])[0] for c in ["42", "forty-two", "no idea at all"]]
    assert batch == pytest.approx(single, abs=1e-4)
    assert len(set(round(v, 6) for v in batch)) > 1
    assert build_reward(f"rm:hf:{folder}").score(T, ["42"]) == pytest.approx(batch[:1], abs=1e-5)
    with pytest.raises(Exception, match="rm:/path/to/folder"):
        build_reward("rm:/no/such/folder")


def test_kl_regularised_reward(tiny_lm, tiny_lm_dir):
    base = build_reward("length")
    same = KLRegularized(base, tiny_lm, tiny_lm, beta=0.5)
    assert same.score(T, ["a b c"]) == pytest.approx(base.score(T, ["a b c"]), abs=1e-5)


def test_registry_lists_every_issue_name():
    for name in ["math", "regex", "length", "keywords", "sentiment", "judge", "judge_pairwise", "rm", "pairwise"]:
        assert name in REWARDS


@pytest.mark.parametrize("spec", ["regex:a+b", "0.5*length:3+1*regex:x", "digit:3", " sentiment "])
def test_reward_names_are_checked_as_build_reward_parses_them(spec):
    """check_reward_names (used before long work) reads a spec as build_reward does: only a spec that
    starts with a weight is a sum, so the '+' of a regex is not a term."""
    check_reward_names(spec)
    build_reward(spec)


@pytest.mark.parametrize("spec, message", [("nope", "unknown reward 'nope'"), ("1*length:3+0.5*nope", "unknown reward 'nope'"),
                                           ("  ", "no reward given")])
def test_unknown_reward_names_are_one_line_before_anything_is_built(spec, message):
    with pytest.raises((ConfigError, UnknownNameError), match=message):
        check_reward_names(spec)
