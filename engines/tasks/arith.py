"""Multi-step arithmetic: the reasoning lab's problems, solution format and exact checks.

Contract
--------
A problem is a flat expression of small positive integers joined by ``+``,
``-`` and ``*`` (2 to 5 operands by level). The model sees the prompt
``"Q: 3+4*5-2\\n"`` and writes one reduction per line, then the answer::

    Q: 3+4*5-2
    4*5=20
    3+20=23
    23-2=21
    #### 21

Each step line is ``A<op>B=C`` (no spaces; ``A`` and ``C`` may be negative,
``B`` never is). The reference solution reduces the leftmost ``*`` first and
then ``+``/``-`` left to right, so every step follows operator precedence.

:func:`check_steps` is the exact process check. A step *follows* when it
reduces two adjacent operands of the current expression in a legal order
(any ``*`` pair, since multiplication binds tightest and is associative;
``+``/``-`` only at the left end and only when no ``*`` is next to it) and
its arithmetic is right; the answer line follows when the expression is fully
reduced to that number. Scores are *prefix validity*: a step is 1 when it and
every step before it follow, so after the first wrong step every later step
is 0. This is the Math-Shepherd label (Wang et al. 2024, "Math-Shepherd:
Verify and Reinforce LLMs Step-by-step without Human Annotations") with a
perfect completer: a step is good iff the right answer is still reachable
from it. Lightman et al. 2023 ("Let's Verify Step by Step") score a solution
by its first wrong step in the same way.

Task sets ``arith-easy``, ``arith`` (medium) and ``arith-hard`` are fixed
seeded lists of 200 problems each, meant for ``embedded:arith`` with the
``math`` outcome verifier; the training script keeps their problems out of
its training data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engines.task import Task
from engines.tasks import TASK_SETS, TaskSet

OPS = ("+", "-", "*")
PROMPT_PREFIX = "Q: "
ANSWER_PREFIX = "#### "

_EXPR = re.compile(r"^\d+(?:[+\-*]\d+)+$")
_STEP = re.compile(r"^(-?\d+)([+\-*])(-?\d+)=(-?\d+)$")
_ANSWER = re.compile(r"^####\s*(-?\d+)$")


@dataclass(frozen=True)
class Level:
    """A difficulty level: operand count and size, and a cap on every intermediate value."""

    name: str
    min_operands: int
    max_operands: int
    max_operand: int
    max_abs_value: int
    #: chance that an operator is ``*`` (the rest split evenly between + and -)
    p_mul: float = 0.4

    def __post_init__(self) -> None:
        if not 2 <= self.min_operands <= self.max_operands:
            raise ValueError("need 2 <= min_operands <= max_operands")
        if self.max_operand < 2 or self.max_abs_value < self.max_operand:
            raise ValueError("max_operand must be >= 2 and <= max_abs_value")
        if not 0 <= self.p_mul <= 1:
            raise ValueError("p_mul must be in [0, 1]")


LEVELS: dict[str, Level] = {
    "easy": Level("easy", 2, 3, 9, 99),
    "medium": Level("medium", 3, 4, 12, 999),
    "hard": Level("hard", 4, 5, 20, 9999),
}
DEFAULT_LEVEL = "medium"

#: task set name -> (level, seed); 200 problems each
TASK_SET_LEVELS: dict[str, tuple[str, int]] = {
    "arith-easy": ("easy", 101),
    "arith": ("medium", 102),
    "arith-hard": ("hard", 103),
}
TASK_SET_SIZE = 200


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    ops: tuple[str, ...]
    level: str = ""

    def __post_init__(self) -> None:
        if len(self.numbers) != len(self.ops) + 1 or not self.ops:
            raise ValueError("a problem needs n numbers and n-1 >= 1 operators")
        if any(op not in OPS for op in self.ops):
            raise ValueError(f"operators must be among {OPS}")

    @property
    def expression(self) -> str:
        return format_expression(self.numbers, self.ops)

    @property
    def prompt(self) -> str:
        return f"{PROMPT_PREFIX}{self.expression}\n"

    def steps(self) -> list[str]:
        """The reference step lines (without the answer line)."""
        return [line for line, _, _ in _reductions(list(self.numbers), list(self.ops))]

    @property
    def answer(self) -> int:
        return evaluate(self.numbers, self.ops)

    def solution(self) -> str:
        """The reference completion (what follows the prompt, without end-of-text)."""
        return "\n".join([*self.steps(), f"{ANSWER_PREFIX}{self.answer}"])

    def task(self, name: str | None = None) -> Task:
        return Task(
            prompt=self.prompt,
            answer=str(self.answer),
            chat=False,
            name=name,
            meta={"level": self.level, "expression": self.expression},
        )


def format_expression(numbers: Sequence[int], ops: Sequence[str]) -> str:
    parts = [str(numbers[0])]
    for op, x in zip(ops, numbers[1:], strict=True):
        parts.append(f"{op}{x}")
    return "".join(parts)


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def _legal(ops: Sequence[str], i: int) -> bool:
    """May operator ``i`` be reduced now without changing the value (in our convention)?"""
    if ops[i] == "*":
        return True
    return i == 0 and (len(ops) == 1 or ops[1] != "*")


def _canonical_index(ops: Sequence[str]) -> int:
    return ops.index("*") if "*" in ops else 0


def _reductions(numbers: list[int], ops: list[str]) -> Iterable[tuple[str, list[int], list[str]]]:
    """Yield (step line, numbers after, ops after) along the reference order."""
    while ops:
        i = _canonical_index(ops)
        a, op, b = numbers[i], ops[i], numbers[i + 1]
        c = _apply(a, op, b)
        numbers = [*numbers[:i], c, *numbers[i + 2 :]]
        ops = [*ops[:i], *ops[i + 1 :]]
        yield f"{a}{op}{b}={c}", numbers, ops


def planted_solution(problem: Problem, step: int, delta: int) -> list[str]:
    """The reference step lines with the result of ``step`` off by ``delta`` and every later
    step (and the answer line) worked out consistently from the wrong value: a fluent,
    self-consistent solution with exactly one wrong step, for testing process rewards."""
    if not 0 <= step < len(problem.ops) or delta == 0:
        raise ValueError(f"step must be in 0..{len(problem.ops) - 1} and delta non-zero")
    numbers, ops = list(problem.numbers), list(problem.ops)
    lines: list[str] = []
    for k in range(len(problem.ops)):
        i = _canonical_index(ops)
        a, op, b = numbers[i], ops[i], numbers[i + 1]
        c = _apply(a, op, b) + (delta if k == step else 0)
        lines.append(f"{a}{op}{b}={c}")
        numbers = [*numbers[:i], c, *numbers[i + 2 :]]
        ops = [*ops[:i], *ops[i + 1 :]]
    return [*lines, f"{ANSWER_PREFIX}{numbers[0]}"]


def evaluate(numbers: Sequence[int], ops: Sequence[str]) -> int:
    value = None
    for _, nums, _ in _reductions(list(numbers), list(ops)):
        value = nums[0]
    return int(numbers[0]) if value is None else int(value)


def parse_expression(text: str) -> Problem:
    """A problem from ``"3+4*5"`` or a prompt ``"Q: 3+4*5\\n"``."""
    body = text.strip()
    if body.startswith(PROMPT_PREFIX.strip()):
        body = body[len(PROMPT_PREFIX.strip()) :].strip()
    body = body.replace(" ", "").replace("×", "*")
    if not _EXPR.match(body):
        raise ValueError(f"not an arithmetic problem of the form 'Q: 3+4*5': {text!r}")
    numbers = tuple(int(x) for x in re.split(r"[+\-*]", body))
    ops = tuple(re.findall(r"[+\-*]", body))
    return Problem(numbers, ops)


def generate_problem(rng: random.Random, level: Level | str) -> Problem:
    """One problem of ``level`` whose every intermediate value stays within its cap."""
    spec = LEVELS[level] if isinstance(level, str) else level
    p_add = (1 - spec.p_mul) / 2
    while True:
        n = rng.randint(spec.min_operands, spec.max_operands)
        numbers = tuple(rng.randint(1, spec.max_operand) for _ in range(n))
        ops = tuple(rng.choices(OPS, weights=(p_add, p_add, spec.p_mul), k=n - 1))
        values = [v for _, nums, _ in _reductions(list(numbers), list(ops)) for v in nums]
        if all(abs(v) <= spec.max_abs_value for v in values):
            return Problem(numbers, ops, spec.name)


def generate_problems(
    seed: int, level: Level | str, n: int, *, exclude: set[str] | frozenset[str] = frozenset()
) -> list[Problem]:
    """``n`` problems from a seeded stream, skipping expressions in ``exclude``."""
    rng = random.Random(seed)
    out: list[Problem] = []
    while len(out) < n:
        problem = generate_problem(rng, level)
        if problem.expression not in exclude:
            out.append(problem)
    return out


# ---------------------------------------------------------------------------
# Exact checks


def final_answer(completion: str) -> int | None:
    """The integer on the first ``#### N`` line, or None."""
    for line in completion.splitlines():
        m = _ANSWER.match(line.strip())
        if m:
            return int(m.group(1))
    return None


