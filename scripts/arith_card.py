"""The model card of the reasoning lab's models, rendered from the training script's metrics.

``render_card(metrics, folder)`` turns the ``metrics.json`` that
``scripts/train_arith.py`` writes into ``MODEL_CARD.md``; the test suite reads
the same ``metrics.json``, so the card and the tests never disagree.
"""

from __future__ import annotations

import math
from pathlib import Path

from engines.models.arith import accuracy_band


def _mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6


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
    return f"""# embedded:arith — the reasoning lab's model and reward models

Trained from scratch by `python scripts/train_arith.py` (seed {r["seed"]}, CPU, {metrics["threads"]} thread(s),
torch {metrics["torch"]}). The script writes everything in this folder, this card included;
the numbers below are its `metrics.json`.{" **Quick smoke run: not the shipped recipe.**" if metrics["quick"] else ""}

## Task and data
- Problems from `engines/tasks/arith.py`: flat expressions of small positive integers with
  `+ - *`; levels easy (2-3 operands up to 9), medium (3-4 up to 12, the default) and hard
  (4-5 up to 20), every intermediate value capped (99 / 999 / 9999).
- Prompt `Q: 3+4*5-2` and a newline; the solution has one reduction per line (`4*5=20`,
  `3+20=23`, `23-2=21`: leftmost `*` first, then `+`/`-` left to right), then `#### 21`
  and `<eos>`. Not chat-templated (`chat=False`).
- Policy data: fresh seeded problems (level mix {mix}); the 600 task-set problems
  (`arith-easy`, `arith`, `arith-hard`) and the reward models' held-out problems never appear.
- Reward-model data: {orm["train_samples"]} samples of the trained policy at T=1 on
  {r["rm_train_problems"]} fresh problems ({orm["train_correct"]} correct), labelled by the exact
  checks. Held out: one sample on each of {orm["heldout_samples"]} other problems (half medium,
  half hard; {orm["heldout_correct"]} correct).

## Models
| folder | architecture | parameters | size | training |
|---|---|---|---|---|
| `policy/` | `LlamaForCausalLM`, {r["layers"]} layers, hidden {r["hidden"]}, {r["heads"]} heads, MLP {3 * r["hidden"]}, tied embeddings, context {r["context"]} | {metrics["params"]["policy"]:,} | {_mb(out / "policy"):.1f} MB | {r["policy_steps"]} steps × {r["policy_batch"]} sequences, AdamW lr {r["policy_lr"]:g}, cosine; {t["policy_train"]:.0f} s |
| `orm/` | `LlamaForSequenceClassification`, 1 label, from the policy's weights; score = logit at `<eos>` | {metrics["params"]["orm"]:,} | {_mb(out / "orm"):.1f} MB | {r["rm_steps"]} steps × {r["rm_batch"]}, BCE on the final-answer label, lr {r["rm_lr"]:g}; {t["orm_train"]:.0f} s |
| `prm/` | `LlamaForTokenClassification`, 1 label, from the policy's weights; step score = sigmoid(logit) at the step's newline | {metrics["params"]["prm"]:,} | {_mb(out / "prm"):.1f} MB | {r["rm_steps"]} steps × {r["rm_batch"]}, BCE on prefix-validity labels (Math-Shepherd), lr {r["rm_lr"]:g}; {t["prm_train"]:.0f} s |

Tokenizer (all three folders): `tokenizers` WordLevel over single characters `0-9 + - * = # Q : space newline`,
plus `<pad>` (0), `<eos>` (1), `<unk>` (2); loaded by `AutoTokenizer` as a fast tokenizer.

## Policy accuracy (final answer right)
On the 200 problems of each task set; T=1 draws {r["eval_samples"]} samples per problem (± is a 95%
binomial interval). The last column is the band a seeded run of 200 T=1 samples should land in
(± 3.29 standard errors of the difference between 200 fresh samples and this estimate); `tests/reasoning` checks the default level against it.

| task set | level | greedy | T=1 | band for n=200 at T=1 |
|---|---|---|---|---|
{table}

## Reward models on held-out policy samples
- Outcome model (`arith_orm`): AUROC **{orm["auroc"]:.3f}** against the final-answer verifier
  ({orm["heldout_samples"]} samples, {orm["heldout_correct"]} correct).
- Process model (`arith_prm`): step accuracy **{prm["step_accuracy"]:.3f}** at threshold 0.5 against
  the exact `arith_steps` labels ({prm["heldout_steps"]} steps; always answering the majority
  label scores {prm["majority_baseline"]:.3f}); step AUROC {prm["step_auroc"]:.3f}; on the
  {prm["first_error_samples"]} samples with a wrong step it puts the first sub-0.5 score on the
  true first wrong step {prm["first_error_located"]:.1%} of the time.

## Time
Total {metrics["total_wall_s"]:.0f} s wall, {metrics["total_cpu_s"]:.0f} s CPU (policy {t["policy_train"]:.0f} s,
sampling the reward-model data {t["rm_sampling"]:.0f} s, outcome model {t["orm_train"]:.0f} s, process model
{t["prm_train"]:.0f} s, evaluation {t["evaluation"]:.0f} s). Wall time depends on how busy the machine is.

## Limits
The learned rewards are small models trained on a few thousand samples of one policy, so
they can be fooled: picking the best of many samples by `arith_orm` can fall below the
exact verifier's pick as N grows (over-optimisation; `samplescope bench scaling` measures
it). The exact rewards (`math`, `arith_steps`) are the ground truth they are measured against.
"""

