"""Strategy comparisons at a matched sample budget (engines.training.compare) on the toy tree policy,
the curves' statistics on hand-made cells, and the CLI and the report on the embedded arith policy."""

from __future__ import annotations

import json
import threading

import pytest

from app.workflows.store import training_home
from engines.errors import ConfigError, SamplescopeError
from engines.sweep_stats import bootstrap_ci
from engines.training.compare import (
    CellDone,
    StrategyComparison,
    comparison_curves,
    comparison_dir,
    final_points,
    run_comparison,
    stored_cells,
)
from engines.training.loop import TrainConfig
from tests.training.test_estimators import _setup


def _plan(name="cmp", strategies=("grpo", "raft"), seeds=(0, 1), samples=24):
    config = TrainConfig(samples=samples, eval_every=1, eval_size=2, learning_rate=0.1)
    return StrategyComparison(name=name, strategies=strategies, seeds=seeds, config=config,
                              params={"prompts_per_batch": 2, "group_size": 4, "temperature": 1.0})


def _toy(strategy, seed):
    policy, pool, reward = _setup()
    return {"policy": policy, "reward": reward, "prompts": list(pool.tasks), "eval_tasks": list(pool.tasks)}


def _run(plan, cancel=None):
    return list(run_comparison(plan, comparison_dir(training_home(), plan.name), cancel=cancel, train_kwargs=_toy))


def _without_time(cell):
    return {k: v for k, v in cell.items() if k not in ("seconds", "policy_spec")}


def test_every_cell_spends_the_matched_budget_and_the_curves_have_seeds():
    plan = _plan()
    out = _run(plan)
    done = [e for e in out if isinstance(e, CellDone)]
    assert [(d.result["strategy"], d.result["seed"]) for d in done] == [("grpo", 0), ("raft", 0), ("grpo", 1), ("raft", 1)]
    cells = stored_cells(comparison_dir(training_home(), "cmp"))
    assert [_without_time(c) for c in cells] == [_without_time(d.result) for d in done]
    for cell in cells:
        assert cell["status"] == "budget" and cell["samples"] == 24  # 3 batches of 2 x 4: exactly the matched budget
        assert cell["evals"][0]["samples"] == 0 and cell["evals"][-1]["samples"] == 24
    curves = comparison_curves(cells)
    start = [p for p in curves if p["metric"] == "accuracy_t1" and p["samples"] == 0]
    assert {p["strategy"] for p in start} == {"grpo", "raft"} and all(p["seeds"] == 2 for p in start)
    # paired design: seed k of every strategy starts from the same weights and is evaluated on the same draws
    assert len({p["mean"] for p in start}) == 1
    for p in curves:
        assert p["ci_low"] <= p["mean"] <= p["ci_high"]
    finals = final_points(cells, 24)
    assert [f["strategy"] for f in finals] == ["grpo", "raft"]
    assert all(f["seeds"] == 2 and f["accuracy_t1"]["samples"] == 24 for f in finals)
    # RAFT keeps only its rewarded samples, GRPO every sample of the groups it draws
    assert finals[0]["kept_share"]["mean"] == 1.0 and finals[1]["kept_share"]["mean"] < 1.0


def test_a_cancelled_comparison_resumes_and_matches_the_uninterrupted_one():
    whole = _run(_plan("whole"))
    cancel = threading.Event()
    first = []
    for event in run_comparison(_plan("cut"), comparison_dir(training_home(), "cut"), cancel=cancel, train_kwargs=_toy):
        first.append(event)
        if isinstance(event, CellDone):
            cancel.set()  # the second cell stops at its next draw
    assert sum(isinstance(e, CellDone) for e in first) == 1
    rest = _run(_plan("cut"))
    finished = [e.result for e in rest if isinstance(e, CellDone)]
    assert [(c["strategy"], c["seed"]) for c in finished] == [("raft", 0), ("grpo", 1), ("raft", 1)]  # grpo-0 not redone
    expected = [_without_time(e.result) for e in whole if isinstance(e, CellDone)]
    assert [_without_time(c) for c in stored_cells(comparison_dir(training_home(), "cut"))] == expected


