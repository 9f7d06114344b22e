"""``samplescope train``: RL-train a policy with a rollout strategy (engines.training).

``samplescope train --policy embedded:arith --prompts arith-train --strategy grpo
--budget samples=2000`` runs the training loop with a progress bar on stderr, checkpoints
in ``$SAMPLESCOPE_HOME/training/NAME`` and prints the held-out accuracy before and after,
the spend, and the trained policy's model spec (``hf:FOLDER``: sample from it with
``samplescope sample --model hf:FOLDER ...``). ``--resume`` continues a run from its last
checkpoint with its stored settings (a new ``--budget`` raises its caps); ``--json`` prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from app.commands.console import add_json, parse_pairs, quiet_libraries

#: the strategy side of the default recipe (the training side is TrainConfig's defaults): 32 prompts x 8 samples
#: per update raises the arith policy's held-out T=1 accuracy above its card's band (tests/training/test_arith_learning.py)
RECIPE = {"prompts_per_batch": "32", "group_size": "8"}
BUDGET_KEYS = {"samples": "samples", "tokens": "tokens", "seconds": "seconds", "updates": "max_updates"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="RL-train a policy with a rollout strategy",
        description="Train a policy with a training-time rollout strategy (grpo, rloo, raft, reinforce_rej, "
        "dynamic_sampling, reinforce_ada, psr, nsr, w_reinforce) on a prompt set, under a sample, token or "
        "time budget; checkpoints in the data folder; the result loads as a model spec.",
    )
    p.add_argument("--name", default=None, help="run name (folder under $SAMPLESCOPE_HOME/training; default STRATEGY-seedSEED)")
    p.add_argument("--policy", default="embedded:arith", help="embedded:arith or hf:FOLDER (default embedded:arith)")
    p.add_argument("--prompts", default="arith-train", help="arith-train[:LEVEL[:N]], a task set name or a .jsonl file")
    p.add_argument("--eval-prompts", default="arith-fresh", help="held-out prompts (default arith-fresh: 200 unseen problems)")
    p.add_argument("--reward", default="math", help="outcome reward spec (default math)")
    p.add_argument("--reward-control", default="exact", help="exact, random, inverted or gated_step")
    p.add_argument("--strategy", default="grpo", help="rollout strategy (default grpo)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE", help="strategy parameter")
    p.add_argument("--train-set", dest="train_params", action="append", default=[], metavar="KEY=VALUE",
                   help="training parameter: learning_rate, kl_coef, clip_eps, eval_every, eval_size, ...")
    p.add_argument("--budget", action="append", default=[], metavar="KIND=CAP", help="samples=N, tokens=N, seconds=S or updates=N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the named run from its last checkpoint")
    p.add_argument("--trainer", choices=("lab", "trl"), default="lab",
                   help="lab: the lab's loop (default); trl: the same strategy inside TRL's GRPOTrainer (engines.training.trl_bridge)")
    add_json(p)
    p.set_defaults(func=run)


def _budget(items: list[str]) -> dict[str, str]:
    raw = parse_pairs(items, "--budget")
    unknown = sorted(set(raw) - set(BUDGET_KEYS))
    if unknown:
        raise ValueError(f"unknown budget {', '.join(unknown)}; use samples, tokens, seconds or updates")
    return {BUDGET_KEYS[k]: v for k, v in raw.items()}


def build_config(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    from app.workflows.store import training_home
    from engines.training.loop import TrainConfig

    budget = _budget(args.budget)
    if args.resume:
        name = args.name or f"{args.strategy}-seed{args.seed}"
        stored = training_home() / name / "run.json"
        if not stored.exists():
            raise ValueError(f"nothing to resume: no run {name!r} in {training_home()}")
        data = json.loads(stored.read_text())
        config = TrainConfig.from_dict(data["config"])
        if budget:  # new caps replace the stored ones
            caps = TrainConfig.from_strings(budget)
            config = config.replace(**{k: getattr(caps, k) for k in BUDGET_KEYS.values()})
        return config, data.get("strategy_params", {})
    values = {
        "name": args.name or f"{args.strategy}-seed{args.seed}",
        "policy": args.policy,
        "prompts": args.prompts,
        "eval_prompts": args.eval_prompts,
        "reward": args.reward,
        "reward_control": args.reward_control,
        "strategy": args.strategy,
        "seed": str(args.seed),
        **parse_pairs(args.train_params, "--train-set"),
        **budget,
    }
    return TrainConfig.from_strings(values), {**RECIPE, **parse_pairs(args.params, "--set")}


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.workflows.store import training_home
    from engines.training import build_strategy
    from engines.training.loop import train

    config, params = build_config(args)
    # bad parameters get their one line here, before any work; the typed values are what the run stores
    strategy_params = build_strategy(config.strategy, params, strings=not args.resume).config.as_dict()
    if getattr(args, "trainer", "lab") == "trl":
        return _run_trl(args, config, strategy_params)
    bar = _Bar(config, enabled=not args.json and sys.stderr.isatty())
    evals: list[dict[str, Any]] = []
    done = None
    for event in train(config, strategy_params, resume=args.resume, runs_folder=training_home()):
        if event.kind == "eval":
            evals.append({"step": event.step, **event.metrics})
        elif event.kind == "update":
            bar.update(event)
        elif event.kind == "done":
            done = event
    bar.close()
    result = {"status": done.status, "message": done.message, "evals": evals, **done.metrics}
    if args.json:
        print(json.dumps(result))
        return 0
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    print(f"{config.strategy} on {config.policy}: {done.metrics['updates']} updates, {done.metrics['samples']} samples, "
          f"{done.metrics['tokens']} tokens, {done.metrics['seconds']:.1f} s ({done.status}{': ' + done.message if done.message else ''})")
    for key in ("accuracy_t1", "accuracy_greedy"):
        if key in first:
            print(f"held-out {key}: {first[key]:.3f} -> {last[key]:.3f} on {last['n']} prompts")
    if "policy_spec" in done.metrics:
        print(f"trained policy: {done.metrics['policy_spec']}")
    return 0


def _run_trl(args: argparse.Namespace, config: Any, strategy_params: dict[str, Any]) -> int:
    from app.workflows.store import training_home
    from engines.training.trl_bridge import train_with_trl

    if args.resume:
        raise ValueError("--resume is for the lab's trainer; TRL keeps its own checkpoints")
    result = train_with_trl(config, strategy_params, run_dir=training_home() / config.name)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{config.strategy} under TRL GRPOTrainer: {result['updates']} updates, {result['samples']} samples, "
          f"{result['groups_kept']}/{result['groups_drawn']} groups kept")
    if result["accuracy_t1_before"] is not None:
        print(f"held-out accuracy_t1: {result['accuracy_t1_before']:.3f} -> {result['accuracy_t1_after']:.3f} on {result['eval_n']} prompts")
    print(f"trained policy: {result['policy_spec']}")
    return 0


class _Bar:
    """A one-line progress bar on stderr: updates, samples spent of the budget, latest loss."""

    def __init__(self, config: Any, enabled: bool) -> None:
        self.cap = config.samples
        self.enabled = enabled

    def update(self, event: Any) -> None:
        if not self.enabled:
            return
        m = event.metrics
        spent = m.get("spent_samples", 0)
        share = f"{spent}/{self.cap}" if self.cap else str(spent)
        width = 24
        filled = int(width * spent / self.cap) if self.cap else 0
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] update {event.step} samples {share} "
              f"loss {m.get('loss', 0):+.4f} kl {m.get('kl', 0):.4f}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)
