"""Train the reasoning lab from scratch: policy, outcome reward model, process reward model.

    python scripts/train_arith.py                 # writes engines/assets/arith/
    python scripts/train_arith.py --quick --out /tmp/arith   # a smoke run (minutes)

Everything is seeded (``--seed``) and runs on CPU (``--threads``, default 1):

1. a character-level tokenizer (:func:`engines.models.arith.build_tokenizer`);
2. the policy: a tiny ``LlamaForCausalLM`` trained on generated problems and
   their reference solutions (loss on the solution tokens only), with the
   problems of the built-in task sets and of the reward models' held-out set
   kept out of its data;
3. the policy's own samples at temperature 1 on fresh problems, labelled by
   the exact checks (final answer for the outcome model, prefix validity of
   every step for the process model: :mod:`engines.tasks.arith`);
4. the outcome reward model: ``LlamaForSequenceClassification`` (one label)
   initialised from the policy, binary cross-entropy on the logit at ``<eos>``;
5. the process reward model: ``LlamaForTokenClassification`` (one label)
   initialised from the policy, binary cross-entropy at every step's newline
   (Math-Shepherd, Wang et al. 2024; Lightman et al. 2023);
6. evaluation (greedy and T=1 accuracy per level on the task sets, outcome
   model AUROC and process model step accuracy on held-out samples), saved as
   ``metrics.json`` and rendered into ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.models.arith import ASSETS, build_tokenizer, sample_completions  # noqa: E402
from engines.rewards.arith import orm_input_ids, prm_input_ids  # noqa: E402
from engines.tasks.arith import (  # noqa: E402
    DEFAULT_LEVEL,
    TASK_SET_LEVELS,
    check_steps,
    eval_problems,
    generate_problem,
    generate_problems,
    is_correct,
    reserved_expressions,
    split_steps,
)
from scripts.arith_card import render_card  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    # policy
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    context: int = 256
    policy_steps: int = 600
    policy_batch: int = 64
    policy_lr: float = 2e-3
    level_mix: tuple[tuple[str, float], ...] = (("easy", 0.2), ("medium", 0.5), ("hard", 0.3))
    # reward-model data: the policy's samples at T=1
    rm_train_problems: int = 4000
    rm_samples_per_problem: int = 2
    rm_heldout_problems: int = 600
    # reward models
    rm_steps: int = 400
    rm_batch: int = 64
    rm_lr: float = 5e-4
    # evaluation: T=1 samples per task-set problem for the card's accuracy estimate
    eval_samples: int = 4
    max_new_tokens: int = 96

    def quick(self) -> Recipe:
        return replace(
            self, policy_steps=150, rm_train_problems=200, rm_heldout_problems=100, rm_steps=30, eval_samples=1
        )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------
# batching


def pad_batch(rows: list[list[int]], labels: list[list[int]] | None, pad: int):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long) if labels is not None else None
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        if lab is not None:
            lab[i, : len(row)] = torch.tensor(labels[i])
    return ids, mask, lab


def schedule(optimizer, steps: int, warmup: int):
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup)
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_loop(model, batches, steps: int, lr: float, loss_fn, name: str) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = schedule(optimizer, steps, warmup=max(1, steps // 20))
    model.train()
    losses: list[float] = []
    for step in range(steps):
        loss = loss_fn(model, next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == steps - 1:
            recent = losses[-100:]
            log(f"{name} step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f}")
    model.eval()
    return losses


# ---------------------------------------------------------------------------
# the policy


def policy_batches(recipe: Recipe, tokenizer, exclude: set[str]):
    rng = random.Random(recipe.seed * 1000 + 1)
    levels = [name for name, _ in recipe.level_mix]
    weights = [w for _, w in recipe.level_mix]
    while True:
        rows, labels = [], []
        for _ in range(recipe.policy_batch):
            level = rng.choices(levels, weights=weights)[0]
            problem = generate_problem(rng, level)
            while problem.expression in exclude:
                problem = generate_problem(rng, level)
            prompt = tokenizer(problem.prompt, add_special_tokens=False)["input_ids"]
            answer = tokenizer(problem.solution(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        yield pad_batch(rows, labels, tokenizer.pad_token_id)


def train_policy(recipe: Recipe, tokenizer, exclude: set[str]):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.hidden * 3,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.context,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)

    def loss_fn(m, batch):
        ids, mask, lab = batch
        return m(input_ids=ids, attention_mask=mask, labels=lab).loss

    losses = train_loop(
        model, policy_batches(recipe, tokenizer, exclude), recipe.policy_steps, recipe.policy_lr, loss_fn, "policy"
    )
    return model, losses


# ---------------------------------------------------------------------------
# reward-model data and training


def sample_labelled(model, tokenizer, problems, samples: int, generator, max_new_tokens: int) -> list[dict]:
    """The policy's T=1 samples with their exact labels."""
    prompts = [p.prompt for p in problems for _ in range(samples)]
    owners = [p for p in problems for _ in range(samples)]
    completions = sample_completions(
        model, tokenizer, prompts, temperature=1.0, generator=generator, max_new_tokens=max_new_tokens
    )
    out = []
    for problem, completion in zip(owners, completions, strict=True):
        steps = split_steps(completion)
        out.append(
            {
                "problem": problem,
                "completion": completion,
                "correct": is_correct(completion, problem.answer),
                "steps": steps,
                "step_labels": check_steps(problem, steps),
            }
        )
    return out


