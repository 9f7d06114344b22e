"""``samplescope reward learn``: West-of-N, GAN-RM and PAR end as learned:NAME rewards any sampler can use."""

from __future__ import annotations

import json
import random

import pytest

from app.cli import main
from app.workflows.store import rewards_home
from engines.rewards import RewardEnv, build_reward
from engines.task import Task
from tests.rewards.simulated import fill


@pytest.fixture
def url(db, tmp_path):
    fill(db, prompts=12, per_prompt=8)
    return f"sqlite:///{tmp_path / 'votes.db'}"


def _reward(name):
    return build_reward(f"learned:{name}", RewardEnv(rewards_folder=rewards_home()))


def test_west_of_n_then_par_over_it(url, capsys):
    assert main(["reward", "learn", "west-of-n", "--name", "won", "--base", "toy:digits", "--pool-n", "8",
                 "--db", url, "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["kind"] == "head" and card["method"] == "west-of-n" and card["synthetic_pairs"] == [12, 12]
    texts = ["000000", "111111", "999999", "123456"]
    scores = _reward("won").score(Task(prompt="prompt 0"), texts)
    assert scores[texts.index("000000")] > scores[texts.index("111111")]  # the hidden reward's extremes
    assert main(["reward", "learn", "par", "--name", "par-won", "--of", "learned:won", "--answer-as-reference",
                 "--db", url]) == 0
    par = _reward("par-won")
    values = par.score(Task(prompt="prompt 0", answer="123456"), texts)
    assert values[texts.index("123456")] == pytest.approx(0.5) and all(0 <= v <= 1 for v in values)


def test_gan_rm_from_unpaired_targets(url, tmp_path, capsys):
    rng = random.Random(0)
    rows = [{"prompt": f"prompt {i % 12}", "response": "".join(rng.choice("0279") for _ in range(6))} for i in range(240)]
    targets = tmp_path / "targets.jsonl"
    targets.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["reward", "learn", "gan-rm", "--name", "gan", "--base", "toy:digits", "--targets", str(targets),
                 "--pool-n", "20", "--db", url]) == 0
    capsys.readouterr()
    texts = ["000000", "111111", "999999", "333333"]
    scores = _reward("gan").score(Task(prompt="prompt 1"), texts)
    target_like, other = scores[:1] + scores[2:3], [scores[1], scores[3]]  # 0 and 9 are target digits, 1 and 3 are not
    assert min(target_like) > max(other), dict(zip(texts, scores, strict=True))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["par", "--name", "p"], "--of SPEC"),
        (["par", "--name", "p", "--of", "length"], "PAR needs references"),
        (["par", "--name", "p", "--of", "learned:nothing", "--answer-as-reference"], "no learned reward"),
        (["odin", "--name", "o", "--base", "toy:digits"], "different lengths"),
        (["gan-rm", "--name", "g", "--base", "toy:digits"], "GAN-RM needs target samples"),
        (["west-of-n", "--name", "bad name"], "reward name"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(url, capsys, args, message):
    assert main(["reward", "learn", *args, "--db", url]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not rewards_home().exists() or not any(rewards_home().iterdir())
