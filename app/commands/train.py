"""``samplescope train``: RL-train a policy with a rollout strategy (engines.training).

``samplescope train --policy embedded:arith --prompts arith-train --strategy grpo
--budget samples=2000`` runs the training loop with a progress bar on stderr, checkpoints
in ``$SAMPLESCOPE_HOME/training/NAME`` and prints the held-out accuracy before and after,
the spend, and the trained policy's model spec (``hf:FOLDER``: sample from it with
``samplescope sample --model hf:FOLDER ...``). ``--resume`` continues a run from its last
checkpoint with its stored settings (a new ``--budget`` raises its caps); ``--json`` prints
one JSON object.

``--rollouts-only`` runs the rollout side without updates on any text model, served ones
included (``--policy openai:URL``): what the strategy keeps and drops, and at what sample and
token cost (engines.training.rollouts_only); it stores nothing. A training run asked of a
policy that cannot be trained (a served one) is refused in one line, before anything is stored.

``--compare grpo,raft,... --seeds 3`` trains every strategy with every seed on the same policy,
prompts and samples budget (engines.training.compare), in ``$SAMPLESCOPE_HOME/training/compare/NAME``,
and prints each strategy's held-out accuracy at the budget with its 95% bootstrap interval over
seeds. The same command again continues it: finished cells are skipped, a stopped one continues
from its checkpoint. ``samplescope report compare:NAME --out report.html`` draws its curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from app.commands.console import add_json, parse_pairs, quiet_libraries
from engines.errors import ConfigError

#: the strategy side of the default recipe (the training side is TrainConfig's defaults): 16 prompts x 8 samples
#: per update; with `--strategy raft` it raises the arith policy's held-out T=1 accuracy above its card's band in
#: 2,560 samples (tests/training/test_arith_learning.py; README, "RL on the arith policy")
RECIPE = {"prompts_per_batch": "16", "group_size": "8"}
BUDGET_KEYS = {"samples": "samples", "tokens": "tokens", "seconds": "seconds", "updates": "max_updates"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="RL-train a policy with a rollout strategy",
        description="Train a policy with a training-time rollout strategy (`samplescope list strategies` lists "
        "every registered one, with its parameters) on a prompt set, under a sample, token or time budget; or "
        "fine-tune a diffusion model (--policy embedded:digits, --strategy SCHEME from `samplescope list schemes`; budgets "
        "samples, nfe, backward_nfe, backward_passes, seconds, updates); checkpoints in the data folder; the result "
        "loads as a model spec.",
    )
    p.add_argument("--name", default=None, help="run name (folder under $SAMPLESCOPE_HOME/training; default STRATEGY-seedSEED)")
    p.add_argument("--policy", default="embedded:arith",
                   help="embedded:arith or hf:FOLDER (default embedded:arith); with --rollouts-only any text model spec, "
                   "e.g. openai:URL")
    p.add_argument("--prompts", default=None,
                   help="arith-train[:LEVEL[:N]] (default arith-train), a task set name or a .jsonl file; text policies")
    p.add_argument("--eval-prompts", default=None, help="held-out prompts (default arith-fresh: 200 unseen problems); text policies")
    p.add_argument("--reward", default="math", help="outcome reward spec (default math)")
    p.add_argument("--reward-control", default=None, help="exact (default), random, inverted or gated_step; text policies")
    p.add_argument("--strategy", default="grpo", help="rollout strategy (default grpo; see `samplescope list strategies`)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE", help="strategy parameter")
    p.add_argument("--train-set", dest="train_params", action="append", default=[], metavar="KEY=VALUE",
                   help="training parameter: learning_rate, kl_coef, clip_eps, eval_every, eval_size, ...")
    p.add_argument("--budget", action="append", default=[], metavar="KIND=CAP", help="samples=N, tokens=N, seconds=S or updates=N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the named run from its last checkpoint")
    p.add_argument("--trainer", choices=("lab", "trl"), default="lab",
                   help="lab: the lab's loop (default); trl: the same strategy inside TRL's GRPOTrainer (engines.training.trl_bridge)")
    p.add_argument("--compare", metavar="S1,S2,...",
                   help="compare these strategies at the matched samples budget, one training run per strategy and seed")
    p.add_argument("--seeds", type=int, default=None, help="seeds per strategy with --compare (0..N-1; default 3)")
    p.add_argument("--rollouts-only", action="store_true",
                   help="draw and filter rollouts without updates (any text model, served ones included): "
                   "what the strategy keeps, at what sample cost; stores nothing")
    add_json(p)
    p.set_defaults(func=run)


def parse_budget(items: list[str], keys: dict[str, str] = BUDGET_KEYS) -> dict[str, str]:
    """``--budget KIND=CAP`` pairs as config fields (``keys`` maps each KIND to its field)."""
    raw = parse_pairs(items, "--budget")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        names = list(keys)
        raise ValueError(f"unknown budget {', '.join(unknown)}; use {', '.join(names[:-1])} or {names[-1]}")
    return {keys[k]: v for k, v in raw.items()}


def stored_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the named run was started with (its run.json), for ``--resume``."""
    from app.workflows.store import training_home

    name = args.name or f"{args.strategy}-seed{args.seed}"
    stored = training_home() / name / "run.json"
    if not stored.exists():
        raise ValueError(f"nothing to resume: no run {name!r} in {training_home()}")
    return json.loads(stored.read_text())


