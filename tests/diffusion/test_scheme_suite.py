"""The behaviour every registered diffusion rollout scheme shares, run for each name in the registry.

A scheme registered later is picked up here without editing this file; one that needs more
than the plain toy settings says so in :data:`TOY_PARAMS`. Checked for each, on the
Gaussian-mixture toy (:class:`StepShiftToy`, r(x) = x): UI metadata and its paper cited in the
module docstring, same seed same batch (events and loss), the events' JSON round trip, a loss
with a gradient into the policy, an ``nfe`` budget never passed in the training loop, cancel, and
a bad config refused with one line.
"""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from app.workflows.store import training_home
from engines.errors import ConfigError
from engines.trace import Trace
from engines.training.diffusion import SCHEMES, build_scheme
from engines.training.diffusion.base import DiffusionAllowance, SchemeContext
from engines.training.diffusion.loop import DiffusionTrainConfig, train_diffusion
from tests.diffusion.conftest import CoordinateReward
from tests.diffusion.test_single_sde import events_and_result
from tests.diffusion.trainable_toys import StepShiftToy

NAMES = sorted(SCHEMES)
STEPS = 6
#: per scheme, what the plain toy settings (6 steps, 8 samples an update) need besides
TOY_PARAMS: dict[str, dict] = {
    "curated_retraining": {"round_size": 8, "choices": 2, "round_updates": 2},
}


def params(name: str) -> dict:
    return {"steps": STEPS, "batch_size": 8, **TOY_PARAMS.get(name, {})}


def one_batch(name: str, mixture, seed: int = 0):  # noqa: ANN001, ANN201
    policy = StepShiftToy(mixture, default_steps=STEPS)
    scheme = build_scheme(name, params(name))
    reward = CoordinateReward()
    scheme.check_inputs(policy, reward)
    reference = policy.frozen_copy() if scheme.needs_reference else None
    ctx = SchemeContext(policy=policy, reward=reward, budget=DiffusionAllowance(), rng=torch.Generator().manual_seed(seed),
                        reference=reference)
    events, (loss, metrics) = events_and_result(scheme.loss(ctx, scheme.config.batch_size))
    return policy, events, loss, metrics


@pytest.mark.parametrize("name", NAMES)
def test_config_carries_ui_metadata_and_the_module_cites_the_paper(name):
    cls = SCHEMES.get(name)
    config = cls.Config
    assert config.label and config.summary and config.paper
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert config.paper.split()[0].rstrip(",") in doc, "the module docstring names the paper's first author"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_batch_and_the_events_round_trip(name, mixture):
    policy, events, loss, _ = one_batch(name, mixture)
    _, again, loss_again, _ = one_batch(name, mixture)
    _, other, _, _ = one_batch(name, mixture, seed=1)
    trace = Trace(events)
    assert trace.to_list() == Trace(again).to_list() and float(loss.detach()) == float(loss_again.detach())
    assert trace.to_list() != Trace(other).to_list()
    assert Trace.from_json(trace.to_json()).to_list() == trace.to_list()
    assert any(e.kind == "group" for e in events) and any(e.kind == "score" for e in events)
    loss.backward()
    assert policy.theta.grad is not None and policy.theta.grad.abs().sum() > 0


def _run(name: str, mixture, run: str, *, cancel_after: int | None = None, **budget):  # noqa: ANN001, ANN202
    policy = StepShiftToy(mixture, default_steps=STEPS)
    config = DiffusionTrainConfig(name=f"{run}-{name}", scheme=name, learning_rate=0.01, eval_every=0, eval_size=8,
                                  **budget)
    cancel = threading.Event()
    events = []
    for event in train_diffusion(config, params(name), policy=policy, reward=CoordinateReward(), cancel=cancel,
                                 runs_folder=training_home()):
        events.append(event)
        if cancel_after is not None and event.kind == "update" and event.step == cancel_after:
            cancel.set()
    return events


@pytest.mark.parametrize("name", NAMES)
def test_an_nfe_budget_is_never_passed_and_cancel_stops_the_run(name, mixture):
    done = _run(name, mixture, "budget", nfe=300, max_updates=50)[-1]
    assert done.status == "budget" and 0 < done.metrics["nfe"] <= 300 and done.metrics["updates"] >= 1
    cancelled = _run(name, mixture, "cancel", cancel_after=1, max_updates=50)
    assert cancelled[-1].status == "cancelled" and cancelled[-1].metrics["updates"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_config_is_one_line(name):
    for bad in ({"batch_size": 0}, {"eta": -1.0}, {"no_such_setting": 1}):
        with pytest.raises(ConfigError) as info:
            build_scheme(name, bad)
        assert "\n" not in str(info.value)