def orm_batches(data: list[dict], tokenizer, batch: int, seed: int):
    rng = random.Random(seed)
    while True:
        part = rng.sample(data, batch)
        rows = [orm_input_ids(tokenizer, d["problem"].prompt, d["completion"]) for d in part]
        ids, mask, _ = pad_batch(rows, None, tokenizer.pad_token_id)
        yield ids, mask, torch.tensor([float(d["correct"]) for d in part])


def prm_encode(tokenizer, d: dict) -> tuple[list[int], list[int]]:
    ids, positions = prm_input_ids(tokenizer, d["problem"].prompt, d["steps"])
    labels = [-100] * len(ids)
    for pos, ok in zip(positions, d["step_labels"], strict=True):
        labels[pos] = int(ok)
    return ids, labels


def prm_batches(data: list[dict], tokenizer, batch: int, seed: int):
    rng = random.Random(seed)
    usable = [d for d in data if d["steps"]]
    while True:
        encoded = [prm_encode(tokenizer, d) for d in rng.sample(usable, batch)]
        yield pad_batch([e[0] for e in encoded], [e[1] for e in encoded], tokenizer.pad_token_id)


def orm_loss(model, batch):
    ids, mask, target = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def prm_loss(model, batch):
    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[..., 0]
    keep = labels != -100
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], labels[keep].float())


@torch.no_grad()
def orm_scores(model, tokenizer, data: list[dict]) -> list[float]:
    out: list[float] = []
    for start in range(0, len(data), 256):
        rows = [orm_input_ids(tokenizer, d["problem"].prompt, d["completion"]) for d in data[start : start + 256]]
        ids, mask, _ = pad_batch(rows, None, tokenizer.pad_token_id)
        out += model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    return out


@torch.no_grad()
def prm_step_predictions(model, tokenizer, data: list[dict]) -> tuple[list[float], list[int]]:
    probs, labels = [], []
    usable = [d for d in data if d["steps"]]
    for start in range(0, len(usable), 256):
        encoded = [prm_encode(tokenizer, d) for d in usable[start : start + 256]]
        ids, mask, lab = pad_batch([e[0] for e in encoded], [e[1] for e in encoded], tokenizer.pad_token_id)
        p = torch.sigmoid(model(input_ids=ids, attention_mask=mask).logits[..., 0])
        keep = lab != -100
        probs += p[keep].tolist()
        labels += lab[keep].tolist()
    return probs, labels


