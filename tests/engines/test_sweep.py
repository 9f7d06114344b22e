"""The sweep engine: cells equal the runs made one by one, engines round-robin, budgets kept, statistics."""

from __future__ import annotations

import pytest

from engines.errors import ConfigError
from engines.prompts import builtin_prompt_set
from engines.sweep import Arm, CellKey, SweepPlan, cell_seed, run_sweep
from engines.sweep_stats import bootstrap_ci, paired, points

TASKS = builtin_prompt_set("open").tasks[:6]
ARMS = (Arm("bon", "best_of_n", params={"max_new_tokens": 8}), Arm("mcts", "mcts", params={"max_new_tokens": 8}))
SIZE = {"best_of_n": "n", "mcts": "simulations"}


def _plan(**kw):
    values = {"arms": ARMS, "tasks": TASKS, "levels": (1, 2, 4), "models": ("toy:abc",), "evaluate": "length"}
    values.update(kw)
    return SweepPlan(**values)


def _alone(model: str, sampler: str, n: int, task, seed: int, evaluate: str = "length"):
    """The run one would make by hand: its pick's text, its evaluation, its cost without wall time."""
    from engines.rewards import build_reward
    from engines.runner import RunRequest, execute

    request = RunRequest.build(model=model, sampler=sampler, params={SIZE[sampler]: n, "max_new_tokens": 8}, task=task, seed=seed,
                               reward=task.meta["reward"])
    trace = execute(request)
    pick = trace.full_text(trace.done.picks[0])
    cost = {k: v for k, v in trace.cost.items() if k != "wall_seconds"}
    return pick, build_reward(evaluate).score(task, [pick])[0], cost, [trace.full_text(c) for c in trace.candidates]


def _seen(result):
    trace = result.trace
    cost = {k: v for k, v in trace.cost.items() if k != "wall_seconds"}
    return trace.full_text(trace.done.picks[0]), result.quality, cost, [trace.full_text(c) for c in trace.candidates]


def test_a_sweep_gives_the_same_cells_as_the_runs_made_one_by_one():
    plan = _plan()
    results = list(run_sweep(plan, workers=3))
    assert len(results) == 2 * 3 * 6 == len({r.key for r in results})
    by_name = {"bon": "best_of_n", "mcts": "mcts"}
    for result in results:
        key = result.key
        seed = 0 * 1_000_003 + 1_000 * key.prompt + int(key.level)
        assert result.request.seed == seed == cell_seed(0, key.prompt, key.level)
        assert _seen(result) == _alone("toy:abc", by_name[key.arm], int(key.level), TASKS[key.prompt], seed)
    # the same plan run again, with other thread counts, gives the same cells
    again = {r.key: _seen(r) for r in run_sweep(plan, workers=1)}
    assert again == {r.key: _seen(r) for r in results}
    # every arm runs from the same seed at a (prompt, level): a paired design
    seeds = {(r.key.prompt, r.key.level, r.key.arm): r.request.seed for r in results}
    assert all(seeds[(p, lv, "bon")] == seeds[(p, lv, "mcts")] for p, lv, _ in seeds)


def test_prompts_are_spread_round_robin_over_the_engines():
    plan = _plan(models=("toy:abc", "toy:binary"), levels=(2,))
    results = list(run_sweep(plan, workers=4))
    assert {r.key.prompt: r.request.model for r in results} == {p: ("toy:abc", "toy:binary")[p % 2] for p in range(6)}
    for result in results:
        alone = _alone(result.request.model, result.request.sampler, 2, TASKS[result.key.prompt], result.request.seed)
        assert _seen(result) == alone
    binary = [c for r in results if r.request.model == "toy:binary" for c in _seen(r)[3]]
    assert binary and all(set(text) <= {"0", "1"} for text in binary)


def test_skip_leaves_finished_cells_alone():
    plan = _plan(levels=(1, 2))
    every = plan.cells()
    done = set(every[:5])
    rest = list(run_sweep(plan, skip=done, workers=2))
    assert {r.key for r in rest} == set(every) - done


@pytest.mark.parametrize(("counter", "caps"), [("generated_tokens", (6, 15, 40)), ("reward_calls", (1, 3, 5)),
                                                ("model_calls", (1, 2, 4))])