def is_correct(completion: str, answer: int | str) -> bool:
    value = final_answer(completion)
    return value is not None and str(value) == str(answer).strip()


def split_steps(completion: str) -> list[str]:
    """The step lines of a completion, answer line included, blank lines dropped."""
    return [line.strip() for line in completion.splitlines() if line.strip()]


def check_step(numbers: list[int], ops: list[str], line: str) -> tuple[list[int], list[str]] | None:
    """The expression after ``line`` when it is a legal, correct reduction; else None."""
    m = _STEP.match(line.replace(" ", "").replace("×", "*"))
    if not m:
        return None
    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    if _apply(a, op, b) != c:
        return None
    for i in range(len(ops)):
        if ops[i] == op and numbers[i] == a and numbers[i + 1] == b and _legal(ops, i):
            return [*numbers[:i], c, *numbers[i + 2 :]], [*ops[:i], *ops[i + 1 :]]
    return None


def check_steps(problem: Problem, steps: Sequence[str]) -> list[bool]:
    """Prefix validity of every step line (see the module docstring)."""
    numbers, ops = list(problem.numbers), list(problem.ops)
    ok = True
    answered = False
    out: list[bool] = []
    for raw in steps:
        line = raw.strip()
        if ok and not answered:
            m = _ANSWER.match(line)
            if m:
                ok = not ops and int(m.group(1)) == numbers[0]
                answered = True
            else:
                after = check_step(numbers, ops, line)
                ok = after is not None
                if after is not None:
                    numbers, ops = after
        else:
            ok = False  # anything after a wrong step or after the answer line
        out.append(ok)
    return out


