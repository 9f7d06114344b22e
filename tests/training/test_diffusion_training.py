"""The diffusion training loop: behaviour on the Gaussian-mixture toy, and the embedded digits DDPM.

Toy (fast): the same seed gives the same run, a cancelled run resumed from its checkpoint
ends exactly as the uninterrupted one, no budget counter is ever passed, bad input is one
line and writes nothing. Digits (slow, in CI): ``draft_k`` and ``dpok`` raise the mean
``digit:3`` reward of fresh samples over a fixed budget of 320 samples, with the held-out
k-NN check (is it still a digit?) reported beside it; the CLI trains with ``dpok``, resumes, and the trained
UNet loads as a ``diffusers:`` model spec.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

from app.workflows.store import training_home
from engines.errors import ConfigError, SamplescopeError
from engines.models.gaussian_mixture import GaussianMixture
from engines.trace import Trace
from engines.training.diffusion.base import DiffusionAllowance
from engines.training.diffusion.loop import DiffusionTrainConfig, train_diffusion
from tests.diffusion.conftest import CoordinateReward
from tests.diffusion.trainable_toys import StepShiftToy

MIXTURE = GaussianMixture(weights=(0.7, 0.3), means=((-2.0,), (2.0,)), stds=(0.5, 0.5))


class NoGradient(CoordinateReward):
    differentiable = False


PARAMS = {"steps": 6, "batch_size": 8, "kl_coef": 0.1}


def _toy_run(name, *, scheme="dpok", cancel_at=None, resume=False, updates=4, **budget):
    policy = StepShiftToy(MIXTURE, default_steps=6)
    config = DiffusionTrainConfig(name=name, scheme=scheme, learning_rate=0.05, eval_every=2, eval_size=32,
                                  max_updates=updates, **budget)
    cancel = threading.Event()
    events = []
    params = {k: v for k, v in PARAMS.items() if scheme == "dpok" or k != "kl_coef"}
    for event in train_diffusion(config, params, policy=policy, reward=CoordinateReward(), cancel=cancel, resume=resume,
                                 runs_folder=training_home()):
        events.append(event)
        if cancel_at is not None and event.kind == "update" and event.step == cancel_at:
            cancel.set()
    return events, policy


def _comparable(events):
    out = []
    for e in events:
        row = e.__dict__.copy()
        if e.kind in ("update", "done", "eval"):
            row.pop("cost", None)
            row["metrics"] = {k: v for k, v in row.get("metrics", {}).items() if "seconds" not in k}
        out.append(json.dumps(row, sort_keys=True, default=str))
    return out


def test_same_seed_same_run_and_cancel_then_resume_matches():
    events_a, policy_a = _toy_run("a")
    events_b, policy_b = _toy_run("b")
    assert _comparable(events_a)[:-1] == _comparable(events_b)[:-1]  # done names its own folder
    assert torch.equal(policy_a.theta, policy_b.theta) and policy_a.theta.abs().sum() > 0
    assert events_a[-1].status == "ok" and events_a[-1].metrics["updates"] == 4
    assert [e.step for e in events_a if e.kind == "eval"] == [0, 2, 4]
    again = Trace.from_json(Trace(events_a).to_json())  # what storage writes and a replay reads back
    assert again.to_list() == Trace(events_a).to_list() and len(again.groups) == 4

    cancelled, _ = _toy_run("c", cancel_at=2)
    assert cancelled[-1].status == "cancelled"
    resumed, policy_c = _toy_run("c", resume=True)
    assert _comparable(resumed)[:-1] == _comparable(events_a)[:-1]
    assert torch.equal(policy_c.theta, policy_a.theta)


@pytest.mark.parametrize(("scheme", "budget"), [("dpok", {"nfe": 150}), ("draft_k", {"backward_nfe": 20}),
                                                 ("draft", {"samples": 30}), ("single_sde", {"nfe": 150})])
def test_budget_is_never_exceeded(scheme, budget):
    events, _ = _toy_run(f"budget-{scheme}", scheme=scheme, updates=100, **budget)
    done = events[-1]
    assert done.status == "budget"
    (counter, cap), = budget.items()
    assert 0 < done.metrics[counter] <= cap
    assert done.metrics["updates"] >= 1


def test_reward_calls_count_every_image_scored_in_training_but_not_evaluation():
    """dpok scores each of its 8 samples once an update: 4 updates are 32 reward calls, reported in every
    update event and the done event; the evaluations' 3 × 32 samples are not training compute (like their NFE)."""
    events, _ = _toy_run("reward-calls")
    updates = [e for e in events if e.kind == "update"]
    assert [u.metrics["spent_reward_calls"] for u in updates] == [8, 16, 24, 32]
    assert [u.metrics["spent_samples"] for u in updates] == [8, 16, 24, 32]
    done = events[-1]
    assert done.cost["reward_calls"] == done.metrics["reward_calls"] == done.metrics["samples"] == 32


def test_allowance_refuses_before_spending():
    allowance = DiffusionAllowance(nfe=10)
    allowance.spend(nfe=6)
    with pytest.raises(SamplescopeError, match="nfe"):
        allowance.spend(nfe=5, samples=1)
    assert allowance.spent["nfe"] == 6 and allowance.spent["samples"] == 0
    assert allowance.fit_samples(8, {"nfe": 2}) == 2


