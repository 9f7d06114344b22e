"""Rules and behaviour of the training loop on the toy tree policy (and the CLI on the arith policy)."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from app.workflows.store import training_home
from engines.errors import ConfigError, SamplescopeError
from engines.trace import Trace
from engines.training import build_strategy
from engines.training.base import Allowance
from engines.training.loop import TrainConfig, train
from tests.training.test_estimators import _setup


def _collect(strategy, policy, pool, reward, budget, seed):
    events, generator = [], strategy.collect(policy, pool, reward, budget, torch.Generator().manual_seed(seed))
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


def test_reinforce_rej_drops_exactly_the_degenerate_groups():
    policy, pool, reward = _setup()
    for drop in ("degenerate", "all_wrong"):
        strategy = build_strategy("reinforce_rej", {"prompts_per_batch": 4, "group_size": 3, "drop": drop})
        seen = set()
        for seed in range(60):
            events, batch = _collect(strategy, policy, pool, reward, Allowance(), seed)
            groups = [e for e in events if e.kind == "group"]
            for g in groups:
                all_wrong, all_right = max(g.rewards) == 0, min(g.rewards) == 1
                dropped = all_wrong or (all_right and drop == "degenerate")
                assert g.kept is not dropped
                assert g.rule == ("all wrong" if all_wrong else "all right" if dropped else None)
                seen.add(g.rule)
            assert len(batch) == 3 * sum(g.kept for g in groups)
        assert seen == ({None, "all wrong", "all right"} if drop == "degenerate" else {None, "all wrong"})


def test_dynamic_sampling_counts_every_discarded_sample():
    policy, pool, reward = _setup()
    strategy = build_strategy("dynamic_sampling", {"prompts_per_batch": 3, "group_size": 4, "generation_prompts": 2})
    for seed in range(20):
        budget = Allowance()
        events, batch = _collect(strategy, policy, pool, reward, budget, seed)
        groups = [e for e in events if e.kind == "group"]
        samples = [e for e in events if e.kind == "node" and e.final]
        assert budget.spent_samples == len(samples) == 4 * len(groups) == batch.samples_drawn
        assert batch.groups_kept == 3 and len(batch) == 12
        assert all(g.rule in ("no reward variance", "batch full") for g in groups if not g.kept)
        assert all(max(g.rewards) > min(g.rewards) for g in groups if g.kept)


def _toy_run(name, *, cancel=None, resume=False, updates=4, strategy="grpo"):
    policy, pool, reward = _setup()
    config = TrainConfig(name=name, strategy=strategy, max_updates=updates, eval_every=0, learning_rate=0.1, kl_coef=0.1)
    events = list(
        train(config, {"prompts_per_batch": 2, "group_size": 4}, policy=policy, reward=reward, prompts=list(pool.tasks), cancel=cancel, resume=resume, runs_folder=training_home())
    )
    return events, policy


def _comparable(events):
    """The events without their wall-clock parts (update timings, spend in seconds)."""
    out = []
    for e in events:
        row = e.__dict__.copy()
        if e.kind in ("update", "done"):
            row.pop("metrics", None)
            row.pop("cost", None)
        out.append((e.kind, json.dumps(row, sort_keys=True, default=str)))
    return out


def test_same_seed_same_run_and_resume_after_cancel_matches():
    events_a, policy_a = _toy_run("a")
    events_b, policy_b = _toy_run("b")
    assert _comparable(events_a) == _comparable(events_b)
    assert torch.equal(policy_a.theta, policy_b.theta)
    assert events_a[-1].status == "ok" and events_a[-1].metrics["updates"] == 4

    cancel = threading.Event()
    policy, pool, reward = _setup()
    config = TrainConfig(name="c", strategy="grpo", max_updates=4, eval_every=0, learning_rate=0.1, kl_coef=0.1)
    events = []
    for event in train(config, {"prompts_per_batch": 2, "group_size": 4}, policy=policy, reward=reward, prompts=list(pool.tasks), cancel=cancel, runs_folder=training_home()):
        events.append(event)
        if event.kind == "update" and event.step == 2:
            cancel.set()
    assert events[-1].status == "cancelled"
    resumed, policy_c = _toy_run("c", resume=True)
    assert _comparable(resumed) == _comparable(events_a)
    assert torch.equal(policy_c.theta, policy_a.theta)


def test_resume_ignores_events_of_a_checkpoint_that_never_completed():
    events_a, policy_a = _toy_run("full")
    _toy_run("crashed", updates=2)
    with (training_home() / "crashed" / "events.jsonl").open("a") as fh:  # a crash between the two writes
        fh.write(json.dumps({"kind": "update", "step": 3, "metrics": {}}) + "\n")
    resumed, policy = _toy_run("crashed", resume=True)
    assert _comparable(resumed) == _comparable(events_a)
    assert torch.equal(policy.theta, policy_a.theta)


def test_trace_with_training_events_round_trips():
    events, _ = _toy_run("json", updates=2)
    trace = Trace(events)
    again = Trace.from_json(trace.to_json())
    assert [e.kind for e in again.events] == [e.kind for e in trace.events]
    assert again.groups == trace.groups and again.updates == trace.updates and len(again.updates) == 2


def test_bad_input_is_one_line_and_stores_nothing():
    policy, pool, reward = _setup()
    with pytest.raises(SamplescopeError, match="unknown rollout strategy 'nope'"):
        TrainConfig(strategy="nope", samples=10)
    with pytest.raises(ConfigError, match="samples must be >= 1"):
        TrainConfig(samples=0)
    with pytest.raises(ConfigError, match="give a budget"):
        TrainConfig()
    with pytest.raises(ConfigError, match="empty"):
        list(train(TrainConfig(samples=10, eval_every=0), policy=policy, reward=reward, prompts=[], runs_folder=training_home()))
    with pytest.raises(ConfigError, match="cannot be trained"):
        list(train(TrainConfig(name="served", policy="openai:http://127.0.0.1:9/v1", samples=10), runs_folder=training_home()))
    with pytest.raises(ConfigError, match="budget samples must be positive"):
        Allowance(samples=0)
    assert not training_home().exists() or not any(training_home().iterdir())


def test_cli_bad_input_gets_one_line(capsys):
    from app.cli import main

    assert main(["train", "--policy", "openai:http://127.0.0.1:9/v1", "--budget", "samples=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be trained" in err
    assert main(["train", "--strategy", "nope", "--budget", "samples=8"]) == 2
    assert main(["train", "--budget", "samples=0"]) == 2
    assert main(["train", "--budget", "apples=3"]) == 2
    assert not training_home().exists() or not any(training_home().iterdir())


@pytest.mark.model
def test_cli_trains_arith_and_the_result_is_a_model_spec(capsys):
    from app.cli import main
    from engines.models import load_model

    argv = ["train", "--name", "tiny", "--strategy", "rloo", "--set", "group_size=2", "--set", "prompts_per_batch=2",
            "--set", "max_new_tokens=48", "--train-set", "eval_size=4", "--train-set", "eval_every=1", "--budget", "samples=8", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 8 and result["updates"] == 2 and result["status"] == "budget"
    assert [e["step"] for e in result["evals"]] == [0, 1, 2]
    model = load_model(result["policy_spec"])
    assert model is not None
    assert main(["train", "--name", "tiny", "--strategy", "rloo", "--resume", "--budget", "samples=12", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["samples"] == 12 and resumed["updates"] == 3


def test_training_trace_is_stored_and_replays(tmp_path):
    from storage import Database, load_run, save_run

    events, _ = _toy_run("stored", updates=2)
    trace = Trace(events)
    with Database(f"sqlite:///{tmp_path / 'runs.db'}") as db:
        db.upgrade()
        run_id = db.write(
            lambda s: save_run(s, trace=trace, task={"prompt": "p0"}, model="toy:tree", reward="leaf",
                               sampler="train:grpo", config={"strategy": "grpo"}, seed=0, source="train")
        )
        stored = db.read(lambda s: load_run(s, run_id))
    assert stored.trace.to_list() == trace.to_list()
    assert [g.kept for g in stored.trace.groups] == [g.kept for g in trace.groups]


@pytest.mark.parametrize("strategy", ["grpo", "reinforce_ada", "raft"])
def test_toy_training_follows_the_reward_control(strategy):
    """Exact reward: P(right) rises on both prompts; inverted: it falls below 60% of where it was;
    random: it moves less than under the exact reward."""
    from tests.training.test_estimators import success

    moves, start = {}, success(_setup()[0]).detach()
    for control in ("exact", "inverted", "random"):
        policy, pool, reward = _setup(control=control)
        before = success(policy).detach()
        config = TrainConfig(name=f"toy-{strategy}-{control}", strategy=strategy, max_updates=40, eval_every=0, learning_rate=0.05)
        events = list(train(config, {"prompts_per_batch": 2, "group_size": 8}, policy=policy, reward=reward, prompts=list(pool.tasks), runs_folder=training_home()))
        assert events[-1].status == "ok"
        moves[control] = success(policy).detach() - before
    assert bool((moves["exact"] > 0.2).all()), moves
    if strategy != "raft":  # RAFT keeps the samples the inverted reward scores 1: the wrong ones
        assert bool((start + moves["inverted"] < 0.6 * start).all()), (start, moves)
    assert bool((moves["random"].abs() < moves["exact"]).all()), moves
