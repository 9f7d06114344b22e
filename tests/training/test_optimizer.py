"""The loop's optimiser option (engines/training/optim.py): ``sgd`` puts SGD with momentum on the
weights and keeps AdamW on the output gain, its step scales with the gradient (Adam's does not), its
state survives a checkpoint round trip, and a bad name is a one-line ConfigError."""

from __future__ import annotations

import copy

import pytest
import torch

from engines.errors import ConfigError
from engines.training.loop import TrainConfig
from engines.training.optim import SplitOptimizer, build_optimizer


class TwoGroupPolicy:
    """A weight matrix and an output gain, grouped as HFPolicy.parameter_groups groups them."""

    def __init__(self) -> None:
        self.weight = torch.nn.Parameter(torch.ones(3, 2))
        self.gain = torch.nn.Parameter(torch.ones(2))

    def parameters(self):
        return [self.weight, self.gain]

    def parameter_groups(self, learning_rate, gain_learning_rate=None):
        if gain_learning_rate is None:
            return [{"params": self.parameters(), "lr": learning_rate}]
        return [{"params": [self.weight], "lr": learning_rate}, {"params": [self.gain], "lr": gain_learning_rate}]


def _step(optimizer, policy, scale):
    optimizer.zero_grad()
    policy.weight.grad = torch.full_like(policy.weight, 0.01 * scale)
    policy.gain.grad = torch.full_like(policy.gain, 0.01 * scale)
    before = policy.weight.detach().clone(), policy.gain.detach().clone()
    optimizer.step()
    return (before[0] - policy.weight).abs().max().item(), (before[1] - policy.gain).abs().max().item()


def test_sgd_steps_the_weights_by_the_gradient_and_the_gain_with_adamw():
    moves = {}
    for scale in (1.0, 2.0):
        policy = TwoGroupPolicy()
        optimizer = build_optimizer(policy, kind="sgd", learning_rate=0.1, gain_learning_rate=0.2, momentum=0.9)
        assert isinstance(optimizer, SplitOptimizer)
        assert isinstance(optimizer.parts["weights"], torch.optim.SGD) and isinstance(optimizer.parts["gains"], torch.optim.AdamW)
        moves[scale] = _step(optimizer, policy, scale)
    assert moves[1.0][0] == pytest.approx(0.1 * 0.01, rel=1e-4) and moves[2.0][0] == pytest.approx(2 * moves[1.0][0], rel=1e-4)
    assert moves[1.0][1] == pytest.approx(0.2, rel=1e-3) and moves[2.0][1] == pytest.approx(moves[1.0][1], rel=1e-3)  # Adam: ~lr


def test_adamw_is_the_default_and_its_first_step_is_about_the_rate_whatever_the_gradient():
    assert TrainConfig(samples=1).optimizer == "adamw"
    for scale in (1.0, 10.0):
        policy = TwoGroupPolicy()
        optimizer = build_optimizer(policy, kind="adamw", learning_rate=1e-3, gain_learning_rate=0.2)
        assert isinstance(optimizer, torch.optim.AdamW) and [g["lr"] for g in optimizer.param_groups] == [1e-3, 0.2]
        assert _step(optimizer, policy, scale)[0] == pytest.approx(1e-3, rel=1e-3)


def test_sgd_state_round_trips_through_a_checkpoint():
    a, b = TwoGroupPolicy(), TwoGroupPolicy()
    opt_a = build_optimizer(a, kind="sgd", learning_rate=0.1, gain_learning_rate=0.2)
    for scale in (1.0, 3.0):
        _step(opt_a, a, scale)
    b.weight.data.copy_(a.weight.data)
    b.gain.data.copy_(a.gain.data)
    opt_b = build_optimizer(b, kind="sgd", learning_rate=0.1, gain_learning_rate=0.2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as through torch.save: no shared buffers
    _step(opt_a, a, 1.0)
    _step(opt_b, b, 1.0)  # momentum buffer and Adam moments carried over: the same step
    assert torch.equal(a.weight, b.weight) and torch.equal(a.gain, b.gain)


def test_without_a_gain_rate_sgd_trains_everything_at_the_learning_rate():
    policy = TwoGroupPolicy()
    optimizer = build_optimizer(policy, kind="sgd", learning_rate=0.1, gain_learning_rate=None)
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups[0]["params"]) == 2


def test_an_unknown_optimiser_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        TrainConfig(samples=1, optimizer="lion")
    assert "\n" not in str(err.value) and "adamw" in str(err.value)


def test_train_under_trl_refuses_the_sgd_option_in_one_line(capsys, tmp_path, monkeypatch):
    from app.cli import main

    monkeypatch.setenv("SAMPLESCOPE_HOME", str(tmp_path))
    code = main(["train", "--strategy", "grpo", "--trainer", "trl", "--train-set", "optimizer=sgd", "--budget", "updates=1"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "optimizer=sgd" in err and "\n" not in err
    assert not any(tmp_path.rglob("state.pt"))
