"""Rollout-only runs (engines.training.rollouts_only): the rollout side of training without updates.

On the toy tree policy: the groups a rollout-only run keeps and drops are exactly those of the
first batch of a training run with the same seed (the policy has not moved yet), no update or
eval event appears, the budget holds, the policy's weights are untouched and nothing is stored.
On the embedded arith policy (``-m model``): any text model as a rollout-only policy records the
base model's token log-probs, and the CLI runs it and refuses training a served policy in one line.
The served policies (vLLM, llama.cpp) are in test_rollouts_served.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from app.workflows.store import training_home
from engines.errors import ConfigError
from engines.training import STRATEGIES
from engines.training.loop import TrainConfig, train
from engines.training.rollout_policy import TextModelPolicy, check_trainable, trainable_spec
from engines.training.rollouts_only import kept_summary, rollouts_only
from tests.training.test_estimators import _setup

PARAMS = {"prompts_per_batch": 2, "group_size": 4}


def _nothing_stored() -> bool:
    return not training_home().exists() or not any(training_home().iterdir())


@pytest.mark.parametrize("strategy", ["grpo", "reinforce_rej", "raft", "dynamic_sampling", "reinforce_ada"])
def test_rollouts_only_keeps_what_the_first_training_batch_keeps(strategy):
    policy, pool, reward = _setup()
    before = policy.theta.clone()
    events = list(rollouts_only(TrainConfig(strategy=strategy, max_updates=3, eval_every=0), PARAMS,
                                policy=policy, reward=reward, prompts=list(pool.tasks)))
    kinds = [e.kind for e in events]
    assert "update" not in kinds and "eval" not in kinds
    assert kinds.count("cost") == 3 and kinds[-1] == "done" and kinds.count("done") == 1
    assert torch.equal(policy.theta, before)
    assert _nothing_stored()

    trained, _, _ = _setup()
    run = list(train(TrainConfig(name="t", strategy=strategy, max_updates=1, eval_every=0), PARAMS, policy=trained,
                     reward=reward, prompts=list(pool.tasks), runs_folder=training_home()))
    first = [(g.prompt, g.rewards, g.advantages, g.kept, g.rule) for g in run if g.kind == "group"]
    mine = [(g.prompt, g.rewards, g.advantages, g.kept, g.rule) for g in events if g.kind == "group" and g.step == 0]
    assert mine == first

    done = events[-1]
    groups = [e for e in events if e.kind == "group"]
    summary = kept_summary(groups)
    assert done.metrics["samples_kept"] == summary["samples_kept"] == sum(g.meta["kept_samples"] for g in groups)
    # every sample drawn is in a group and counted: dropped groups and discarded extras cost as much as kept ones
    assert done.metrics["samples"] == summary["samples_drawn"] == sum(len(g.rewards) for g in groups)
    assert done.metrics["groups_drawn"] - done.metrics["groups_kept"] == sum(done.metrics["drop_rules"].values())
    if done.metrics["samples_kept"]:
        assert done.metrics["samples_per_kept_sample"] == pytest.approx(done.metrics["samples"] / done.metrics["samples_kept"])
    cost = [e.cost for e in events if e.kind == "cost"]
    assert sum(c["batch_samples_drawn"] for c in cost) == done.metrics["samples"]


TOY_UNFIT = {"bcpg_nsa", "tree_rpo", "tree_rl"}  # arith step checks / token-prefix branching: not on the toy tree policy


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES.names()) - TOY_UNFIT))
def test_every_strategy_runs_rollouts_only_and_leaves_the_weights_as_they_were(strategy):
    """EEPO's unlearning step included: it restores the weights after its second half-group."""
    policy, pool, reward = _setup()
    before = policy.theta.clone()
    events = list(rollouts_only(TrainConfig(strategy=strategy, max_updates=2, eval_every=0), PARAMS,
                                policy=policy, reward=reward, prompts=list(pool.tasks)))
    assert torch.equal(policy.theta, before)
    assert {"update", "eval"}.isdisjoint(e.kind for e in events) and events[-1].status == "ok"
    assert events[-1].metrics["batches"] == 2 and events[-1].metrics["samples"] == events[-1].metrics["samples_drawn"]


def test_same_seed_same_rollouts_and_the_budget_holds():
    def run(seed):
        policy, pool, reward = _setup()
        config = TrainConfig(strategy="dynamic_sampling", samples=37, seed=seed, eval_every=0)
        return list(rollouts_only(config, PARAMS, policy=policy, reward=reward, prompts=list(pool.tasks)))

    a, b = run(0), run(0)
    assert [e for e in a if e.kind == "group"] == [e for e in b if e.kind == "group"]
    assert a[-1].status == "budget" and a[-1].metrics["samples"] <= 37
    assert [e for e in run(1) if e.kind == "group"] != [e for e in a if e.kind == "group"]


