"""Every registered rollout strategy reaches the Train tab's forms and the CLI without a hand-kept list,
and the strategies added last train for real on the arith policy through the CLI."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from app.cli import main
from app.ui import forms
from engines.training import STRATEGIES


def test_train_tab_forms_cover_the_registry_and_their_defaults_build_configs():
    with gr.Blocks():
        built = forms.build_forms(list(STRATEGIES.items()), "grpo", "rl")
    assert [f.name for f in built] == list(STRATEGIES)
    values = [component.value for component in forms.all_inputs(built)]
    for name, cls in STRATEGIES.items():
        params = forms.params_for(built, name, values)
        assert cls.Config.from_dict(params) == cls.Config(), name


def test_cli_lists_every_strategy_and_train_points_there(capsys):
    assert main(["list", "strategies", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list(STRATEGIES)
    assert all(row["paper"] and row["params"] for row in rows)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "samplescope list strategies" in " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.model
@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("lspo", ["--set", "generation_prompts=2"]),
        ("d3s", ["--set", "token_keep_start=0.5"]),
        ("pf_ppo", ["--set", "calibration_prompts=2", "--reward", "arith_orm"]),  # learned reward, exact verifier for R^2
        ("eepo", []),
    ],
)
def test_new_strategies_train_the_arith_policy_from_the_cli(capsys, strategy, extra):
    argv = ["train", "--name", f"cli-{strategy}", "--strategy", strategy, "--set", "group_size=4", "--set", "prompts_per_batch=2",
            "--set", "max_new_tokens=40", "--train-set", "eval_every=0", "--budget", "samples=40", "--budget", "updates=2",
            "--json", *extra]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["updates"] == 2 and result["samples"] <= 40


@pytest.mark.model
def test_pf_ppo_on_arith_picks_the_filter_whose_arith_orm_rewards_best_explain_the_verifier():
    import torch

    from engines.training.base import Allowance, PromptPool
    from engines.training.policy import load_policy
    from engines.training.prompts import load_prompts
    from engines.training.rewards import training_reward
    from engines.training.strategies.pf_ppo import FILTERS
    from tests.training.test_selection_strategies import independent_filter, independent_r2, run

    policy = load_policy("embedded:arith")
    pool = PromptPool(tuple(load_prompts("arith-train")[:32]))
    strategy = STRATEGIES.get("pf_ppo")(STRATEGIES.get("pf_ppo").Config(
        prompts_per_batch=2, group_size=6, calibration_prompts=12, max_new_tokens=64))
    events, batch = run(strategy, policy, pool, training_reward("arith_orm"), Allowance(), 0)
    held = [e for e in events if e.kind == "group" and e.rule == "held out: filter calibration"]
    r2 = {}
    for rule in FILTERS:
        pairs = [(g.rewards[i], g.meta["true_scores"][i]) for g in held for i in g.meta["filter_kept"][rule]]
        for g in held:
            independent_filter(rule, g.rewards, g.meta["filter_kept"][rule])
        r2[rule] = independent_r2([p[0] for p in pairs], [p[1] for p in pairs])
    print("arith_orm vs math R^2 by filter:", {k: None if v is None else round(float(v), 3) for k, v in r2.items()})
    measured = {k: v for k, v in r2.items() if v is not None}
    assert measured, "the verifier's scores have no spread on these samples"
    chosen = held[0].meta["filter"]
    assert measured[chosen] == pytest.approx(max(measured.values()), abs=1e-9)
    assert len(batch) > 0 and torch.isfinite(torch.tensor(batch.advantages)).all()