def legal_lines(numbers: Sequence[int], ops: Sequence[str]) -> dict[str, tuple[list[int], list[str]] | None]:
    """Every line that follows from the expression now -> the expression after it (None: the answer line)."""
    if not ops:
        return {f"{ANSWER_PREFIX}{numbers[0]}": None}
    out: dict[str, tuple[list[int], list[str]] | None] = {}
    for i in range(len(ops)):
        if _legal(ops, i):
            c = _apply(numbers[i], ops[i], numbers[i + 1])
            after = ([*numbers[:i], c, *numbers[i + 2 :]], [*ops[:i], *ops[i + 1 :]])
            out.setdefault(f"{numbers[i]}{ops[i]}{numbers[i + 1]}={c}", after)
    return out


def on_track(problem: Problem, text: str, *, finished: bool = False) -> list[bool]:
    """Per character of ``text`` (a completion), and one more for the end of text when
    ``finished``: can the text up to there still grow into a fully valid solution?

    The character-level version of :func:`check_steps` (strict about the format: no
    spaces, no blank lines): a line is on track while it is a prefix of a line that
    follows, and its newline is on track iff the line follows, so at every newline
    the value equals ``check_steps`` of the lines so far. After the answer line only
    whitespace stays on track. This is the perfect-completer Math-Shepherd label at
    every token, which dense process supervision trains on.
    """
    numbers, ops = list(problem.numbers), list(problem.ops)
    options = legal_lines(numbers, ops)
    line, ok, answered = "", True, False
    out: list[bool] = []
    for ch in text:
        if ok and answered:
            ok = ch.isspace()
        elif ok and ch == "\n":
            ok = line in options
            if ok:
                after = options[line]
                if after is None:
                    answered = True
                else:
                    numbers, ops = after
                    options = legal_lines(numbers, ops)
                line = ""
        elif ok:
            line += ch
            ok = any(option.startswith(line) for option in options)
        out.append(ok)
    if finished:
        out.append(ok and (answered or options.get(line, False) is None))
    return out


def solution_is_valid(problem: Problem, completion: str) -> bool:
    """Every step follows and the completion ends with the right answer line."""
    steps = split_steps(completion)
    return bool(steps) and all(check_steps(problem, steps)) and _ANSWER.match(steps[-1]) is not None


# ---------------------------------------------------------------------------
# Task sets


def eval_problems(set_name: str) -> list[Problem]:
    level, seed = TASK_SET_LEVELS[set_name]
    return generate_problems(seed, level, TASK_SET_SIZE)


def reserved_expressions() -> set[str]:
    """Expressions of every built-in task set: training data must avoid them."""
    return {p.expression for name in TASK_SET_LEVELS for p in eval_problems(name)}


def _builder(set_name: str):
    def build() -> list[Task]:
        return [p.task(name=f"{set_name}:{i}") for i, p in enumerate(eval_problems(set_name))]

    return build


_DESCRIPTIONS = {
    "arith-easy": "2-3 operands up to 9 (+ - *); one step per line, then '#### N'",
    "arith": "3-4 operands up to 12 (+ - *); the reasoning lab's default level",
    "arith-hard": "4-5 operands up to 20 (+ - *); values up to 9999",
}

for _name in TASK_SET_LEVELS:
    TASK_SETS.add(
        _name,
        TaskSet(
            name=_name,
            description=_DESCRIPTIONS[_name],
            build=_builder(_name),
            model="embedded:arith",
            reward="math",
        ),
    )
