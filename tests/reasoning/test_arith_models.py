"""The shipped arith policy and reward models: offline loading, tokenizer, accuracy band, AUROC.

The numbers checked here come from ``engines/assets/arith/metrics.json``, which
``scripts/train_arith.py`` writes next to the weights and renders into the
model card; the tests re-measure them on fresh seeded samples.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from engines.errors import ConfigError
from engines.models.arith import ASSETS, CHARS, accuracy_band, build_tokenizer, load_hf, sample_completions
from engines.rewards import build_reward
from engines.rewards.arith import ORM_DIR, PRM_DIR
from engines.task import Task
from engines.tasks import TASK_SETS
from engines.tasks.arith import eval_problems, generate_problems, is_correct, planted_solution, split_steps
from engines.trace import Cost

METRICS = json.loads((ASSETS / "metrics.json").read_text())


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def policy():
    return load_hf()


def test_assets_are_small_and_complete() -> None:
    for folder in ("policy", "orm", "prm"):
        files = {p.name for p in (ASSETS / folder).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
        assert (ASSETS / folder / "model.safetensors").stat().st_size < 8_000_000
    assert not METRICS["quick"], "the shipped assets come from the full recipe"
    card = (ASSETS / "MODEL_CARD.md").read_text()
    assert f"{METRICS['orm']['auroc']:.3f}" in card


def test_tokenizer_round_trip(policy) -> None:
    _, tokenizer = policy
    fresh = build_tokenizer()
    assert tokenizer.get_vocab() == fresh.get_vocab()
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<eos>", "<pad>")
    for problem in generate_problems(5, "hard", 50):
        text = problem.prompt + problem.solution()
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == text
    assert tokenizer(CHARS, add_special_tokens=False)["input_ids"] == list(range(3, 3 + len(CHARS)))


def test_models_load_offline_from_the_repo(policy) -> None:
    model, _ = policy
    assert type(model).__name__ == "LlamaForCausalLM"
    orm, _ = load_hf(ORM_DIR, kind="sequence")
    prm, _ = load_hf(PRM_DIR, kind="token")
    assert type(orm).__name__ == "LlamaForSequenceClassification" and orm.config.num_labels == 1
    assert type(prm).__name__ == "LlamaForTokenClassification" and prm.config.num_labels == 1
    assert load_hf() is policy  # once per process


def test_sampled_accuracy_is_within_the_model_card_band(policy) -> None:
    model, tokenizer = policy
    stated = METRICS["accuracy"]["arith"]
    assert 0.25 <= stated["sampled"] <= 0.60, "the default level should leave search room to help"
    problems = eval_problems("arith")
    completions = sample_completions(
        model, tokenizer, [p.prompt for p in problems], temperature=1.0, generator=torch.Generator().manual_seed(1234)
    )
    measured = sum(is_correct(c, p.answer) for c, p in zip(completions, problems, strict=True)) / len(problems)
    low, high = accuracy_band(stated["sampled"], len(problems), n_ref=stated["sampled_n"])
    assert low <= measured <= high, f"T=1 accuracy {measured:.3f} outside the card's band [{low:.3f}, {high:.3f}]"


def test_greedy_accuracy_matches_the_card(policy) -> None:
    model, tokenizer = policy
    problems = eval_problems("arith")
    completions = sample_completions(model, tokenizer, [p.prompt for p in problems], temperature=0)
    measured = sum(is_correct(c, p.answer) for c, p in zip(completions, problems, strict=True)) / len(problems)
    # greedy decoding is deterministic; allow a few flips from float differences across CPUs
    assert abs(measured - METRICS["accuracy"]["arith"]["greedy"]) <= 0.03


def _samples(policy, set_name: str, n_tasks: int, per_task: int, seed: int):
    model, tokenizer = policy
    tasks = TASK_SETS.get(set_name).tasks()[:n_tasks]
    prompts = [t.prompt for t in tasks for _ in range(per_task)]
    completions = sample_completions(
        model, tokenizer, prompts, temperature=1.0, generator=torch.Generator().manual_seed(seed)
    )
    return [(t, completions[i * per_task : (i + 1) * per_task]) for i, t in enumerate(tasks)]


def test_learned_outcome_model_separates_right_from_wrong(policy) -> None:
    reward = build_reward("arith_orm")
    usage = Cost()
    scores, labels = [], []
    for set_name in ("arith", "arith-hard"):
        for task, completions in _samples(policy, set_name, 100, 2, seed=99):
            scores += reward.score(task, completions, usage=usage)
            labels += [int(is_correct(c, task.answer)) for c in completions]
    assert 0 < sum(labels) < len(labels)
    assert roc_auc_score(labels, scores) >= 0.8
    assert usage.reward_tokens > 10 * len(labels)


def test_exact_process_reward_flags_a_planted_wrong_step() -> None:
    reward = build_reward("arith_steps")
    for i, (task, problem) in enumerate(zip(TASK_SETS.get("arith").tasks()[:60], eval_problems("arith"), strict=False)):
        reference = [*problem.steps(), f"#### {problem.answer}"]
        k = i % len(problem.ops)
        planted = planted_solution(problem, k, 1 if i % 2 else -1)
        # steps arrive as generated, with their newlines
        good, bad = reward.score_steps(task, [[s + "\n" for s in reference], [s + "\n" for s in planted]])
        assert good == [1.0] * len(reference)
        assert bad == [1.0] * k + [0.0] * (len(reference) - k)


def test_learned_process_model_beats_the_majority_label(policy) -> None:
    reward = build_reward("arith_prm")
    usage = Cost()
    probs, labels = [], []
    for set_name in ("arith", "arith-hard"):
        for task, completions in _samples(policy, set_name, 100, 1, seed=77):
            steps = split_steps(completions[0])
            if not steps:
                continue
            probs += reward.score_steps(task, [steps], usage=usage)[0]
            labels += build_reward("arith_steps").score_steps(task, [steps])[0]
    assert len(probs) == len(labels) > 300 and all(0.0 <= p <= 1.0 for p in probs)
    accuracy = sum((p >= 0.5) == (y == 1.0) for p, y in zip(probs, labels, strict=True)) / len(labels)
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)
    assert accuracy >= majority + 0.05, f"step accuracy {accuracy:.3f} vs majority label {majority:.3f}"
    assert abs(accuracy - METRICS["prm"]["step_accuracy"]) <= 0.06
    assert usage.reward_tokens > 0


def test_exact_step_reward_edge_cases() -> None:
    reward = build_reward("arith_steps")
    task = TASK_SETS.get("arith").tasks()[0]  # Q: 11+10*6
    assert reward.score_steps(task, [[""], [], ["10*6=60\n", "\n", "11+60=71\n", "#### 71"]]) == [
        [1.0],  # the empty prefix is on track (what CARDS scores first)
        [],
        [1.0, 1.0, 1.0, 1.0],  # an empty step keeps the score so far
    ]
    assert reward.score_steps(task, [["10*6=60\n11+60=71\n"], ["10*6=60\n11+60=70\n", "#### 70"]]) == [[1.0], [0.0, 0.0]]
    with pytest.raises(ConfigError):
        reward.check_task(Task(prompt="Write a poem."))


def test_outcome_model_probability_view_and_errors(policy) -> None:
    task = TASK_SETS.get("arith").tasks()[4]
    completions = [eval_problems("arith")[4].solution(), "9*9=80\n12+80=92\n#### 92", ""]
    logits = build_reward("arith_orm").score(task, completions)
    probs = build_reward("arith_orm:prob").score(task, completions)
    assert probs == pytest.approx([1 / (1 + math.exp(-x)) for x in logits], abs=1e-6)
    assert all(0.0 <= p <= 1.0 for p in probs)
    with pytest.raises(ConfigError):
        build_reward("arith_orm:softmax")


def test_embedded_arith_through_the_project_text_model_and_a_sampler() -> None:
    from engines.models import load_model
    from engines.models.hf import TransformersTextModel
    from engines.samplers import build_sampler
    from engines.trace import collect

    model = load_model("embedded:arith")
    assert isinstance(model, TransformersTextModel)
    task = TASK_SETS.get("arith").tasks()[0]
    _, tokenizer = load_hf()
    assert model.encode_task(task) == tokenizer(task.prompt, add_special_tokens=False)["input_ids"]
    sampler = build_sampler("best_of_n", {"n": 8, "max_new_tokens": 80})
    trace = collect(sampler.run(task, model, build_reward("math"), rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok" and len(trace.candidates) == 8
    texts = [trace.full_text(c) for c in trace.candidates]
    assert all(t and set(t) <= set(CHARS) for t in texts)
    # the pick is right whenever any candidate is (the exact verifier as the reward)
    assert (trace.reward(trace.selected[0]) == 1.0) == any(is_correct(t, task.answer) for t in texts)