def test_budgets_are_never_exceeded(counter, caps):
    arms = (Arm("bon", "best_of_n", params={"max_new_tokens": 8}), Arm("mcts", "mcts", params={"max_new_tokens": 8}),
            Arm("rejection", "rejection", params={"max_new_tokens": 8}))
    plan = _plan(arms=arms, axis="budget", counter=counter, levels=caps, size=16)
    results = list(run_sweep(plan, workers=3))
    assert len(results) == 3 * 3 * 6
    for result in results:
        assert result.cost[counter] <= result.key.level, (result.key, result.cost)
        assert result.request.budget.as_dict() == {counter: int(result.key.level)}
    assert any(r.status == "budget" for r in results)  # the caps bind


def test_a_diffusion_sweep_at_matched_nfe_keeps_the_budget():
    digits = builtin_prompt_set("digits")
    arms = (Arm("bon", "best_of_n", params={"steps": 10}), Arm("fk", "fk_steering", params={"steps": 10}))
    plan = SweepPlan(arms=arms, tasks=digits.tasks[:2], levels=(20, 40), axis="budget", counter="nfe", size=4,
                     set_model=digits.model, set_reward=digits.reward)
    results = list(run_sweep(plan, workers=2))
    assert len(results) == 8
    for result in results:
        assert result.cost["nfe"] <= result.key.level
        assert result.quality is not None and 0.0 <= result.quality <= 1.0
        assert result.request.reward == f"digit:{result.key.prompt}"


def test_bad_plans_fail_before_any_run():
    with pytest.raises(ConfigError, match="has no size knob"):
        _plan(arms=(Arm("cards", "cards"),))
    with pytest.raises(ConfigError, match="unknown budget counter"):
        _plan(axis="budget", counter="tokens")
    with pytest.raises(ConfigError, match="works on image"):
        _plan(arms=(Arm("fk", "fk_steering"),))
    with pytest.raises(ConfigError, match="n must be"):
        _plan(levels=(100_000,))


def test_sizes_below_a_samplers_minimum_use_its_fallback_or_are_left_out():
    knockout = Arm("ko", "knockout", reward="pairwise:length", params={"max_new_tokens": 8})
    plan = _plan(arms=(knockout,), levels=(1, 2))
    assert {k.level for k in plan.cells()} == {2.0}
    with_fallback = Arm("ko", "knockout", reward="pairwise:length", params={"max_new_tokens": 8},
                        fallback=Arm("ko1", "best_of_n", reward="length", params={"max_new_tokens": 8}))
    plan = _plan(arms=(with_fallback,), levels=(1, 2))
    assert plan.request(CellKey("ko", 1.0, 0)).sampler == "best_of_n"
    assert plan.request(CellKey("ko", 2.0, 0)).sampler == "knockout"


def test_a_cancelled_sweep_yields_no_cancelled_cells():
    import threading

    cancel = threading.Event()
    seen = []
    for result in run_sweep(_plan(levels=(1, 2, 4, 8)), workers=2, cancel=cancel):
        seen.append(result)
        if len(seen) == 3:
            cancel.set()
    assert 3 <= len(seen) < 48 and all(r.status != "cancelled" for r in seen)


def test_bootstrap_and_paired_statistics():
    low, high = bootstrap_ci([0.0, 1.0] * 20, seed=1)
    assert low < 0.5 < high and (low, high) == bootstrap_ci([0.0, 1.0] * 20, seed=1)
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    cells = [{"arm": "a", "level": 1, "prompt": p, "quality": 1.0 if p < 8 else 0.0, "steer": 2.0, "generated_tokens": 10}
             for p in range(10)]
    cells += [{"arm": "b", "level": 1, "prompt": p, "quality": 1.0 if p < 3 else 0.0, "generated_tokens": 20}
              for p in range(10)]
    (pa, pb) = points(cells)
    assert pa["quality"] == pytest.approx(0.8) and pa["ci_low"] <= 0.8 <= pa["ci_high"] and pa["gap"] == pytest.approx(1.2)
    assert pb["generated_tokens"] == 20 and pb["steer"] is None
    (row,) = paired(cells, "a", "b")
    assert row["mean_diff"] == pytest.approx(0.5) and (row["wins"], row["ties"], row["losses"]) == (5, 5, 0)
    assert 0.0 < row["ci_low"] <= 0.5 <= row["ci_high"]