def train_reward_model(recipe: Recipe, kind: str, policy_dir: Path, data: list[dict], tokenizer):
    from transformers import AutoConfig, LlamaForSequenceClassification, LlamaForTokenClassification

    torch.manual_seed(recipe.seed + (11 if kind == "orm" else 12))
    cls = LlamaForSequenceClassification if kind == "orm" else LlamaForTokenClassification
    config = AutoConfig.from_pretrained(str(policy_dir), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    config.classifier_dropout = 0.0  # read by the token-classification head only
    model = cls.from_pretrained(str(policy_dir), config=config)
    batches = (orm_batches if kind == "orm" else prm_batches)(data, tokenizer, recipe.rm_batch, recipe.seed + 5)
    losses = train_loop(
        model, batches, recipe.rm_steps, recipe.rm_lr, orm_loss if kind == "orm" else prm_loss, kind
    )
    return model, losses


# ---------------------------------------------------------------------------
# evaluation


def accuracy_per_level(model, tokenizer, recipe: Recipe, generator) -> dict[str, dict]:
    out = {}
    for set_name, (level, _) in TASK_SET_LEVELS.items():
        problems = eval_problems(set_name)
        prompts = [p.prompt for p in problems]
        greedy = sample_completions(model, tokenizer, prompts, temperature=0, max_new_tokens=recipe.max_new_tokens)
        sampled = sample_completions(
            model,
            tokenizer,
            [p for p in prompts for _ in range(recipe.eval_samples)],
            temperature=1.0,
            generator=generator,
            max_new_tokens=recipe.max_new_tokens,
        )
        owners = [p for p in problems for _ in range(recipe.eval_samples)]
        hits = [is_correct(c, p.answer) for c, p in zip(sampled, owners, strict=True)]
        per_problem = [sum(hits[i : i + recipe.eval_samples]) / recipe.eval_samples for i in range(0, len(hits), recipe.eval_samples)]
        out[set_name] = {
            "level": level,
            "problems": len(problems),
            "greedy": sum(is_correct(c, p.answer) for c, p in zip(greedy, problems, strict=True)) / len(problems),
            "sampled": sum(hits) / len(hits),
            "sampled_n": len(hits),
            "sampled_problem_var": sum(q * (1 - q) for q in per_problem) / len(per_problem),
        }
        log(f"{set_name}: greedy {out[set_name]['greedy']:.3f}, T=1 {out[set_name]['sampled']:.3f}")
    return out


def save(model, tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="output folder (default: the shipped assets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run (not the shipped recipe)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine two threads ran 9x slower per step)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    recipe = Recipe(seed=args.seed)
    recipe = recipe.quick() if args.quick else recipe
    started, cpu_started = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    tokenizer = build_tokenizer()
    heldout = generate_problems(recipe.seed * 1000 + 3, DEFAULT_LEVEL, recipe.rm_heldout_problems // 2)
    heldout += generate_problems(recipe.seed * 1000 + 4, "hard", recipe.rm_heldout_problems // 2)
    reserved = reserved_expressions()
    exclude = reserved | {p.expression for p in heldout}

    t = time.perf_counter()
    policy, policy_losses = train_policy(recipe, tokenizer, exclude)
    save(policy, tokenizer, args.out / "policy")
    t = lap("policy_train", t)

    generator = torch.Generator().manual_seed(recipe.seed * 1000 + 7)
    rng = random.Random(recipe.seed * 1000 + 2)
    levels = [name for name, _ in recipe.level_mix]
    weights = [w for _, w in recipe.level_mix]
    train_problems = []
    while len(train_problems) < recipe.rm_train_problems:
        problem = generate_problem(rng, rng.choices(levels, weights=weights)[0])
        if problem.expression not in exclude:
            train_problems.append(problem)
    rm_train = sample_labelled(
        policy, tokenizer, train_problems, recipe.rm_samples_per_problem, generator, recipe.max_new_tokens
    )
    rm_heldout = sample_labelled(policy, tokenizer, heldout, 1, generator, recipe.max_new_tokens)
    t = lap("rm_sampling", t)
    log(f"reward-model data: {len(rm_train)} train samples ({sum(d['correct'] for d in rm_train)} correct), "
        f"{len(rm_heldout)} held out")

    orm, orm_losses = train_reward_model(recipe, "orm", args.out / "policy", rm_train, tokenizer)
    save(orm, tokenizer, args.out / "orm")
    t = lap("orm_train", t)
    prm, prm_losses = train_reward_model(recipe, "prm", args.out / "policy", rm_train, tokenizer)
    save(prm, tokenizer, args.out / "prm")
    t = lap("prm_train", t)

    accuracy = accuracy_per_level(policy, tokenizer, recipe, torch.Generator().manual_seed(recipe.seed * 1000 + 8))
    scores = orm_scores(orm, tokenizer, rm_heldout)
    outcome = [int(d["correct"]) for d in rm_heldout]
    step_probs, step_labels = prm_step_predictions(prm, tokenizer, rm_heldout)
    step_hits = [int(p >= 0.5) == y for p, y in zip(step_probs, step_labels, strict=True)]
    first_error = _first_error_metrics(prm, tokenizer, rm_heldout)
    t = lap("evaluation", t)

    metrics = {
        "recipe": asdict(recipe),
        "params": {
            "policy": sum(p.numel() for p in policy.parameters()),
            "orm": sum(p.numel() for p in orm.parameters()),
            "prm": sum(p.numel() for p in prm.parameters()),
        },
        "accuracy": accuracy,
        "orm": {
            "heldout_samples": len(rm_heldout),
            "heldout_correct": sum(outcome),
            "auroc": float(roc_auc_score(outcome, scores)),
            "train_samples": len(rm_train),
            "train_correct": sum(d["correct"] for d in rm_train),
            "final_loss": sum(orm_losses[-50:]) / len(orm_losses[-50:]),
        },
        "prm": {
            "heldout_steps": len(step_labels),
            "heldout_good_steps": sum(step_labels),
            "step_accuracy": sum(step_hits) / len(step_hits),
            "majority_baseline": max(sum(step_labels), len(step_labels) - sum(step_labels)) / len(step_labels),
            "step_auroc": float(roc_auc_score(step_labels, step_probs)),
            **first_error,
            "final_loss": sum(prm_losses[-50:]) / len(prm_losses[-50:]),
        },
        "policy_final_loss": sum(policy_losses[-50:]) / len(policy_losses[-50:]),
        "timings_s": timings,
        "total_wall_s": round(time.perf_counter() - started, 1),
        "total_cpu_s": round(time.process_time() - cpu_started, 1),
        "torch": torch.__version__,
        "threads": args.threads,
        "quick": args.quick,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (args.out / "MODEL_CARD.md").write_text(render_card(metrics, args.out))
    log(f"done in {metrics['total_wall_s']} s wall ({metrics['total_cpu_s']} s CPU); wrote {args.out}")
    return 0


def _first_error_metrics(prm, tokenizer, data: list[dict]) -> dict[str, float]:
    """On held-out samples with a wrong step: how often the PRM's first sub-0.5 step is the true first error."""
    wrong = [d for d in data if d["steps"] and not all(d["step_labels"])]
    if not wrong:
        return {"first_error_samples": 0, "first_error_located": float("nan")}
    probs, _ = prm_step_predictions(prm, tokenizer, wrong)
    located, cursor = 0, 0
    for d in wrong:
        mine = probs[cursor : cursor + len(d["steps"])]
        cursor += len(d["steps"])
        truth = d["step_labels"].index(False)
        guess = next((i for i, p in enumerate(mine) if p < 0.5), None)
        located += int(guess == truth)
    return {"first_error_samples": len(wrong), "first_error_located": located / len(wrong)}


if __name__ == "__main__":
    sys.exit(main())
