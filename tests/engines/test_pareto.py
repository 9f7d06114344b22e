"""The direction reward (DPA's v·r) and the Pareto-front tracer over its angle.

- v·r equals the hand-computed value, for an angle and for a normalised weight vector;
- bad specs are refused in one line;
- the non-dominated set equals a brute-force check (and a weak-dominance variant fails it);
- on toy:digits, best-of-N at a fixed seed draws the same candidates at every angle, so the pick
  must be the first argmax of v·r among them, exactly, at every angle, and the picks move
  monotonically along the dial;
- the CLI and the plotly view; one tiny real run on SmolLM2 (sentiment vs length).
"""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from engines.errors import ConfigError, UnknownNameError
from engines.pareto import dominates, non_dominated, parse_angles, run_front
from engines.rewards import build_reward
from engines.rewards.direction import DirectionReward
from engines.task import Task

TASK = Task(prompt="say something")
#: two conflicting graded rewards on toy:digits' numbers: a high first digit, against two digits with a low first one
HIGH = "1*regex:^[5-9] + 1*regex:^[7-9] + 1*regex:^9"
LOW = "2*regex:^..$ + 1*regex:^[0-4] + 1*regex:^[0-2]"


def test_direction_is_v_dot_r_by_hand() -> None:
    texts = ["one two three sun", "sea"]
    # length: 4 and 1 words; keywords:sun,sea: 0.5 and 0.5
    by_weights = build_reward("direction:3,4:length,keywords:sun,sea")
    assert isinstance(by_weights, DirectionReward)
    assert by_weights.vector == pytest.approx((0.6, 0.8))
    assert by_weights.components(TASK, texts) == [[4.0, 0.5], [1.0, 0.5]]
    assert by_weights.score(TASK, texts) == pytest.approx([0.6 * 4 + 0.8 * 0.5, 0.6 * 1 + 0.8 * 0.5])
    by_angle = build_reward("direction:60:length,keywords:sun,sea")
    assert by_angle.score(TASK, texts) == pytest.approx([0.5 * 4 + math.sqrt(3) / 2 * 0.5, 0.5 + math.sqrt(3) / 4])
    less_of_the_second = build_reward("direction:-30:length,keywords:sun,sea")  # more words, fewer keywords
    assert less_of_the_second.score(TASK, texts) == pytest.approx([math.sqrt(3) / 2 * 4 - 0.25, math.sqrt(3) / 2 - 0.25])
    three = build_reward("direction:1,2,2:length,length:3,keywords:sun,sea")
    assert three.score(TASK, texts) == pytest.approx([(4 + 2 * -1 + 2 * 0.5) / 3, (1 + 2 * -2 + 2 * 0.5) / 3])
    assert three.dimensions == ["length", "length:3", "keywords:sun,sea"]


@pytest.mark.parametrize(
    ("spec", "error", "says"),
    [
        ("direction:0,0:sentiment,length", ConfigError, "zero vector"),
        ("direction:30:sentiment", ConfigError, "exactly 2 rewards"),
        ("direction:1,2,3:sentiment,length", ConfigError, "3 weights but 2 rewards"),
        ("direction:30:sentiment,nope", UnknownNameError, "unknown reward 'nope'"),
        ("direction:x:sentiment,length", ConfigError, "must be numbers"),
        ("direction:inf:sentiment,length", ConfigError, "must be numbers"),
        ("direction:30", ConfigError, "needs weights and rewards"),
        ("direction", ConfigError, "needs an argument"),
        ("direction:1,1:sentiment,arith_prm", ConfigError, "outcome rewards"),
    ],
)
def test_bad_directions_are_one_line(spec, error, says) -> None:
    with pytest.raises(error) as caught:
        build_reward(spec)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def brute_front(points: list[tuple[int, ...]]) -> set[int]:
    """By the definition: i is on the front unless some point is >= in every coordinate and > in one."""
    out = set()
    for i, p in enumerate(points):
        beaten = False
        for q in points:
            ge = all(a >= b for a, b in zip(q, p, strict=True))
            gt = any(a > b for a, b in zip(q, p, strict=True))
            beaten = beaten or (ge and gt)
        if not beaten:
            out.add(i)
    return out