def test_bad_plans_get_one_line_and_another_plan_under_a_name_is_refused():
    with pytest.raises(SamplescopeError, match="unknown rollout strategy 'nope'"):
        _plan(strategies=("grpo", "nope"))
    with pytest.raises(ConfigError, match="samples budget"):
        StrategyComparison(name="x", strategies=("grpo",), seeds=(0,), config=TrainConfig(max_updates=2))
    with pytest.raises(ConfigError, match="distinct seeds"):
        _plan(seeds=())
    with pytest.raises(ConfigError, match="each strategy once"):
        _plan(strategies=("grpo", "grpo"))
    with pytest.raises(ConfigError, match="group_size must be >= 1"):
        StrategyComparison(name="x", strategies=("grpo",), seeds=(0,), config=TrainConfig(samples=8), params={"group_size": 0})
    assert not training_home().exists() or not any(training_home().iterdir())
    _run(_plan("taken", strategies=("grpo",), seeds=(0,), samples=8))
    with pytest.raises(ConfigError, match="exists with another plan"):
        _run(_plan("taken", strategies=("raft",), seeds=(0,), samples=8))


def test_curves_hold_each_seeds_latest_value_and_bootstrap_over_seeds():
    def cell(seed, evals, updates):
        return {"strategy": "s", "seed": seed, "evals": [{"samples": x, "accuracy_t1": a} for x, a in evals],
                "steps": [{"samples": x, "kept": k, "drawn": d, "kl": None} for x, k, d in updates]}

    cells = [cell(0, [(0, 0.2), (10, 0.6)], [(10, 5, 10), (20, 10, 10)]),
             cell(1, [(0, 0.4), (15, 0.8)], [(15, 0, 15)])]
    acc = {p["samples"]: p for p in comparison_curves(cells) if p["metric"] == "accuracy_t1"}
    assert sorted(acc) == [0, 10, 15]
    assert acc[10]["mean"] == pytest.approx((0.6 + 0.4) / 2)  # seed 1 has not measured again by 10 samples
    assert acc[15]["mean"] == pytest.approx((0.6 + 0.8) / 2)
    assert (acc[15]["ci_low"], acc[15]["ci_high"]) == bootstrap_ci([0.6, 0.8])
    kept = {p["samples"]: p for p in comparison_curves(cells) if p["metric"] == "kept_share"}
    assert kept[10]["mean"] == 0.5 and kept[10]["seeds"] == 1  # seed 1 had drawn nothing yet
    assert kept[20]["mean"] == pytest.approx((15 / 20 + 0.0) / 2)
    assert not [p for p in comparison_curves(cells) if p["metric"] == "kl"]  # no KL measured: no curve


@pytest.mark.model
def test_cli_compares_strategies_on_arith_and_the_report_holds_the_curves(capsys, tmp_path):
    from app.cli import main

    argv = ["train", "--compare", "grpo,raft", "--seeds", "2", "--name", "tiny", "--set", "group_size=2",
            "--set", "prompts_per_batch=2", "--set", "max_new_tokens=32", "--train-set", "eval_size=4",
            "--train-set", "eval_every=1", "--budget", "samples=8", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cells"] == 4 and result["done"] == 4 and [f["strategy"] for f in result["final"]] == ["grpo", "raft"]
    assert all(f["seeds"] == 2 for f in result["final"])
    assert main(argv) == 0  # again: every cell is stored, nothing reruns
    assert json.loads(capsys.readouterr().out)["ran"] == 0
    out = tmp_path / "report.html"
    assert main(["report", "compare:tiny", "--out", str(out)]) == 0
    page = out.read_text()
    assert "Strategies at a matched sample budget" in page and "Held-out accuracy, T=1" in page
    assert page.count('<div class="figure"') == 1 and ">grpo<" in page and ">raft<" in page
    assert main(["report", "compare:nothing-here", "--out", str(tmp_path / "x.html")]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--compare", ""], "at least one strategy"),
    (["--compare", " , "], "at least one strategy"),
    (["--seeds", "2"], "--seeds goes with --compare"),
    (["--rollouts-only", "--train-set", "learning_rate=0.1"], "--rollouts-only makes no update"),
])
def test_train_options_that_do_not_apply_are_one_line_and_store_nothing(capsys, argv, message):
    """An empty --compare once fell through to a plain training run; --seeds without --compare and
    --train-set with --rollouts-only were silently ignored."""
    from app.cli import main

    assert main(["train", "--budget", "samples=4", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not training_home().exists() or not any(training_home().iterdir())
