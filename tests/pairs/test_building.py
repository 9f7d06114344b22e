"""Building training pairs through the workflow and the CLI: storage, the rules end to end, bad input."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.workflows.pair_building import PairPlan, build_pairs, plan_from_inputs
from engines.pairs import PairError
from engines.pairs.grid import CELLS
from engines.task import Task
from storage import Database

#: a graded reward on the toy's texts (a, aa, c, b each add)
GRADED = "1*regex:a + 1*regex:aa + 0.5*regex:c + 0.3*regex:b"
TASKS = (Task(prompt="toy one"), Task(prompt="toy two"), Task(prompt="toy three"))


def _db(tmp_path):
    return Database.open(f"sqlite:///{tmp_path / 'pairs.db'}")


def _counts(db) -> dict[str, int]:
    return db.check().counts


def test_the_full_grid_is_stored_as_comparisons_named_by_the_rule(tmp_path):
    db = _db(tmp_path)
    plan = PairPlan(model="toy:abc", reward=GRADED, rule="grid:all", tasks=TASKS, n=12, seed=1)
    result = build_pairs(plan, db=db, out=tmp_path / "prefs.jsonl")
    assert len(result.run_ids) == 3
    assert result.pairs and all(p.chosen_reward > p.rejected_reward for p in result.pairs)
    assert {p.rule for p in result.pairs} <= {f"grid:{hi}/{lo}" for hi, lo in CELLS}
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert len(rows) == len(result.kept) and set(rows[0]) >= {"prompt", "chosen", "rejected"}
    from sqlalchemy import select

    from storage.models import Comparison

    strategies = db.read(lambda s: s.scalars(select(Comparison.strategy)).all())
    assert strategies and set(strategies) == {"grid:all"}
    assert len(strategies) == len(set(result.comparison_ids))


def test_temporal_pairs_reject_from_the_earlier_model(tmp_path):
    plan = PairPlan(model="toy:abc", reward=GRADED, rule="temporal", earlier_model="toy:ab2", tasks=TASKS, n=6)
    db = _db(tmp_path)
    result = build_pairs(plan, db=db)
    assert len(result.run_ids) == 6  # a run per model per prompt
    for entry, pair in ((e, p) for e in result.prompts for p in e.pairs):
        assert entry.rewards[pair.chosen] > entry.earlier[1][pair.rejected]
        assert entry.earlier[1][pair.rejected] == min(entry.earlier[1])
    assert result.comparison_ids


def test_mcpo_and_strength_filter_through_the_workflow():
    plan = PairPlan(model="toy:abc", reward=GRADED, rule="mcpo", tasks=TASKS, n=12, beta=1.0,
                    filter="strength", readings=("1*regex:a + 0.5*regex:c", "1*regex:aa + 0.3*regex:b"))
    result = build_pairs(plan)
    assert result.pairs
    for pair in result.pairs:
        assert pair.kept == (pair.statistic > 0)


@pytest.mark.parametrize(("options", "message"), [
    ({"tasks": ()}, "prompt set is empty"),
    ({"n": 1}, "N must be"),
    ({"rule": "best_guess"}, "unknown pair rule"),
    ({"rule": "grid:min/max"}, "above"),
    ({"filter": "upo", "readings": ("length",)}, "at least two rewards"),
    ({"rule": "temporal"}, "earlier model"),
    ({"rule": "acecoder"}, "arithmetic prompt"),
])
def test_plans_refuse_bad_input(options, message):
    base = {"model": "toy:abc", "reward": "length", "rule": "max_min", "tasks": TASKS}
    with pytest.raises(PairError, match=message):
        PairPlan(**{**base, **options})


@pytest.mark.parametrize("args", [
    ["--prompt", "toy", "--model", "toy:abc", "--reward", "no_such_reward", "--rule", "max_min"],
    ["--prompt", "   ", "--model", "toy:abc", "--reward", "length", "--rule", "max_min"],
    ["--prompt", "toy", "--model", "toy:abc", "--reward", "length", "--rule", "max_min", "--n", "1"],
    ["--prompt", "toy", "--model", "toy:abc", "--reward", "length", "--rule", "max_min", "--filter", "upo",
     "--readings", "length,no_such_reward"],
    ["--prompt", "toy", "--model", "toy:abc", "--reward", "length", "--rule", "max_min", "--beta", "0.5"],
    ["--prompt", "toy", "--model", "toy:abc", "--reward", "length", "--rule", "max_min", "--earlier", "toy:abc"],
    ["--prompt", "toy", "--model", "toy:abc", "--reward", "length", "--rule", "max_min", "--out", "/no/such/folder/p.jsonl"],
])
def test_the_cli_says_one_line_and_stores_nothing(tmp_path, capsys, args):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    code = main(["pairs", *args, "--db", url])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("samplescope: error:")
    counts = Database.open(url).check().counts
    assert counts.get("runs", 0) == 0 and counts.get("comparisons", 0) == 0


def test_the_cli_builds_and_stores(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    code = main(["pairs", "--prompt", "toy a", "--prompt", "toy b", "--model", "toy:abc", "--reward", GRADED,
                 "--rule", "sweet_spot", "--n", "8", "--db", url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["rule"] == "grid:max/mu-2sigma" and len(out["runs"]) == 2
    assert Database.open(url).check().counts["comparisons"] == len(out["comparisons"]) >= 1


def test_plan_from_a_builtin_set_takes_its_model_and_reward():
    plan = plan_from_inputs(model=None, reward=None, rule="acecoder", prompt_set="arith", limit=2)
    assert plan.model == "embedded:arith" and plan.reward == "math" and len(plan.tasks) == 2
    with pytest.raises(PairError, match="limit"):
        plan_from_inputs(model=None, reward=None, rule="acecoder", prompt_set="arith", limit=0)


def test_acecoder_pairs_on_arith_come_from_the_exact_checks():
    from engines.pairs.rules import arith_pass_rate

    plan = plan_from_inputs(model=None, reward=None, rule="acecoder", prompt_set="arith", limit=6, n=16,
                            max_new_tokens=48)
    result = build_pairs(plan)
    for entry in result.prompts:
        rates = [arith_pass_rate(entry.task.prompt, t) for t in entry.texts]
        for pair in entry.pairs:
            assert rates[pair.chosen] >= 0.8 and rates[pair.chosen] - rates[pair.rejected] >= 0.4 - 1e-9
            assert rates[pair.rejected] > 0
    assert result.pairs  # the arith policy solves some problems and half-solves others


def test_stored_pairs_must_name_stored_candidates_of_one_prompt(tmp_path):
    from storage.errors import InvalidInput
    from storage.pairs import store_built_pairs

    db = _db(tmp_path)
    plan = PairPlan(model="toy:abc", reward=GRADED, rule="max_min", tasks=TASKS[:2], n=6)
    result = build_pairs(plan, db=db)
    run_a, run_b = result.run_ids
    node_a, node_b = result.prompts[0].node_ids[0], result.prompts[1].node_ids[0]
    before = db.check().counts["comparisons"]
    with pytest.raises(InvalidInput, match="same prompt"):
        db.write(lambda s: store_built_pairs(s, [((run_a, node_a), (run_b, node_b))], strategy="max_min"))
    with pytest.raises(InvalidInput, match="no stored candidate"):
        db.write(lambda s: store_built_pairs(s, [((run_a, node_a), (run_a, "n999"))], strategy="max_min"))
    assert db.check().counts["comparisons"] == before