def test_cancel_stops_at_the_next_draw():
    import threading

    policy, pool, reward = _setup()
    cancel = threading.Event()
    events = []
    for event in rollouts_only(TrainConfig(strategy="grpo", max_updates=50, eval_every=0), PARAMS, cancel=cancel,
                               policy=policy, reward=reward, prompts=list(pool.tasks)):
        events.append(event)
        if event.kind == "cost":
            cancel.set()
    assert events[-1].status == "cancelled" and events[-1].metrics["batches"] == 1


def test_training_refuses_a_served_policy_in_one_line_and_rollouts_only_names_the_way():
    assert trainable_spec("embedded:arith") and trainable_spec("hf:/some/folder")
    assert not trainable_spec("openai:http://127.0.0.1:9/v1") and not trainable_spec("embedded:smollm2")
    with pytest.raises(ConfigError, match="cannot be trained here.*--rollouts-only"):
        check_trainable("openai:http://127.0.0.1:9/v1")
    policy, pool, reward = _setup()
    policy.trainable = False  # as a served policy is
    with pytest.raises(ConfigError, match="cannot be trained"):
        list(train(TrainConfig(name="served", samples=8, eval_every=0), PARAMS, policy=policy, reward=reward,
                   prompts=list(pool.tasks), runs_folder=training_home()))
    assert _nothing_stored()
    with pytest.raises(ConfigError, match="empty"):
        list(rollouts_only(TrainConfig(samples=8), PARAMS, policy=policy, reward=reward, prompts=[]))
    from engines.models import load_model

    served_like = TextModelPolicy(load_model("toy:abc"), name="toy:abc")
    for tree, message in (("tree_rpo", "grows rollout trees"), ("tree_rl", "grows rollout trees"),
                          ("eepo", "unlearning step")):  # refused before any event: they need the policy in process
        with pytest.raises(ConfigError, match=message):
            next(rollouts_only(TrainConfig(strategy=tree, samples=8), policy=served_like, reward=reward,
                               prompts=list(pool.tasks)))


def test_cli_refuses_to_train_a_served_policy_and_stores_nothing(capsys):
    from app.cli import main

    assert main(["train", "--policy", "openai:http://127.0.0.1:9/v1", "--budget", "samples=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be trained" in err and "--rollouts-only" in err
    assert main(["train", "--rollouts-only", "--resume", "--budget", "samples=8"]) == 2
    assert main(["train", "--rollouts-only", "--budget", "samples=0"]) == 2
    assert _nothing_stored()


@pytest.mark.model
def test_a_text_model_as_rollout_policy_records_base_log_probs():
    """TextModelPolicy on the in-process arith model: its rollouts' log-probs are the trainable policy's
    untempered log-probs of the same tokens (what a served model's rollouts carry too)."""
    from engines.models import load_model
    from engines.training.policy import load_policy

    policy = TextModelPolicy(load_model("embedded:arith"), name="arith as a text model")
    reference = load_policy("embedded:arith")
    prompts = ["Q: 3+4*5\n"] * 3 + ["Q: (7-2)*3\n"] * 3
    rollouts = policy.rollout(prompts, temperature=0.7, max_new_tokens=24, rng=torch.Generator().manual_seed(0))
    assert len(rollouts) == 6 and all(r.tokens == len(r.logprobs) > 0 for r in rollouts)
    assert all(r.prompt_ids == tuple(reference.encode(p)) for r, p in zip(rollouts, prompts, strict=True))
    logps, _, mask = reference.token_logprobs(rollouts)
    for i, r in enumerate(rollouts):
        assert logps[i, : r.tokens].detach().tolist() == pytest.approx(list(r.logprobs), abs=1e-4)
    again = policy.rollout(prompts, temperature=0.7, max_new_tokens=24, rng=torch.Generator().manual_seed(0))
    assert again == rollouts
    with pytest.raises(ConfigError, match="rollout-only"):
        policy.token_logprobs(rollouts)


@pytest.mark.model
def test_cli_rollouts_only_on_the_arith_policy(capsys):
    from app.cli import main

    argv = ["train", "--rollouts-only", "--strategy", "reinforce_rej", "--set", "group_size=4", "--set",
            "prompts_per_batch=2", "--set", "max_new_tokens=40", "--budget", "samples=16", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "rollouts_only" and result["samples"] == 16 and result["batches"] == 2
    assert result["groups_drawn"] == 4 and "updates" not in result and "policy_spec" not in result
    assert result["samples_kept"] == 4 * result["groups_kept"]
    assert _nothing_stored()