def test_bad_input_is_one_line_and_stores_nothing():
    with pytest.raises(SamplescopeError, match="unknown diffusion rollout scheme 'nope'"):
        DiffusionTrainConfig(scheme="nope", samples=10)
    with pytest.raises(ConfigError, match="give a budget"):
        DiffusionTrainConfig()
    policy = StepShiftToy(MIXTURE, default_steps=6)
    with pytest.raises(ConfigError, match="needs batch_size >= 2"):
        list(train_diffusion(DiffusionTrainConfig(samples=10), {"batch_size": 1}, policy=policy, reward=CoordinateReward(),
                             runs_folder=training_home()))
    with pytest.raises(ConfigError, match="not differentiable"):
        list(train_diffusion(DiffusionTrainConfig(scheme="draft_k", samples=10), policy=policy,
                             reward=NoGradient(), runs_folder=training_home()))
    with pytest.raises(ConfigError, match="cannot be trained"):
        list(train_diffusion(DiffusionTrainConfig(policy="embedded:arith", samples=10), runs_folder=training_home()))
    assert not training_home().exists() or not any(training_home().iterdir())


def test_cli_lists_the_diffusion_schemes(capsys):
    from app.cli import main
    from engines.training.diffusion import SCHEMES

    assert main(["list", "schemes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list(SCHEMES)
    assert {"dpok", "draft", "draft_k", "draft_lv", "curated_retraining", "single_sde", "branch", "tree"} <= set(SCHEMES)
    assert all(row["paper"] and row["params"] for row in rows)


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# measured on the shared 2 cores, one thread, 64 evaluation samples (the reward's standard error there is
# at most 0.06): draft_k 0.066 -> 0.269, dpok 0.066 -> 0.98 after 480 samples
SCHEME_RUNS = {
    "draft_k": ({"steps": 10, "batch_size": 16, "truncate": 1}, 1e-4),
    "dpok": ({"steps": 10, "batch_size": 16, "kl_coef": 0.01, "baseline": "mean_std"}, 3e-4),
    # 0.153 -> 1.000 (its own chain: ODE outside the window), held-out read as 3: 0.14 -> 1.00
    "tree": ({"steps": 10, "batch_size": 16}, 3e-4),
}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", sorted(SCHEME_RUNS))
def test_fine_tuning_raises_the_digit_reward_on_the_digits_model(one_thread, scheme):
    params, lr = SCHEME_RUNS[scheme]
    config = DiffusionTrainConfig(name=scheme, scheme=scheme, reward="digit:3", learning_rate=lr, samples=320,
                                  eval_every=0, eval_size=64)
    events = list(train_diffusion(config, params, runs_folder=training_home()))
    evals = [e.metrics for e in events if e.kind == "eval"]
    before, after = evals[0], evals[-1]
    print(f"{scheme}: digit:3 reward {before['reward_mean']:.3f} -> {after['reward_mean']:.3f}; held-out check: still a "
          f"digit {before['heldout_digit']:.2f} -> {after['heldout_digit']:.2f}, read as 3 "
          f"{before['heldout_target']:.2f} -> {after['heldout_target']:.2f}")
    assert events[-1].metrics["samples"] == 320 and events[-1].metrics["updates"] == 20
    assert after["reward_mean"] > before["reward_mean"] + 0.1
    assert 0 <= after["heldout_digit"] <= 1 and "heldout_target" in after


@pytest.mark.slow
def test_cli_trains_digits_with_dpok_resumes_and_the_result_is_a_model_spec(capsys, one_thread):
    from app.cli import main
    from engines.models import load_model

    argv = ["train", "--name", "d", "--policy", "embedded:digits", "--strategy", "dpok", "--reward", "digit:3",
            "--set", "steps=4", "--set", "batch_size=4", "--train-set", "eval_size=8", "--budget", "samples=8", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 8 and result["updates"] == 2 and result["status"] == "budget"
    # 4 steps: 2 stochastic (the third has σ = 0.006, below the noise floor; the last lands on ᾱ = 1), each also
    # evaluated by the KL reference
    assert result["nfe"] == 8 * (4 + 2)
    model = load_model(result["model_spec"])
    assert model.sample_shape == (1, 8, 8)
    assert main(["train", "--name", "d", "--strategy", "dpok", "--resume", "--budget", "samples=12", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["samples"] == 12 and resumed["updates"] == 3
    assert main(["train", "--policy", "embedded:digits", "--strategy", "dpok", "--reward", "digit:3",
                 "--budget", "nfe=0"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.parametrize("flag", [["--compare", "dpok,draft_k"], ["--compare", ""], ["--rollouts-only"], ["--trainer", "trl"],
                                  ["--seeds", "2"], ["--prompts", "arith-train"], ["--eval-prompts", "arith-fresh"],
                                  ["--reward-control", "random"]])
def test_text_only_train_options_on_a_diffusion_run_are_one_line(capsys, flag):
    from app.cli import main

    code = main(["train", "--policy", "embedded:digits", "--strategy", "dpok", "--reward", "digit:3",
                 "--budget", "samples=8", *flag])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "only work on text policies" in err and len(err.splitlines()) == 1
    assert not training_home().exists() or not any(training_home().iterdir())