def build_config(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    from engines.training.loop import TrainConfig

    budget = parse_budget(args.budget)
    if args.resume:
        data = stored_settings(args)
        config = TrainConfig.from_dict(data["config"])
        if budget:  # new caps replace the stored ones
            caps = TrainConfig.from_strings(budget)
            config = config.replace(**{k: getattr(caps, k) for k in BUDGET_KEYS.values()})
        return config, data.get("strategy_params", {})
    values = {
        "name": args.name or f"{args.strategy}-seed{args.seed}",
        "policy": args.policy,
        "prompts": "arith-train" if args.prompts is None else args.prompts,
        "eval_prompts": "arith-fresh" if args.eval_prompts is None else args.eval_prompts,
        "reward": args.reward,
        "reward_control": "exact" if args.reward_control is None else args.reward_control,
        "strategy": args.strategy,
        "seed": str(args.seed),
        **parse_pairs(args.train_params, "--train-set"),
        **budget,
    }
    return TrainConfig.from_strings(values), {**RECIPE, **parse_pairs(args.params, "--set")}


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.commands.train_diffusion import is_diffusion_run, run_diffusion
    from app.workflows.store import training_home
    from engines.training import build_strategy
    from engines.training.loop import train
    from engines.training.rollout_policy import check_trainable

    if is_diffusion_run(args):  # diffusion models and schemes: app.commands.train_diffusion
        text_only = [flag for flag, on in (
            ("--compare", args.compare is not None), ("--seeds", args.seeds is not None), ("--rollouts-only", args.rollouts_only),
            ("--trainer trl", getattr(args, "trainer", "lab") == "trl"), ("--prompts", args.prompts is not None),
            ("--eval-prompts", args.eval_prompts is not None), ("--reward-control", args.reward_control is not None),
        ) if on]
        if text_only:
            raise ConfigError(f"{', '.join(text_only)} only work on text policies; a diffusion run takes none of them")
        return run_diffusion(args)
    if args.seeds is not None and args.compare is None:
        raise ConfigError("--seeds goes with --compare; a single run takes --seed")
    if args.rollouts_only and args.train_params:
        raise ConfigError("--rollouts-only makes no update: drop --train-set")
    if args.compare is not None and not args.name:
        args.name = "compare"
    config, params = build_config(args)
    if args.compare is not None:
        return _run_comparison(args, config, params)
    # bad parameters get their one line here, before any work; the typed values are what the run stores
    strategy_params = build_strategy(config.strategy, params, strings=not args.resume).config.as_dict()
    if args.rollouts_only:
        return _run_rollouts_only(args, config, strategy_params)
    check_trainable(config.policy)
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


def _typed_common(strategies: list[str], params: dict[str, str]) -> dict[str, Any]:
    """``--set`` values typed by the first compared strategy that has each field; a field none has is an error."""
    from engines.training import STRATEGIES

    typed: dict[str, Any] = {}
    for name in strategies:
        config = STRATEGIES.get(name).Config
        fields = {spec.name for spec in config.specs()}
        mine = {k: v for k, v in params.items() if k in fields and k not in typed}
        if mine:
            values = config.from_strings(mine).as_dict()
            typed.update({k: values[k] for k in mine})
    unknown = sorted(set(params) - set(typed))
    if unknown:
        raise ValueError(f"no compared strategy has the parameter {', '.join(unknown)}")
    return typed


def _run_comparison(args: argparse.Namespace, config: Any, params: dict[str, str]) -> int:
    from app.workflows.store import training_home
    from engines.training.compare import (
        CellDone,
        StrategyComparison,
        comparison_dir,
        final_points,
        run_comparison,
        stored_cells,
    )
    from engines.training.rollout_policy import check_trainable

    if args.resume or args.rollouts_only or args.trainer != "lab":
        raise ValueError("--compare runs the lab's trainer and continues by itself: drop --resume / --rollouts-only / --trainer")
    seeds = 3 if args.seeds is None else args.seeds
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    strategies = [s.strip() for s in args.compare.split(",") if s.strip()]
    if not strategies:
        raise ValueError("--compare needs at least one strategy name, e.g. --compare grpo,raft")
    check_trainable(config.policy)
    plan = StrategyComparison(name=config.name, strategies=tuple(strategies), seeds=tuple(range(seeds)),
                              config=config, params=_typed_common(strategies, params))
    folder = comparison_dir(training_home(), plan.name)
    bar = _Bar(config, enabled=not args.json and sys.stderr.isatty())
    ran = 0
    for event in run_comparison(plan, folder):
        if isinstance(event, CellDone):
            ran += 1
            bar.close()  # one bar line per run
        elif event.kind == "update":
            bar.update(event)
    bar.close()
    cells = stored_cells(folder)
    finals = final_points(cells, config.samples)
    if args.json:
        print(json.dumps({"name": plan.name, "folder": str(folder), "cells": len(plan.cells()), "done": len(cells),
                          "ran": ran, "final": finals}))
        return 0
    print(f"comparison {plan.name}: {len(cells)}/{len(plan.cells())} runs done ({ran} now), {config.samples} samples each, "
          f"in {folder}")
    print(f"{'strategy':<20} {'seeds':>5} {'T=1 acc':>8} {'95% CI':>17} {'greedy':>8} {'kept':>6}")
    for row in finals:
        t1, greedy, kept = (row.get(k) for k in ("accuracy_t1", "accuracy_greedy", "kept_share"))
        ci = f"[{t1['ci_low']:.3f}, {t1['ci_high']:.3f}]" if t1 else ""
        print(f"{row['strategy']:<20} {row['seeds']:>5} {t1['mean'] if t1 else float('nan'):>8.3f} {ci:>17} "
              f"{greedy['mean'] if greedy else float('nan'):>8.3f} {kept['mean'] if kept else float('nan'):>6.2f}")
    print(f"curves: samplescope report compare:{plan.name} --out report.html")
    return 0


def _run_rollouts_only(args: argparse.Namespace, config: Any, strategy_params: dict[str, Any]) -> int:
    from engines.training.rollouts_only import rollouts_only

    if args.resume or args.trainer != "lab":
        raise ValueError("--rollouts-only stores no checkpoint and runs no trainer: drop --resume / --trainer")
    done = None
    for event in rollouts_only(config, strategy_params):
        if event.kind == "done":
            done = event
    m = done.metrics
    result = {"status": done.status, "message": done.message, **m}
    if args.json:
        print(json.dumps(result))
        return 0
    share = f"{m['kept_share']:.1%}" if m["kept_share"] is not None else "-"
    print(f"{config.strategy} on {m['policy']} (rollouts only, no updates): {m['batches']} batches, {m['samples']} samples, "
          f"{m['tokens']} tokens, {m['seconds']:.1f} s ({done.status}{': ' + done.message if done.message else ''})")
    print(f"kept {m['groups_kept']}/{m['groups_drawn']} groups, {m['samples_kept']}/{m['samples_drawn']} samples ({share})"
          + (f"; {m['samples_per_kept_sample']:.2f} samples and {m['tokens_per_kept_sample']:.1f} tokens per kept sample"
             if m["samples_kept"] else ""))
    if m["drop_rules"]:
        print("dropped groups by rule: " + ", ".join(f"{rule} {n}" for rule, n in sorted(m["drop_rules"].items())))
    if m["reward_mean"] is not None:
        print(f"mean reward of the samples drawn: {m['reward_mean']:.3f}")
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
