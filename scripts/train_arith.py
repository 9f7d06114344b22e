"""Train the reasoning lab from scratch: policy, outcome reward model, process reward model.

    python scripts/train_arith.py                            # writes engines/assets/arith/
    python scripts/train_arith.py --quick --out /tmp/arith   # a smoke run (about two minutes)

Everything is seeded (``--seed``) and runs on CPU (``--threads``, default 1):

1. a character-level tokenizer (:func:`engines.models.arith.build_tokenizer`);
2. the policy: a tiny ``LlamaForCausalLM`` trained on generated problems and their reference
   solutions (loss on the solution tokens only); the problems of the built-in task sets and of
   the reward models' held-out set never appear in its data;
3. the policy's own samples at temperature 1 on fresh problems, labelled by the exact checks of
   :mod:`engines.tasks.arith` (see :mod:`scripts.arith_data` for the label conventions);
4. the outcome reward model: ``LlamaForSequenceClassification`` (one label) initialised from the
   policy, trained on the final-answer labels (token-level, Cobbe et al. 2021, plus a
   within-problem Bradley-Terry term);
5. the process reward model: ``LlamaForTokenClassification`` (one label) initialised from the
   policy, trained on prefix-validity labels at every token (Math-Shepherd, Wang et al. 2024;
   Lightman et al. 2023, "Let's Verify Step by Step");
6. evaluation (:mod:`scripts.arith_report`), saved as ``metrics.json`` and rendered into
   ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.models.arith import ASSETS, build_tokenizer  # noqa: E402
from engines.tasks.arith import (  # noqa: E402
    DEFAULT_LEVEL,
    eval_problems,
    generate_problem,
    generate_problems,
    reserved_expressions,
)
from scripts.arith_data import dense_batches, dense_loss, orm_encode, pad_batch, prm_encode, sample_labelled  # noqa: E402
from scripts.arith_report import evaluate_policy, evaluate_rewards, render_card  # noqa: E402


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
    rm_train_problems: int = 2000
    rm_samples_per_problem: int = 4
    rm_heldout_problems: int = 600
    # reward models
    rm_steps: int = 400
    rm_batch: int = 64
    rm_lr: float = 1e-3
    # evaluation: T=1 samples per task-set problem for the card's accuracy estimate, and
    # samples per problem on the first `grouped_problems` arith problems for within-problem ranking
    eval_samples: int = 4
    grouped_problems: int = 100
    grouped_samples: int = 8
    max_new_tokens: int = 96

    def quick(self) -> Recipe:
        return replace(
            self,
            policy_steps=150,
            rm_train_problems=100,
            rm_heldout_problems=100,
            rm_steps=30,
            eval_samples=1,
            grouped_problems=20,
        )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------
# training


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


def train_reward_model(recipe: Recipe, kind: str, policy_dir: Path, data: list[dict], tokenizer):
    from transformers import AutoConfig, LlamaForSequenceClassification, LlamaForTokenClassification

    torch.manual_seed(recipe.seed + (11 if kind == "orm" else 12))
    cls = LlamaForSequenceClassification if kind == "orm" else LlamaForTokenClassification
    config = AutoConfig.from_pretrained(str(policy_dir), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    config.classifier_dropout = 0.0  # read by the token-classification head only
    model = cls.from_pretrained(str(policy_dir), config=config)
    encode = orm_encode if kind == "orm" else prm_encode
    per_group = recipe.rm_samples_per_problem
    batches = dense_batches(encode, data, tokenizer, recipe.rm_batch // per_group, per_group, recipe.seed + 5)
    loss = functools.partial(dense_loss, pairwise=kind == "orm")
    losses = train_loop(model, batches, recipe.rm_steps, recipe.rm_lr, loss, kind)
    return model, losses


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
    per = recipe.rm_samples_per_problem
    rm_train = sample_labelled(policy, tokenizer, train_problems, per, generator, recipe.max_new_tokens)
    t = lap("rm_sampling", t)
    log(f"reward-model data: {len(rm_train)} samples ({sum(d['correct'] for d in rm_train)} right)")

    orm, orm_losses = train_reward_model(recipe, "orm", args.out / "policy", rm_train, tokenizer)
    save(orm, tokenizer, args.out / "orm")
    t = lap("orm_train", t)
    prm, prm_losses = train_reward_model(recipe, "prm", args.out / "policy", rm_train, tokenizer)
    save(prm, tokenizer, args.out / "prm")
    t = lap("prm_train", t)

    eval_gen = torch.Generator().manual_seed(recipe.seed * 1000 + 8)
    accuracy = evaluate_policy(policy, tokenizer, recipe.eval_samples, recipe.max_new_tokens, eval_gen)
    for name, a in accuracy.items():
        log(f"{name}: greedy {a['greedy']:.3f}, T=1 {a['sampled']:.3f}")
    heldout_data = sample_labelled(policy, tokenizer, heldout, 1, eval_gen, recipe.max_new_tokens)
    grouped = sample_labelled(
        policy,
        tokenizer,
        eval_problems("arith")[: recipe.grouped_problems],
        recipe.grouped_samples,
        eval_gen,
        recipe.max_new_tokens,
    )
    rewards = evaluate_rewards(policy, orm, prm, tokenizer, heldout_data, grouped, recipe.grouped_samples)
    rewards["orm"].update(train_samples=len(rm_train), train_correct=sum(d["correct"] for d in rm_train))
    t = lap("evaluation", t)

    def tail(losses: list[float]) -> float:
        return sum(losses[-50:]) / len(losses[-50:])

    metrics = {
        "recipe": asdict(recipe),
        "params": {name: sum(p.numel() for p in m.parameters()) for name, m in (("policy", policy), ("orm", orm), ("prm", prm))},
        "accuracy": accuracy,
        **rewards,
        "final_loss": {"policy": tail(policy_losses), "orm": tail(orm_losses), "prm": tail(prm_losses)},
        "timings_s": timings,
        "total_wall_s": round(time.perf_counter() - started, 1),
        "total_cpu_s": round(time.process_time() - cpu_started, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "quick": args.quick,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (args.out / "MODEL_CARD.md").write_text(render_card(metrics, args.out))
    log(
        f"ORM AUROC {rewards['orm']['auroc']:.3f} (within-problem {rewards['orm']['grouped']['within_auroc']:.3f}), "
        f"PRM step accuracy {rewards['prm']['step_accuracy']:.3f}"
    )
    log(f"done in {metrics['total_wall_s']} s wall ({metrics['total_cpu_s']} s CPU); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
