"""The behaviour every registered rollout strategy shares, run for each name in the registry.

A strategy registered later is picked up here without editing this file; a strategy that
needs more than the plain toy (a tree policy, a step judge, a true score) says so in
:func:`toy_setup`. Checked for each: UI metadata and paper, same seed same batch, budgets
(samples and tokens) never passed with every drawn sample and token counted, cancel, the
JSON round trip of its events, a bad config refused with one line, and two updates in the
training loop that resume after a cancel exactly as the uninterrupted run.
"""

from __future__ import annotations

import json
import sys
import threading

import pytest
import torch

import engines.training.loop as loop_module
from app.workflows.store import training_home
from engines.errors import BudgetExhausted, Cancelled, ConfigError
from engines.task import Task
from engines.trace import Trace
from engines.training import STRATEGIES, build_strategy
from engines.training.base import Allowance, PromptPool
from engines.training.loop import TrainConfig, train
from engines.training.rewards import TrainingReward
from tests.training import test_bcpg_gradient as lines
from tests.training.test_estimators import RIGHT
from tests.training.test_rules import _comparable
from tests.training.test_tree_strategies import TREE_PARAMS, PrefixTreePolicy, _theta, run
from tests.training.toy import LeafReward

NAMES = sorted(STRATEGIES)
PLAIN = {"prompts_per_batch": 2, "group_size": 4, "max_new_tokens": 2}


def toy_setup(name: str):
    """(policy, pool, reward, strategy params, configure) for a strategy on the toy tree."""
    pool = PromptPool(tuple(Task(prompt=f"p{j}", chat=False) for j in range(2)))
    reward = TrainingReward(outcome=LeafReward(RIGHT))
    policy = PrefixTreePolicy(_theta())
    params = dict(PLAIN)

    def configure(strategy):
        return strategy

    if name in TREE_PARAMS:
        params = dict(TREE_PARAMS[name])
    elif name == "bcpg_nsa":
        policy, pool, reward = lines._setup()
        params["max_new_tokens"] = 3

        def configure(strategy):
            strategy.judge = lines.ToyStepJudge()
            return strategy
    elif name == "pf_ppo":
        params["calibration_prompts"] = 2

        def configure(strategy):
            strategy.true_score = LeafReward(RIGHT)
            return strategy
    elif name in ("dynamic_sampling", "lspo"):
        params["generation_prompts"] = 2
    return policy, pool, reward, params, configure


def fresh(name):
    policy, pool, reward, params, configure = toy_setup(name)
    return configure(build_strategy(name, params)), policy, pool, reward


@pytest.mark.parametrize("name", NAMES)
def test_config_carries_ui_metadata_and_the_module_cites_the_paper(name):
    cls = STRATEGIES.get(name)
    config = cls.Config
    assert config.label and config.summary and config.paper
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert config.paper.split()[0].rstrip(",") in doc, "the module docstring names the paper's first author"
    assert all(spec.label for spec in config.specs())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_batch(name):
    first = run(*fresh(name), Allowance(samples=1000), 3)
    second = run(*fresh(name), Allowance(samples=1000), 3)
    assert first[0] == second[0]
    assert first[1].advantages == second[1].advantages and first[1].token_weights == second[1].token_weights
    other = run(*fresh(name), Allowance(samples=1000), 4)
    assert other[0] != first[0]


@pytest.mark.parametrize("caps", [{"samples": 37}, {"tokens": 61}, {"samples": 30, "tokens": 200}])
@pytest.mark.parametrize("name", NAMES)
def test_budget_is_never_passed_and_every_draw_is_counted(name, caps):
    strategy, policy, pool, reward = fresh(name)
    budget = Allowance(**caps)
    events = []
    for step in range(200):
        strategy.step = step
        try:
            more, batch = run(strategy, policy, pool, reward, budget, step)
        except BudgetExhausted:
            break
        events += more
        if batch.samples_drawn == 0:
            break
    for cap_name, cap in caps.items():
        assert getattr(budget, f"spent_{cap_name}") <= cap
    if len(caps) == 1:  # it spent most of it: less than one toy batch is left
        assert getattr(budget, f"spent_{cap_name}") > cap - 32
    nodes = [e for e in events if e.kind == "node" and e.parent is not None]
    assert budget.spent_samples == sum(e.final for e in nodes) > 0
    assert budget.spent_tokens == sum(e.tokens for e in nodes)


@pytest.mark.parametrize("name", NAMES)
def test_cancel_stops_before_drawing(name):
    strategy, policy, pool, reward = fresh(name)
    cancel = threading.Event()
    cancel.set()
    budget = Allowance(samples=100, cancel=cancel)
    with pytest.raises(Cancelled):
        run(strategy, policy, pool, reward, budget, 0)
    assert budget.spent_samples == 0


@pytest.mark.parametrize("name", NAMES)
def test_events_round_trip_through_json(name):
    events, _ = run(*fresh(name), Allowance(samples=1000), 0)
    trace = Trace(events)
    again = Trace.from_json(trace.to_json())
    assert again.to_list() == trace.to_list()
    assert json.loads(trace.to_json())  # plain JSON, no objects


@pytest.mark.parametrize("name", NAMES)
def test_bad_config_is_refused_with_one_line(name):
    with pytest.raises(ConfigError) as info:
        build_strategy(name, {"group_size": 0})
    assert "\n" not in str(info.value)


def _run(name, run_name, monkeypatch, *, cancel=None, resume=False, stop_after=None):
    policy, pool, reward, params, configure = toy_setup(name)
    real = loop_module.build_strategy
    monkeypatch.setattr(loop_module, "build_strategy", lambda n, p: configure(real(n, p)))
    config = TrainConfig(name=run_name, strategy=name, max_updates=3, eval_every=0, learning_rate=0.1, kl_coef=0.1)
    events = []
    for event in train(config, params, policy=policy, reward=reward, prompts=list(pool.tasks),
                       cancel=cancel, resume=resume, runs_folder=training_home()):
        events.append(event)
        if stop_after is not None and event.kind == "update" and event.step == stop_after:
            cancel.set()
    return events, policy


@pytest.mark.parametrize("name", NAMES)
def test_training_loop_runs_and_resumes_after_cancel_exactly(name, monkeypatch):
    events, policy = _run(name, "whole", monkeypatch)
    assert events[-1].status == "ok" and events[-1].metrics["updates"] == 3
    for update in (e for e in events if e.kind == "update"):  # kept responses, not rows: a share of at most 1
        assert 0 < update.metrics["batch_samples"] <= update.metrics["batch_samples_drawn"] <= update.metrics["spent_samples"]
    cancel = threading.Event()
    cut, _ = _run(name, "cut", monkeypatch, cancel=cancel, stop_after=1)
    assert cut[-1].status == "cancelled"
    resumed, policy_resumed = _run(name, "cut", monkeypatch, resume=True)
    assert _comparable(resumed) == _comparable(events)
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), policy_resumed.parameters(), strict=True))
