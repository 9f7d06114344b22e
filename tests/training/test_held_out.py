"""The held-out evaluation: accuracy over n samples per prompt and pass@k, the unbiased estimator of
Chen et al. 2021, checked against brute-force enumeration of every k-subset of the drawn samples."""

from __future__ import annotations

import itertools

import pytest

from engines.sweep_stats import pass_at_k
from engines.training.base import Rollout
from engines.training.loop import held_out
from engines.training.prompts import load_prompts
from engines.training.rewards import training_reward


class ScriptedPolicy:
    """Answers each prompt with the scripted texts in turn (right or wrong final answers), in draw order."""

    name, trainable = "scripted", False

    def __init__(self, texts: dict[str, list[str]]) -> None:
        self.texts = {p: iter(t) for p, t in texts.items()}

    def rollout(self, prompts, *, temperature, max_new_tokens, rng):
        return [Rollout(prompt_ids=(), completion_ids=(1,), logprobs=(0.0,), text=next(self.texts[p])) for p in prompts]


@pytest.mark.parametrize(("n", "c"), [(1, 0), (5, 0), (5, 2), (6, 6), (8, 3), (7, 1)])
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_right_sample(n, c):
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(n, c, n + 1)


def test_held_out_reports_accuracy_and_pass_at_k_of_the_drawn_samples():
    tasks = load_prompts("arith-fresh:medium:4")
    n = 8
    pattern = [[1, 0, 0, 0, 0, 0, 0, 0], [0] * 8, [1] * 8, [0, 1, 1, 0, 0, 1, 0, 0]]  # right samples per task
    texts = {
        t.prompt: [f"#### {t.answer}" if right else f"#### {int(t.answer) + 1}" for right in rights]
        for t, rights in zip(tasks, pattern, strict=True)
    }
    metrics = held_out(ScriptedPolicy(texts), tasks, training_reward("math"), temperature=1.0, max_new_tokens=8, seed=0, samples=n)
    assert metrics["accuracy"] == pytest.approx(sum(map(sum, pattern)) / (4 * n))
    assert sorted(k for k in metrics if k.startswith("pass@")) == sorted(f"pass@{k}" for k in (1, 2, 4, 8))
    for k in (1, 2, 4, 8):
        brute = [
            sum(any(s) for s in itertools.combinations(rights, k)) / len(list(itertools.combinations(rights, k)))
            for rights in pattern
        ]
        assert metrics[f"pass@{k}"] == pytest.approx(sum(brute) / 4, abs=1e-12)
        biased = sum(1 - (1 - sum(r) / n) ** k for r in pattern) / 4  # sampling with replacement: the wrong estimator
        if 1 < k < n:
            assert abs(metrics[f"pass@{k}"] - biased) > 1e-3
    assert metrics["pass@1"] == pytest.approx(metrics["accuracy"])


def test_one_sample_per_prompt_reports_accuracy_only():
    tasks = load_prompts("arith-fresh:medium:2")
    texts = {t.prompt: [f"#### {t.answer}"] for t in tasks}
    metrics = held_out(ScriptedPolicy(texts), tasks, training_reward("math"), temperature=1.0, max_new_tokens=8, seed=0)
    assert metrics == {"accuracy": 1.0}


def test_eval_events_carry_pass_at_k(tmp_path):
    from engines.training.loop import TrainConfig, train
    from engines.training.policy import load_policy

    config = TrainConfig.from_dict({
        "name": "passk", "samples": 16, "eval_every": 1, "eval_size": 3, "eval_samples": 4, "eval_greedy": False,
    })
    events = list(train(config, {"prompts_per_batch": 2, "group_size": 4, "max_new_tokens": 48},
                        policy=load_policy("embedded:arith"), prompts=load_prompts("arith-train:medium:8"), run_dir=tmp_path / "run"))
    evals = [e for e in events if e.kind == "eval"]
    assert len(evals) >= 2
    for event in evals:
        m = event.metrics
        assert m["samples_per_prompt"] == 4 and {"pass@1", "pass@2", "pass@4"} <= set(m)
        assert m["pass@1"] == pytest.approx(m["accuracy_t1"])
        assert m["pass@1"] <= m["pass@2"] <= m["pass@4"] <= 1
