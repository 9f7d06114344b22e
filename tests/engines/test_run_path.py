"""One run path: every RunRequest is checked however it is made, the size rule lives in one place,
budgets are parsed one way, a run needs an explicit generator, and sweeps run through the runner."""

from __future__ import annotations

import math

import pytest
import torch

from engines.config import Config
from engines.errors import ConfigError, SamplescopeError
from engines.runner import RunRequest, parse_budget
from engines.samplers import SAMPLERS, build_sampler
from engines.task import Task
from engines.trace import Budget

GO = Task(prompt="go")


def _direct(**changes):
    values = {"model": "toy:abc", "reward": "length", "sampler": "best_of_n", "params": {"n": 3}, "task": GO}
    return RunRequest(**{**values, **changes})


# -- RunRequest checks every construction --------------------------------------------------------


def test_a_direct_request_equals_the_built_one():
    built = RunRequest.build(model="toy:abc", reward="length", params={"n": 3}, prompt="go")
    assert _direct() == built  # params become the full config, defaults filled in
    assert _direct().params == SAMPLERS.get("best_of_n").Config.from_dict({"n": 3}).as_dict()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": Task(prompt="  ")}, "the prompt is empty"),
        ({"task": "go"}, "must be a Task"),
        ({"sampler": "nope"}, "unknown sampler"),
        ({"params": {"n": 0}}, "n must be >= 1"),
        ({"params": {"beams": 2}}, "unknown parameter"),
        ({"params": [("n", 3)]}, "mapping"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": True}, "seed must be a non-negative integer"),
        ({"seed": 2**63}, "seed must be a non-negative integer"),
        ({"budget": {"generated_tokens": 5}}, "must be a Budget"),
        ({"model": ""}, "model is empty"),
        ({"reward": "a\x00b"}, "NUL"),
        ({"task": Task(prompt="go", answer="\ud800")}, "UTF-8"),
        ({"dtype": None}, "dtype is empty"),
    ],
)
def test_a_direct_request_is_checked_like_a_built_one(changes, message):
    with pytest.raises(SamplescopeError, match=message):  # ConfigError, or UnknownNameError for a name
        _direct(**changes)


# -- "n is the sampler's size": Config.with_size ---------------------------------------------------


def test_the_size_goes_to_the_samplers_size_field_whatever_its_name():
    smc, beams, bon = (SAMPLERS.get(name).Config for name in ("smc", "beam_search", "best_of_n"))
    assert smc.with_size({"max_new_tokens": 4}, 3) == {"max_new_tokens": 4, "particles": 3}
    assert smc.with_size({"n": 3}) == {"particles": 3}  # the API's params["n"]
    assert smc.with_size({"n": "3"}, "3") == {"particles": "3"}  # the CLI's strings stay strings
    assert beams.with_size({}, 5) == {"beams": 5}
    assert bon.with_size({"n": 4}) == {"n": 4} and bon.with_size({"n": 4}, 4) == {"n": 4}
    assert bon.with_size({"temperature": 0.5}) == {"temperature": 0.5}
    with pytest.raises(ConfigError, match="given twice"):
        smc.with_size({"particles": 2}, 3)
    with pytest.raises(ConfigError, match="given twice"):
        smc.with_size({"n": 2}, 3)
    with pytest.raises(ConfigError, match="'cards' has no size parameter"):
        SAMPLERS.get("cards").Config.with_size({}, 3, sampler="cards")
    assert issubclass(smc, Config)


def test_the_cli_the_api_and_sweeps_size_a_run_alike():
    from engines.prompts import builtin_prompt_set
    from engines.sweep import Arm, CellKey, SweepPlan

    cli = RunRequest.build(model="toy:abc", reward="length", sampler="smc", size=3, params_are_strings=True,
                           params={"max_new_tokens": "4"}, prompt="go")
    api = RunRequest.build(model="toy:abc", reward="length", sampler="smc", params={"n": 3, "max_new_tokens": 4}, prompt="go")
    assert cli.params == api.params and cli.params["particles"] == 3
    task = builtin_prompt_set("open").tasks[0]
    plan = SweepPlan(arms=(Arm("smc", "smc", params={"max_new_tokens": 4}),), tasks=(task,), levels=(3,),
                     models=("toy:abc",), evaluate="length")
    assert plan.request(CellKey("smc", 3.0, 0)).params == cli.params


# -- one budget parser ----------------------------------------------------------------------------


def test_budgets_from_the_cli_and_the_api_parse_alike():
    assert parse_budget(None) == Budget()
    assert parse_budget({"generated_tokens": "12", "wall_seconds": "1.5"}) == Budget(generated_tokens=12, wall_seconds=1.5)
    assert parse_budget({"generated_tokens": 12.0, "nfe": 3}) == Budget(generated_tokens=12, nfe=3)  # JSON's 12.0
    assert isinstance(parse_budget({"generated_tokens": 12.0}).generated_tokens, int)
    for bad, message in [({"generated_tokens": 4.5}, "whole number"), ({"generated_tokens": "4.5"}, "whole number"),
                         ({"generated_tokens": True}, "whole number"), ({"generated_tokens": "lots"}, "whole number"),
                         ({"generated_tokens": [3]}, "whole number"), ({"generated_tokens": -1}, ">= 0"),
                         ({"wall_seconds": math.inf}, ">= 0"), ({"wall_seconds": "nan"}, ">= 0"),
                         ({"tokens": 3}, "unknown budget counter"), ([("nfe", 3)], "mapping")]:
        with pytest.raises(ConfigError, match=message):
            parse_budget(bad)


# -- a run needs an explicit generator -------------------------------------------------------------


def test_a_run_without_a_generator_is_an_error_not_seed_zero():
    from engines.models import load_model
    from engines.rewards import build_reward

    model, reward = load_model("toy:abc"), build_reward("length")
    sampler = build_sampler("best_of_n", {"n": 2, "max_new_tokens": 2})
    for rng in (None, 0, "seed"):
        with pytest.raises(ConfigError, match="needs rng"):
            sampler.run(GO, model, reward, rng=rng)
    events = list(sampler.run(GO, model, reward, rng=torch.Generator().manual_seed(0)))
    assert events[-1].kind == "done"


# -- sweeps run through the runner ---------------------------------------------------------------


def test_a_sweep_checks_the_context_as_a_run_does(tiny_lm_dir):
    from engines.runner import execute
    from engines.sweep import Arm, SweepPlan, run_sweep

    long = Task(prompt="x" * 600, chat=False, meta={"reward": "length"})  # 600 tokens, context 512
    plan = SweepPlan(arms=(Arm("bon", "best_of_n", params={"max_new_tokens": 2}),), tasks=(long,), levels=(1,),
                     models=(f"hf:{tiny_lm_dir}",), evaluate="length")
    request = plan.request(plan.cells()[0])
    with pytest.raises(ConfigError, match="context"):
        execute(request)
    with pytest.raises(ConfigError, match="context"):
        list(run_sweep(plan, workers=1))
