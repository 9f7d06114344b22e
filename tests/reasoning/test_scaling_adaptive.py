"""bench scaling --part adaptive: every arm is a valid run at every size, and runs the documented config."""

from __future__ import annotations

import pytest

from bench.scaling_adaptive import METHODS, SIZE_PARAMS, arms


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16, 32])
def test_every_arm_is_a_valid_run_at_every_size(k: int) -> None:
    from engines.prompts import builtin_prompt_set
    from engines.samplers import build_sampler
    from engines.sweep import SweepPlan

    plan = SweepPlan(arms=arms(), tasks=tuple(builtin_prompt_set("arith").tasks[:1]), levels=(k,),
                     models=("embedded:arith",), evaluate="math")
    cells = list(plan.cells())
    assert {c.arm for c in cells} == set(METHODS)
    for key in cells:
        request = plan.request(key)
        sampler, spec, params = METHODS[key.arm]
        assert (request.sampler, request.reward) == (sampler, spec)
        assert all(request.params[name] == value for name, value in params.items())
        sized = {name: max(1, int(k * factor)) for name, factor in SIZE_PARAMS[sampler].items()}
        assert all(request.params[name] == value for name, value in sized.items())
        build_sampler(request.sampler, request.params)  # the config validates
