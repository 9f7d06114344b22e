"""Evaluation of the reasoning lab's models and the model card rendered from it.

``scripts/train_arith.py`` calls the ``evaluate_*`` functions, stores what they return in
``metrics.json`` and renders it with :func:`render_card` into ``MODEL_CARD.md``; the tests
read the same ``metrics.json``, so card and tests never disagree.

Two views of a learned outcome reward are reported, because they answer different questions:
the pooled AUROC against the verifier over many problems (partly a measure of how well the
model predicts which problems are hard) and the within-problem AUROC and best-of-N pick over
samples of one problem (all that best-of-N selection can use).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from sklearn.metrics import roc_auc_score

from engines.models.arith import accuracy_band, sample_completions
from engines.tasks.arith import TASK_SET_LEVELS, eval_problems, is_correct, planted_solution
from scripts.arith_data import orm_scores, policy_logprobs, prm_step_predictions


def evaluate_policy(model, tokenizer, samples: int, max_new_tokens: int, generator) -> dict[str, dict]:
    """Greedy and T=1 accuracy on the 200 problems of every task set."""
    out = {}
    for set_name, (level, _) in TASK_SET_LEVELS.items():
        problems = eval_problems(set_name)
        prompts = [p.prompt for p in problems]
        greedy = sample_completions(model, tokenizer, prompts, temperature=0, max_new_tokens=max_new_tokens)
        sampled = sample_completions(
            model, tokenizer, [p for p in prompts for _ in range(samples)], generator=generator, max_new_tokens=max_new_tokens
        )
        hits = [is_correct(c, problems[i // samples].answer) for i, c in enumerate(sampled)]
        out[set_name] = {
            "level": level,
            "problems": len(problems),
            "greedy": statistics.fmean(is_correct(c, p.answer) for c, p in zip(greedy, problems, strict=True)),
            "sampled": statistics.fmean(hits),
            "sampled_n": len(hits),
        }
    return out


def grouped_ranking(scores: list[float], data: list[dict], per_group: int) -> dict[str, float]:
    """Within-problem AUROC (mean over problems with right and wrong samples) and the accuracy of
    picking each problem's highest-scored sample, against a random pick and the oracle."""
    aucs, picked, oracle = [], [], []
    for start in range(0, len(data), per_group):
        labels = [int(d["correct"]) for d in data[start : start + per_group]]
        values = scores[start : start + per_group]
        if 0 < sum(labels) < len(labels):
            aucs.append(roc_auc_score(labels, values))
        picked.append(labels[max(range(len(values)), key=values.__getitem__)])
        oracle.append(int(any(labels)))
    return {
        "within_auroc": statistics.fmean(aucs) if aucs else float("nan"),
        "mixed_problems": len(aucs),
        "best_of_n": statistics.fmean(picked),
        "random_pick": statistics.fmean(int(d["correct"]) for d in data),
        "oracle": statistics.fmean(oracle),
    }


def planted(problems, tokenizer, orm, prm) -> dict[str, float]:
    """On reference solutions with one planted wrong step (result off by 1, later steps consistent
    with it): how often the ORM scores the reference above the planted one, and how often the PRM
    scores the planted step below 0.5 while scoring the true step at least 0.5."""
    pairs = []
    for i, problem in enumerate(problems):
        k = i % len(problem.ops)
        good = [*problem.steps(), f"#### {problem.answer}"]
        bad = planted_solution(problem, k, 1 if i % 2 else -1)
        pairs.append((problem, k, good, bad))
    rows = [
        {"problem": p, "completion": "\n".join(s), "steps": s, "step_labels": [True] * len(s), "correct": True}
        for p, _, good, bad in pairs
        for s in (good, bad)
    ]
    orm_values = orm_scores(orm, tokenizer, rows)
    step_probs, _ = prm_step_predictions(prm, tokenizer, rows)
    orm_wins, prm_flags, cursor = 0, 0, 0
    for j, (_, k, good, bad) in enumerate(pairs):
        orm_wins += int(orm_values[2 * j] > orm_values[2 * j + 1])
        good_probs = step_probs[cursor : cursor + len(good)]
        bad_probs = step_probs[cursor + len(good) : cursor + len(good) + len(bad)]
        cursor += len(good) + len(bad)
        prm_flags += int(bad_probs[k] < 0.5 <= good_probs[k])
    return {"problems": len(pairs), "orm_prefers_reference": orm_wins / len(pairs), "prm_flags_step": prm_flags / len(pairs)}


