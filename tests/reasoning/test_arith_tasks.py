"""The arith generator, its step format, the exact process check and the task sets."""

from __future__ import annotations

import random

import pytest

from engines.tasks import TASK_SETS, get_task
from engines.tasks.arith import (
    LEVELS,
    TASK_SET_LEVELS,
    Problem,
    check_steps,
    eval_problems,
    final_answer,
    generate_problems,
    is_correct,
    on_track,
    parse_expression,
    reserved_expressions,
    solution_is_valid,
    split_steps,
)


def test_generator_is_deterministic_per_seed() -> None:
    a = generate_problems(7, "medium", 50)
    b = generate_problems(7, "medium", 50)
    c = generate_problems(8, "medium", 50)
    assert [p.expression for p in a] == [p.expression for p in b]
    assert [p.expression for p in a] != [p.expression for p in c]


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_generated_problems_respect_their_level_and_verify(level: str) -> None:
    spec = LEVELS[level]
    for problem in generate_problems(3, level, 300):
        assert spec.min_operands <= len(problem.numbers) <= spec.max_operands
        assert all(1 <= x <= spec.max_operand for x in problem.numbers)
        # Python's own precedence agrees with the step-by-step answer
        assert problem.answer == eval(problem.expression)  # noqa: S307 (digits and + - * only)
        assert solution_is_valid(problem, problem.solution())
        assert is_correct(problem.solution(), problem.answer)
        steps = problem.steps()
        assert len(steps) == len(problem.ops)
        assert all(abs(int(s.split("=")[1])) <= spec.max_abs_value for s in steps)


def test_step_format_follows_precedence() -> None:
    problem = parse_expression("Q: 3+4*5-2\n")
    assert problem.solution() == "4*5=20\n3+20=23\n23-2=21\n#### 21"
    assert parse_expression("12-3*10").solution() == "3*10=30\n12-30=-18\n#### -18"
    assert problem.prompt == "Q: 3+4*5-2\n"


def test_exclusion_keeps_reserved_problems_out() -> None:
    reserved = reserved_expressions()
    fresh = generate_problems(101, "easy", 200, exclude=reserved)  # the arith-easy seed itself
    assert not {p.expression for p in fresh} & reserved


def test_check_steps_accepts_every_legal_order() -> None:
    problem = parse_expression("2*3+4*5")
    assert check_steps(problem, ["4*5=20", "2*3=6", "6+20=26", "#### 26"]) == [True] * 4
    # + may go first when no * touches it
    problem = parse_expression("11+2-4*10")
    assert check_steps(problem, ["11+2=13", "4*10=40", "13-40=-27", "#### -27"]) == [True] * 4


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (["4*5=21", "3+21=24", "24-2=22", "#### 22"], [False, False, False, False]),  # wrong arithmetic
        (["4*5=20", "3+20=23", "23-2=21", "#### 20"], [True, True, True, False]),  # wrong answer line
        (["3+4=7", "7*5=35", "35-2=33", "#### 33"], [False, False, False, False]),  # ignores precedence
        (["4*5=20", "20-2=18", "3+18=21", "#### 21"], [True, False, False, False]),  # reassociates
        (["4*5=20", "#### 20"], [True, False]),  # answers too early
        (["4*5=20", "3+20=23", "23-2=21", "#### 21", "1+1=2"], [True, True, True, True, False]),
        (["4*5=20", "3+20=23", "hmm", "23-2=21"], [True, True, False, False]),
        (["6*5=30"], [False]),  # numbers that are not in the problem
    ],
)
def test_check_steps_flags_wrong_steps_and_everything_after(steps: list[str], expected: list[bool]) -> None:
    assert check_steps(parse_expression("3+4*5-2"), steps) == expected


def test_on_track_marks_the_first_wrong_character_and_agrees_with_check_steps() -> None:
    problem = parse_expression("3+4*5-2")
    text = "4*5=20\n3+20=23\n23-2=21\n#### 21"
    assert all(on_track(problem, text, finished=True))
    track = on_track(problem, "4*5=21\n3+21=24", finished=True)
    assert track.index(False) == len("4*5=2")  # the wrong digit itself
    assert not any(track[len("4*5=2") :])
    assert on_track(problem, "4*5=2\n") == [True] * 5 + [False]  # a prefix of 20, but the line ends
    assert on_track(problem, "4*5=20\n#") == [True] * 7 + [False]  # answering too early
    assert on_track(problem, "", finished=True) == [False]  # nothing written is not a solution
    # at every newline the character-level label is the step label
    rng = random.Random(0)
    for problem in generate_problems(11, "medium", 100):
        steps = problem.steps() + [f"#### {problem.answer}"]
        k = rng.randrange(len(steps))
        lhs, value = steps[k].rsplit("=", 1) if "=" in steps[k] else ("####", steps[k][5:])
        steps[k] = f"{lhs}={int(value) + rng.choice([-1, 1, 10])}" if "=" in steps[k] else f"#### {int(value) + 1}"
        text = "".join(step + "\n" for step in steps)
        track = on_track(problem, text)
        newlines = [i for i, ch in enumerate(text) if ch == "\n"]
        assert [track[i] for i in newlines] == check_steps(problem, steps)


def test_final_answer_extraction() -> None:
    assert final_answer("1+1=2\n#### 2") == 2
    assert final_answer("#### -18") == -18
    assert final_answer("1+1=2") is None
    assert split_steps("a\n\n b \n") == ["a", "b"]


def test_parse_rejects_non_arithmetic() -> None:
    for bad in ("Q: hello", "3+", "", "Q: 3/4"):
        with pytest.raises(ValueError):
            parse_expression(bad)
    with pytest.raises(ValueError):
        Problem((1, 2), ("/",))


def test_task_sets_are_registered_and_fixed() -> None:
    for name, (level, _) in TASK_SET_LEVELS.items():
        tasks = TASK_SETS.get(name).tasks()
        assert len(tasks) == 200
        assert TASK_SETS.get(name).model == "embedded:arith"
        assert TASK_SETS.get(name).reward == "math"
        for task, problem in zip(tasks, eval_problems(name), strict=True):
            assert not task.chat
            assert task.prompt == problem.prompt and task.prompt.startswith("Q: ")
            assert task.answer == str(problem.answer)
            assert task.meta["level"] == level
    assert get_task("arith:3").name == "arith:3"
    assert get_task("arith-hard:0").prompt == TASK_SETS.get("arith-hard").tasks()[0].prompt


def test_random_module_state_is_untouched() -> None:
    state = random.getstate()
    generate_problems(0, "hard", 20)
    assert random.getstate() == state


def test_planted_solution_has_exactly_one_wrong_step() -> None:
    from engines.tasks.arith import check_step, planted_solution

    for i, problem in enumerate(generate_problems(21, "hard", 50)):
        k = i % len(problem.ops)
        steps = planted_solution(problem, k, 3)
        assert len(steps) == len(problem.ops) + 1
        assert check_steps(problem, steps) == [True] * k + [False] * (len(steps) - k)
        # every line is arithmetically right except the planted one
        for j, line in enumerate(steps[:-1]):
            a_op_b, c = line.split("=")
            assert (eval(a_op_b) == int(c)) == (j != k)  # noqa: S307 (digits and one operator)
        assert check_step([5], [], "5") is None
    with pytest.raises(ValueError):
        planted_solution(parse_expression("1+2"), 1, 1)