def test_non_dominated_equals_brute_force() -> None:
    rng = random.Random(0)
    for trial in range(300):
        dims = 2 + trial % 2
        points = [tuple(rng.randint(0, 4) for _ in range(dims)) for _ in range(rng.randint(1, 12))]
        assert set(non_dominated(points)) == brute_front(points)
    # every 2-d point set over a 3x3 grid with up to 4 points (ties and duplicates included)
    grid = list(itertools.product(range(3), repeat=2))
    for k in range(1, 5):
        for points in itertools.product(grid, repeat=k):
            assert set(non_dominated(list(points))) == brute_front(list(points))


def test_weak_dominance_would_fail_the_check() -> None:
    """A variant that lets equal points knock each other out drops duplicates the definition keeps."""
    points = [(1, 1), (1, 1), (0, 2)]

    def weak(pts):
        return {i for i, p in enumerate(pts) if not any(all(a >= b for a, b in zip(q, p, strict=True)) for j, q in enumerate(pts) if j != i)}

    assert brute_front(points) == {0, 1, 2} == set(non_dominated(points))
    assert weak(points) != brute_front(points)
    assert dominates((1, 2), (1, 1)) and not dominates((1, 1), (1, 1))


def test_angles_parse_and_refuse() -> None:
    assert parse_angles("0:90:4") == [0, 30, 60, 90]
    assert parse_angles("0, 45,90") == [0, 45, 90]
    for bad, says in [("0,100", "[0, 90]"), ("a,b", "numbers"), ("", "at least one"), ("0:90:1", "at least 2")]:
        with pytest.raises(ConfigError) as caught:
            parse_angles(bad)
        assert says in str(caught.value)


def test_bad_input_is_refused_at_the_call_before_any_model_loads(monkeypatch) -> None:
    from engines import runner
    from engines.pareto import trace_front

    monkeypatch.setattr(runner, "load_parts", lambda request: pytest.fail("a model was loaded"))
    cases = [
        ({"rewards": ["sentiment", "nope"]}, "unknown reward 'nope'"),
        ({"rewards": ["sentiment"]}, "exactly 2 rewards"),
        ({"angles": [0, 91]}, "[0, 90]"),
        ({"prompts": []}, "at least one prompt"),
        ({"sampler": "nope"}, "unknown sampler"),
        ({"params": {"n": -1}}, "n"),
    ]
    for change, says in cases:
        kwargs = {"model": "toy:digits", "rewards": ["sentiment", "length"], "angles": [0, 90], "prompts": ["n?"],
                  **change}
        with pytest.raises((ConfigError, UnknownNameError)) as caught:
            trace_front(**kwargs)  # no next(): the call itself checks
        assert says in str(caught.value) and "\n" not in str(caught.value)


ANGLES = [0, 10, 20, 30, 40, 45, 50, 60, 70, 80, 90]


@pytest.fixture(scope="module")
def toy_front():
    return run_front(model="toy:digits", rewards=[HIGH, LOW], angles=ANGLES, prompts=["n?"], size=16, seed=0)


def test_the_pick_is_the_first_argmax_of_v_dot_r_at_every_angle(toy_front) -> None:
    high, low = build_reward(HIGH), build_reward(LOW)
    texts = [text for text, _ in toy_front.points[0].candidates[0]]
    assert len(texts) == 16
    r = list(zip(high.score(TASK, texts), low.score(TASK, texts), strict=True))
    for point in toy_front.points:
        assert [text for text, _ in point.candidates[0]] == texts  # same seed: the same draws at every angle
        theta = math.radians(point.angle)
        dot = [math.cos(theta) * a + math.sin(theta) * b for a, b in r]
        assert [s for _, s in point.candidates[0]] == pytest.approx(dot, abs=1e-12)
        best = max(range(len(dot)), key=lambda i: (dot[i], -i))  # ties: the earliest draw
        assert point.picks == [texts[best]], point.angle
        assert point.values == list(r[best])
    distinct = {tuple(p.values) for p in toy_front.points}
    assert len(distinct) >= 3  # the dial really moves on this seed: not a vacuous check