def evaluate_rewards(policy, orm, prm, tokenizer, heldout: list[dict], grouped: list[dict], per_group: int) -> dict:
    scores = orm_scores(orm, tokenizer, heldout)
    outcome = [int(d["correct"]) for d in heldout]
    step_probs, step_labels = prm_step_predictions(prm, tokenizer, heldout)
    wrong = [d for d in heldout if d["steps"] and not all(d["step_labels"])]
    wrong_probs, _ = prm_step_predictions(prm, tokenizer, wrong)
    located, cursor = 0, 0
    for d in wrong:
        mine = wrong_probs[cursor : cursor + len(d["steps"])]
        cursor += len(d["steps"])
        guess = next((i for i, p in enumerate(mine) if p < 0.5), None)
        located += int(guess == d["step_labels"].index(False))
    # the PRM as an outcome score (its value after the last step) for the same grouped samples
    prm_last, cursor = [], 0
    grouped_probs, _ = prm_step_predictions(prm, tokenizer, grouped)
    for d in grouped:
        prm_last.append(grouped_probs[cursor + len(d["steps"]) - 1] if d["steps"] else 0.0)
        cursor += len(d["steps"])
    planted_metrics = planted(eval_problems("arith")[:100], tokenizer, orm, prm)
    good = sum(step_labels)
    return {
        "orm": {
            "heldout_samples": len(heldout),
            "heldout_correct": sum(outcome),
            "auroc": float(roc_auc_score(outcome, scores)),
            "grouped": grouped_ranking(orm_scores(orm, tokenizer, grouped), grouped, per_group),
            "planted_prefers_reference": planted_metrics["orm_prefers_reference"],
        },
        "prm": {
            "heldout_steps": len(step_labels),
            "heldout_good_steps": good,
            "step_accuracy": statistics.fmean(int(p >= 0.5) == y for p, y in zip(step_probs, step_labels, strict=True)),
            "majority_baseline": max(good, len(step_labels) - good) / len(step_labels),
            "step_auroc": float(roc_auc_score(step_labels, step_probs)),
            "first_error_samples": len(wrong),
            "first_error_located": located / len(wrong) if wrong else float("nan"),
            "grouped_last_step": grouped_ranking(prm_last, grouped, per_group),
            "planted_flags_step": planted_metrics["prm_flags_step"],
        },
        "policy_logprob_grouped": grouped_ranking(policy_logprobs(policy, tokenizer, grouped), grouped, per_group),
        "planted_problems": planted_metrics["problems"],
        "grouped_problems": len(grouped) // per_group,
        "grouped_per_problem": per_group,
    }


# ---------------------------------------------------------------------------
# the model card


def _mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6


def _ranking_row(name: str, g: dict) -> str:
    return f"| {name} | {g['within_auroc']:.3f} | {g['best_of_n']:.3f} |"


