"""The shipped ZIP-RC joint head on the reasoning lab: its card's numbers, its laws, its metering.

The numbers come from ``engines/assets/arith/ziprc/ziprc.json``, which
``scripts/train_ziprc_arith.py`` writes next to the weights and renders into the model card.
"""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import roc_auc_score

from engines.models import load_model
from engines.models.arith import ASSETS, load_hf, sample_completions
from engines.samplers import build_sampler
from engines.samplers.zip_rc import HEAD_DIR, head_joints, load_head
from engines.tasks.arith import generate_problems, is_correct
from engines.trace import collect

SHIPPED = json.loads((HEAD_DIR / "ziprc.json").read_text())


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_head_is_small_its_card_matches_and_its_laws_are_distributions() -> None:
    assert (HEAD_DIR / "model.safetensors").stat().st_size < 8_000_000
    metrics = SHIPPED["metrics"]
    assert not metrics["quick"], "the shipped head comes from the full recipe"
    card = (ASSETS / "MODEL_CARD.md").read_text()
    assert f"{metrics['eval']['reward_auroc']:.3f}" in card and f"{metrics['eval']['length_mae']:.2f}" in card
    model, tokenizer, bins = load_head()
    assert len(bins["length_values"]) == len(bins["length_edges"]) - 1
    assert model.config.num_labels == len(bins["reward_values"]) * len(bins["length_values"])
    rows = [tokenizer("Q: 3+4*5\n" + text, add_special_tokens=False)["input_ids"] for text in ("", "4*5=20\n")]
    joints = head_joints(model, tokenizer, bins, rows)
    assert joints.shape == (2, 2, len(bins["length_values"]))
    assert torch.allclose(joints.sum((1, 2)), torch.ones(2, dtype=joints.dtype))


def test_reward_prediction_separates_fresh_samples() -> None:
    """Re-measured on fresh seeded samples at the prompt's newline and after the first line."""
    policy, tokenizer = load_hf()
    model, _, bins = load_head()
    problems = generate_problems(4242, "medium", 60)
    gen = torch.Generator().manual_seed(5)
    completions = sample_completions(policy, tokenizer, [p.prompt for p in problems], generator=gen, max_new_tokens=96)
    rows = [tokenizer(p.prompt + c.split("\n")[0] + "\n", add_special_tokens=False)["input_ids"]
            for p, c in zip(problems, completions, strict=True)]
    p_right = head_joints(model, tokenizer, bins, rows)[:, 1].sum(-1).numpy()
    right = [is_correct(c, p.answer) for p, c in zip(problems, completions, strict=True)]
    assert 0 < sum(right) < len(right)
    assert roc_auc_score(right, p_right) > 0.65


def test_zip_rc_runs_on_the_arith_policy_and_meters_the_head() -> None:
    from engines.prompts import builtin_prompt_set
    from engines.rewards import build_reward

    task = builtin_prompt_set("arith").tasks[0]
    cfg = {"samples": 6, "width": 3, "interval": 8, "max_new_tokens": 80, "compute_cost": 0.05, "latency_cost": 0.05}
    trace = collect(build_sampler("zip_rc", cfg).run(task, load_model("embedded:arith"), build_reward("math"),
                                                    rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok" and trace.done.picks
    decisions = trace.done.metrics["decisions"]
    predicted = 1 + sum(len(d["live"]) for d in decisions)  # the prompt, then every live prefix at a decision
    scored = sum(1 for e in trace.events if e.kind == "score")
    assert trace.done.cost["reward_calls"] == predicted + scored
    assert sum(n.tokens for i, n in trace.nodes.items() if i != "root") == trace.done.cost["generated_tokens"]
    live = [n for n in trace.nodes.values() if n.parent is not None and not n.final]
    assert live and all(0 <= n.meta["E[reward]"] <= 1 and n.meta["E[remaining tokens]"] >= 1 for n in live)


def test_a_reward_call_budget_stops_the_head_and_every_token_is_still_traced() -> None:
    from engines.prompts import builtin_prompt_set
    from engines.rewards import build_reward
    from engines.trace import Budget

    task = builtin_prompt_set("arith").tasks[1]
    cfg = {"samples": 8, "width": 4, "interval": 4, "max_new_tokens": 80}
    trace = collect(build_sampler("zip_rc", cfg).run(task, load_model("embedded:arith"), build_reward("math"),
                                                    budget=Budget(reward_calls=6), rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "budget" and trace.done.cost["reward_calls"] <= 6
    assert sum(n.tokens for i, n in trace.nodes.items() if i != "root") == trace.done.cost["generated_tokens"] > 0


def test_a_cancel_during_generation_stops_before_the_head_and_the_tokens_are_traced() -> None:
    """The UI may set the flag while the model generates: the head's next read stops the run,
    and the segments just generated are still in the trace."""
    import threading

    from engines.prompts import builtin_prompt_set
    from engines.rewards import build_reward

    cancel = threading.Event()

    class CancelWhileGenerating:
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def sample(self, *args, **kwargs):
            out = self.model.sample(*args, **kwargs)
            cancel.set()
            return out

    task = builtin_prompt_set("arith").tasks[2]
    model = CancelWhileGenerating(load_model("embedded:arith"))
    trace = collect(build_sampler("zip_rc", {"samples": 4, "interval": 4}).run(
        task, model, build_reward("math"), rng=torch.Generator().manual_seed(0), cancel=cancel))
    assert trace.done.status == "cancelled" and trace.done.cost["reward_calls"] == 1  # the prompt's read only
    assert sum(n.tokens for i, n in trace.nodes.items() if i != "root") == trace.done.cost["generated_tokens"] > 0
