"""Training a reward on stored votes: a simulated annotator, honest evaluation, bad input."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.workflows.reward_training import run_training
from app.workflows.store import rewards_home
from engines.errors import ConfigError, SamplescopeError
from engines.rewards import RewardEnv, build_reward, list_rewards
from engines.task import Task
from tests.rewards.simulated import fill, hidden_reward
from tests.storage.storage_helpers import dump

#: the stated margin: held-out accuracy within this of the simulated annotator's ceiling
MARGIN = 0.06


def test_300_votes_reach_the_annotators_ceiling(db):
    ceiling = fill(db, prompts=30, per_prompt=10)
    trained = run_training(db, "sim", base="toy:digits")
    metrics = trained.card["metrics"]
    held = metrics["heldout"]
    assert held["n"] == 300 and trained.card["votes"]["used"] == 300
    assert held["rate"] >= ceiling - MARGIN, (held, ceiling)
    assert held["low"] > 0.7  # far above chance
    # a learning curve that ends at the full-data accuracy
    curve = metrics["learning_curve"]
    assert [p["fraction"] for p in curve] == [0.25, 0.5, 1.0]
    assert curve[-1]["rate"] == held["rate"] and curve[0]["votes"] < curve[-1]["votes"]
    # the stored reward (distinct digits) is the baseline on the same votes
    assert set(metrics["baselines"]["by_reward"]) == {"distinct"}
    # the folder, and the reward it makes: it ranks by the hidden reward
    folder = rewards_home() / "sim"
    assert json.loads((folder / "card.json").read_text())["base"] == "toy:digits"
    assert (folder / "head.safetensors").is_file()
    reward = build_reward("learned:sim", RewardEnv(rewards_folder=rewards_home()))
    texts = ["000000", "111111", "999999", "123456"]
    scores = reward.score(Task(prompt="prompt 0"), texts)
    order = sorted(texts, key=hidden_reward)
    assert sorted(texts, key=lambda t: scores[texts.index(t)]) == order
    assert any(row["name"] == "learned:sim" for row in list_rewards(rewards_home()))


def test_random_votes_stay_at_chance(db):
    fill(db, prompts=30, per_prompt=10, random_votes=True, seed=1)
    held = run_training(db, "noise", base="toy:digits").card["metrics"]["heldout"]
    assert held["low"] < 0.5 < held["high"] or abs(held["rate"] - 0.5) < 0.08, held


def test_ties_count_as_half_wins_and_both_bad_is_left_out(db):
    fill(db, prompts=12, per_prompt=6, ties=0.3)
    votes = run_training(db, "ties", base="toy:digits").card["votes"]
    assert votes["ties"] > 0 and votes["used"] == votes["decisive"] + votes["ties"] == 72


def _refused(db, capsys, args, match):
    before = dump(db)
    home = rewards_home()
    listing = sorted(home.iterdir()) if home.exists() else []
    assert main(["reward", "train", "--db", str(db.engine.url), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert dump(db) == before
    assert (sorted(home.iterdir()) if home.exists() else []) == listing


def test_bad_input_is_one_line_and_writes_nothing(db, capsys):
    _refused(db, capsys, ["--name", "x", "--base", "toy:digits"], "too few votes")
    fill(db, prompts=3, per_prompt=3)
    _refused(db, capsys, ["--name", "x", "--base", "toy:digits"], "too few votes")
    fill(db, prompts=12, per_prompt=6, seed=3, annotator="second")
    _refused(db, capsys, ["--name", "x", "--base", "toy:nope"], "unknown toy model")
    _refused(db, capsys, ["--name", "x", "--base", "embedded:digits"], "does not take text")
    _refused(db, capsys, ["--name", "x", "--base", "toy:digits", "--epochs", "0"], "epochs >= 1")  # not the default 100
    _refused(db, capsys, ["--name", "../evil", "--base", "toy:digits"], "reward name")
    _refused(db, capsys, ["--name", "x", "--votes", "colour=red"], "vote filter")
    _refused(db, capsys, ["--name", "x", "--votes", "annotator=nobody"], "too few votes")
    assert main(["reward", "train", "--db", str(db.engine.url), "--name", "x", "--base", "toy:digits"]) == 0
    capsys.readouterr()
    _refused(db, capsys, ["--name", "x", "--base", "toy:digits"], "exists already")


def test_one_outcome_only_is_refused(db):
    from storage import add_vote, make_comparisons
    from tests.storage.storage_helpers import store_run

    for k in range(4):
        run_id = store_run(db, [f"{k}{i}" for i in range(6)], [float(i) for i in range(6)], prompt=f"p{k}", seed=k)
        ids = db.write(lambda s, r=run_id: make_comparisons(s, r, "all_pairs", max_pairs=5))
        for cid in ids:
            db.write(lambda s, c=cid: add_vote(s, comparison_id=c, annotator="u", outcome="a", idempotency_key=f"k{c}"))
    with pytest.raises(ConfigError, match="same outcome"):
        run_training(db, "one", base="toy:digits")
    assert not (rewards_home() / "one").exists()


def test_unknown_learned_reward_is_one_line():
    with pytest.raises(SamplescopeError, match="no learned reward"):
        build_reward("learned:missing", RewardEnv(rewards_folder=rewards_home()))


def test_cli_prints_accuracy_ceiling_and_baselines(db, capsys):
    fill(db, prompts=10, per_prompt=6)
    fill(db, prompts=10, per_prompt=6, seed=0, annotator="twin")  # same pairs, a second annotator
    assert main(["reward", "train", "--db", str(db.engine.url), "--name", "cli", "--base", "toy:digits"]) == 0
    out = capsys.readouterr().out
    assert "held-out pairwise accuracy" in out and "ceiling" in out and "stored reward distinct" in out
    assert main(["list", "rewards"]) == 0
    assert "learned:cli" in capsys.readouterr().out


def test_annotators_below_the_threshold_are_dropped_and_counted(db):
    fill(db, prompts=12, per_prompt=6, crowd=(("twin", "follow"), ("contrarian", "flip")))
    kept = run_training(db, "all", base="toy:digits")
    assert kept.card["votes"]["used"] == 3 * 72 and kept.card["votes"]["dropped_votes"] == 0
    assert kept.card["metrics"]["annotator_ceiling"]["n"] == 3 * 72  # three pairs of votes per comparison
    strict = run_training(db, "strict", base="toy:digits", min_agreement=0.4)
    votes = strict.card["votes"]
    assert votes["dropped_annotators"] == ["contrarian"] and votes["dropped_votes"] == 72
    assert votes["used"] == 2 * 72
    assert strict.card["metrics"]["heldout"]["rate"] > kept.card["metrics"]["heldout"]["rate"] + 0.1


def test_learned_rewards_live_in_the_data_folder_storage_uses(monkeypatch, tmp_path):
    from storage.db import data_home

    for env in ({"SAMPLESCOPE_HOME": str(tmp_path / "h")}, {"XDG_DATA_HOME": str(tmp_path / "x")}):
        monkeypatch.delenv("SAMPLESCOPE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert rewards_home() == data_home() / "rewards"


def test_engines_are_handed_the_rewards_folder(tmp_path):
    """Engines never work out the data folder: a learned reward by name needs the folder handed in."""
    with pytest.raises(ConfigError, match="no rewards folder was given"):
        build_reward("learned:sim")
    with pytest.raises(SamplescopeError, match=f"no learned reward at {tmp_path}"):
        build_reward("learned:sim", RewardEnv(rewards_folder=tmp_path))
    assert all(not row["name"].startswith("learned:") for row in list_rewards())