def test_the_picks_move_monotonically_along_the_dial(toy_front) -> None:
    """With v = (cos θ, sin θ), the argmax's r2 never falls and (θ < 90°) its r1 never rises as θ grows."""
    points = toy_front.points
    for a, b in itertools.pairwise(points):
        assert b.values[1] >= a.values[1]
        if b.angle < 90:
            assert b.values[0] <= a.values[0]
    front = {tuple(p.values) for p in toy_front.front}
    assert front == {tuple(points[i].values) for i in brute_front([tuple(p.values) for p in points])}
    # at 0° a pick tied on r1 can be dominated (the first of equal-r1 draws wins): it is not on the front
    assert all(p.on_front == (tuple(p.values) in front) for p in points)


def test_cli_traces_the_front_as_json(capsys) -> None:
    from app.cli import main

    code = main(["pareto", "--model", "toy:digits", "--rewards", f"{HIGH},{LOW}", "--angles", "0,45,90", "--n", "16",
                 "--prompt", "n?", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    result = json.loads(captured.out)
    assert [p["angle"] for p in result["points"]] == [0, 45, 90]
    assert result["dimensions"] == [HIGH, LOW]
    assert set(result["front"]) <= {0, 45, 90} and result["front"]
    assert "[3/3] 90°" in captured.err
    code = main(["pareto", "--model", "toy:digits", "--rewards", "sentiment", "--prompt", "n?"])
    err = capsys.readouterr().err
    assert code == 2 and "exactly 2 rewards" in err and err.count("\n") == 1


def test_front_figure_escapes_the_picked_text() -> None:
    from app.views.pareto import front_figure, front_rows
    from engines.pareto import FrontPoint

    points = [
        FrontPoint(angle=0, vector=[1, 0], values=[2, 0], score=2, picks=["<img src=x onerror=alert(1)>"], on_front=True),
        FrontPoint(angle=90, vector=[0, 1], values=[0, 3], score=3, picks=["b"], on_front=True),
        FrontPoint(angle=45, vector=[0.7, 0.7], values=[0, 1], score=0.7, picks=["c"], on_front=False),
    ]
    fig = front_figure(points, ["sentiment", "length:20"])
    line, dots = fig.data
    assert list(line.x) == [0, 2] and list(line.y) == [3, 0]  # the front only, along r1
    assert list(dots.marker.color) == [0, 90, 45]
    assert "<img" not in dots.hovertext[0] and "&lt;img" in dots.hovertext[0]
    assert front_rows(points)[2][5] == ""


@pytest.mark.model
def test_sentiment_against_length_on_smollm2() -> None:
    """A tiny real trace: 4 candidates of 12 tokens, 3 angles; the picks are exact argmaxes of v·r."""
    result = run_front(model="embedded:smollm2", rewards=["sentiment", "length:20"], angles=[0, 45, 90],
                       prompts=["Describe your weekend in one sentence."], size=4,
                       params={"max_new_tokens": 12}, seed=1)
    sentiment, length = build_reward("sentiment"), build_reward("length:20")
    texts = [text for text, _ in result.points[0].candidates[0]]
    r = list(zip(sentiment.score(TASK, texts), length.score(TASK, texts), strict=True))
    for point in result.points:
        assert [text for text, _ in point.candidates[0]] == texts
        theta = math.radians(point.angle)
        dot = [math.cos(theta) * a + math.sin(theta) * b for a, b in r]
        assert point.picks == [texts[max(range(len(dot)), key=lambda i: (dot[i], -i))]]
    assert result.points[0].values[0] == max(a for a, _ in r)
    assert result.points[-1].values[1] == max(b for _, b in r)
    assert result.cost["generated_tokens"] > 0 and any(p.on_front for p in result.points)