def render_card(metrics: dict, out: Path) -> str:
    r, acc, orm, prm = metrics["recipe"], metrics["accuracy"], metrics["orm"], metrics["prm"]
    t = metrics["timings_s"]
    mix = ", ".join(f"{name} {w:.0%}" for name, w in r["level_mix"])
    rows = []
    for set_name, a in acc.items():
        low, high = accuracy_band(a["sampled"], 200, n_ref=a["sampled_n"])
        half = 1.96 * math.sqrt(a["sampled"] * (1 - a["sampled"]) / a["sampled_n"])
        rows.append(
            f"| `{set_name}` | {a['level']} | {a['greedy']:.1%} | {a['sampled']:.1%} ± {half:.1%} "
            f"({a['sampled_n']} samples) | {low:.1%} – {high:.1%} |"
        )
    table = "\n".join(rows)
    g = orm["grouped"]
    k, n_groups = metrics["grouped_per_problem"], metrics["grouped_problems"]
    ranking = "\n".join(
        [
            _ranking_row("`arith_orm` (logit)", g),
            _ranking_row("`arith_prm` (score after the last step)", prm["grouped_last_step"]),
            _ranking_row("the policy's own log-likelihood (reference, not a shipped reward)", metrics["policy_logprob_grouped"]),
        ]
    )
    quick = " **Quick smoke run: not the shipped recipe.**" if metrics["quick"] else ""
    return f"""# embedded:arith — the reasoning lab's model and reward models

Trained from scratch by `python scripts/train_arith.py` (seed {r["seed"]}, CPU, {metrics["threads"]} torch
thread(s), torch {metrics["torch"]}). The script writes everything in this folder, this card included;
the numbers below are its `metrics.json`.{quick}

## Task and data
- Problems from `engines/tasks/arith.py`: flat expressions of small positive integers with `+ - *`;
  levels easy (2-3 operands up to 9), medium (3-4 up to 12, the default) and hard (4-5 up to 20),
  every intermediate value capped (99 / 999 / 9999).
- Prompt `Q: 3+4*5-2` and a newline; the solution has one reduction per line (`4*5=20`, `3+20=23`,
  `23-2=21`: leftmost `*` first, then `+`/`-` left to right), then `#### 21` and `<eos>`. Not
  chat-templated (`chat=False`).
- Policy data: fresh seeded problems (level mix {mix}); the problems of the task sets
  (`arith-easy`, `arith`, `arith-hard`) and of the reward models' held-out set never appear.
- Reward-model data: {r["rm_samples_per_problem"]} samples of the trained policy at T=1 on each of
  {r["rm_train_problems"]} fresh problems ({orm["train_samples"]} samples, {orm["train_correct"]} right), labelled by the
  exact checks. Held out: one sample on each of {orm["heldout_samples"]} other problems (half medium, half hard;
  {orm["heldout_correct"]} right), and {k} samples on each of the first {n_groups} `arith` problems.

## Models
| folder | architecture | parameters | size | training |
|---|---|---|---|---|
| `policy/` | `LlamaForCausalLM`, {r["layers"]} layers, hidden {r["hidden"]}, {r["heads"]} heads, MLP {3 * r["hidden"]}, tied embeddings, context {r["context"]} | {metrics["params"]["policy"]:,} | {_mb(out / "policy"):.1f} MB | {r["policy_steps"]} steps × {r["policy_batch"]} sequences, AdamW lr {r["policy_lr"]:g}, cosine, loss on solution tokens; {t["policy_train"]:.0f} s |
| `orm/` | `LlamaForSequenceClassification`, 1 label, from the policy's weights; score = logit at `<eos>` | {metrics["params"]["orm"]:,} | {_mb(out / "orm"):.1f} MB | {r["rm_steps"]} steps × {r["rm_batch"]}; BCE with the final-answer label on every completion token (Cobbe et al. 2021) and at `<eos>`, plus a Bradley-Terry loss on right/wrong pairs of one problem; lr {r["rm_lr"]:g}; {t["orm_train"]:.0f} s |
| `prm/` | `LlamaForTokenClassification`, 1 label, from the policy's weights; step score = sigmoid(logit) at the step's newline | {metrics["params"]["prm"]:,} | {_mb(out / "prm"):.1f} MB | {r["rm_steps"]} steps × {r["rm_batch"]}; BCE with prefix validity on every token (Math-Shepherd labels with a perfect completer) and at step newlines; lr {r["rm_lr"]:g}; {t["prm_train"]:.0f} s |

Tokenizer (all three folders): `tokenizers` WordLevel over single characters `0-9 + - * = # Q : space
newline`, plus `<pad>` (0), `<eos>` (1), `<unk>` (2); `AutoTokenizer` loads it as a fast tokenizer.

## Policy accuracy (final answer right)
On the 200 problems of each task set; T=1 draws {r["eval_samples"]} samples per problem (± is a 95% binomial
interval). The last column is where a seeded run of 200 T=1 samples should land (± 3.29 standard errors
of its difference from this estimate); `tests/reasoning` checks the default level against it.

| task set | level | greedy | T=1 | band for n=200 at T=1 |
|---|---|---|---|---|
{table}

## Reward models on held-out policy samples
- Outcome model (`arith_orm`): AUROC **{orm["auroc"]:.3f}** against the final-answer verifier over
  {orm["heldout_samples"]} samples of different problems.
- Process model (`arith_prm`): step accuracy **{prm["step_accuracy"]:.3f}** at threshold 0.5 against the exact
  `arith_steps` labels ({prm["heldout_steps"]} steps; always answering the majority label scores
  {prm["majority_baseline"]:.3f}); step AUROC {prm["step_auroc"]:.3f}; on the {prm["first_error_samples"]} samples with a wrong
  step, its first sub-0.5 score falls on the true first wrong step {prm["first_error_located"]:.1%} of the time.

Much of that pooled skill is knowing which problems are hard. Within one problem -- all that
best-of-N can use -- the learned rewards rank samples far worse ({k} T=1 samples on each of {n_groups}
`arith` problems; a random pick is right {g["random_pick"]:.3f} of the time, the best of the {k} (oracle)
{g["oracle"]:.3f}):

| ranking by | within-problem AUROC | accuracy of the top-scored sample |
|---|---|---|
{ranking}

On {metrics["planted_problems"]} reference solutions with one planted wrong step (a result off by one, later steps
consistent with it), `arith_orm` scores the reference above the planted solution {orm["planted_prefers_reference"]:.1%}
of the time and `arith_prm` flags the planted step (below 0.5 while the true step is at least 0.5)
{prm["planted_flags_step"]:.1%} of the time; the exact `arith_steps` flags every one.

## Time
Total {metrics["total_wall_s"]:.0f} s wall, {metrics["total_cpu_s"]:.0f} s CPU: policy {t["policy_train"]:.0f} s, sampling the
reward-model data {t["rm_sampling"]:.0f} s, outcome model {t["orm_train"]:.0f} s, process model {t["prm_train"]:.0f} s,
evaluation {t["evaluation"]:.0f} s. Wall time depends on how busy the machine is.

## Limits
The learned rewards are small heads on a small policy, trained on {orm["train_samples"]} samples: they
learn which problems are hard faster than they learn to check a digit, so they are easily fooled
by a fluent wrong step, and picking the best of many samples by `arith_orm` can do worse than a
random pick (`samplescope bench scaling` measures it). The exact rewards (`math`, `arith_steps`) are
the ground truth they are measured against.
"""
