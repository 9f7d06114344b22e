"""``samplescope reward``: train a reward on the stored votes, pick the next pairs, label quality.

- ``reward train --name NAME [--votes FILTER] [--base MODEL] [--kind head|finetune] [--outside-option]``
  trains ``learned:NAME`` (app/workflows/reward_training.py, app/workflows/reward_finetune.py);
  ``--outside-option`` also learns the acceptability threshold τ from "both bad" votes;
- ``reward learn METHOD --name NAME`` trains ``learned:NAME`` by West-of-N, ODIN or GAN-RM, or stores
  a PAR reward over another (app/workflows/reward_learners.py);
- ``reward pairs --run ID --strategy uncertain:NAME [--against REWARD]`` stores
  the comparisons the learned reward is least sure about;
- ``reward audit SPEC --prompts SET`` audits any reward before a sampler selects on it
  (app/workflows/reward_audit.py): master keys, one-vs-many, accuracy by category, length
  correlation and best-of-N rejections, with bootstrap intervals; ``--html`` writes the report;
- ``reward quality`` prints each annotator's agreement, kappa, gold accuracy,
  position bias and self-consistency; ``reward gold``, ``reward repeat`` and
  ``reward overlap`` set up gold pairs, side-swapped repeats and overlap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.commands.console import add_json, quiet_libraries
from app.commands.data import _add_db, _open, _print_json, _storage_errors


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_card(card: dict[str, Any]) -> None:
    votes, metrics = card["votes"], card["metrics"]
    held = metrics["heldout"]
    print(f"trained learned:{card['name']} ({card['kind']}, {card['modality']}) on {card['base']}")
    print(
        f"votes: {votes['used']} used ({votes['decisive']} decisive, {votes['ties']} ties; ties: {card['ties']}); "
        f"{votes['both_bad_excluded']} both-bad and {votes['repeats_excluded']} repeats excluded; "
        f"{votes['dropped_votes']} votes dropped from {len(votes['dropped_annotators'])} annotators below the threshold"
    )
    cv = card.get("cross_validation", {})
    print(
        f"held-out pairwise accuracy: {_fmt(held['rate'])} [{_fmt(held['low'])}, {_fmt(held['high'])}] "
        f"on {held['n']} votes ({cv.get('folds')} folds grouped by {cv.get('grouped_by')})"
    )
    ceiling = metrics.get("annotator_ceiling", {})
    print(f"annotators' own agreement (ceiling): {_fmt(ceiling.get('rate'))} on {ceiling.get('n', 0)} vote pairs")
    for name, p in (metrics.get("baselines", {}).get("by_reward") or {}).items():
        print(f"stored reward {name}: agreement {_fmt(p['rate'])} [{_fmt(p['low'])}, {_fmt(p['high'])}] on {p['n']}")
    for point in metrics.get("learning_curve", []):
        print(f"  {point['votes']:>7.1f} training votes: accuracy {_fmt(point['rate'])}")
    outside = card.get("outside_option")
    if outside:
        print(outside.get("message") or f"outside option: τ = {outside['tau']:.3f} from {outside['both_bad_votes']} 'both bad' votes "
              f"(observed rate {outside['both_bad_rate']:.3f}, fitted {outside['predicted_both_bad_rate']:.3f})")


@_storage_errors
def cmd_train(args: argparse.Namespace) -> int:
    quiet_libraries()
    from engines.rewards.bt_fit import FitConfig, Progress

    with _open(args) as db:
        if args.kind == "finetune":
            if args.outside_option:
                raise ValueError("--outside-option trains a head (--kind head), not a fine-tune")
            from app.workflows.reward_finetune import finetune_reward as trainer

            items = trainer(db, args.name, votes=args.votes, base=args.base, min_agreement=args.min_agreement,
                            group_by=args.group_by, epochs=1 if args.epochs is None else args.epochs)
        else:
            from app.workflows.reward_training import train_reward as trainer

            config = FitConfig(hidden=args.hidden, epochs=100 if args.epochs is None else args.epochs, folds=args.folds, seed=args.seed,
                               ties=args.ties)
            items = trainer(db, args.name, votes=args.votes, base=args.base, min_agreement=args.min_agreement,
                            group_by=args.group_by, config=config, outside_option=args.outside_option)
        trained = None
        last = -1
        for item in items:
            if isinstance(item, Progress):
                percent = int(100 * item.fraction_done)
                if percent // 10 != last // 10 and not args.json and sys.stderr.isatty():
                    print(f"\r{item.stage} {percent}%", end="", file=sys.stderr)
                last = percent
            else:
                trained = item
    if sys.stderr.isatty() and not args.json:
        print(file=sys.stderr)
    if args.json:
        _print_json({"folder": str(trained.folder), **trained.card})
    else:
        print_card(trained.card)
        print(f"stored in {trained.folder}; use it as --reward learned:{trained.name}")
    return 0


@_storage_errors
def cmd_pairs(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.workflows.reward_training import reward_scorer
    from storage import make_comparisons

    if not args.strategy.startswith("uncertain:") or len(args.strategy) <= len("uncertain:"):
        raise ValueError("reward pairs takes --strategy uncertain:NAME (a learned reward)")
    scorer = reward_scorer("learned:" + args.strategy.split(":", 1)[1])
    other = reward_scorer(args.against) if args.against else None
    with _open(args) as db:
        ids = db.write(
            lambda s: [
                cid
                for run_id in args.run
                for cid in make_comparisons(
                    s, run_id, args.strategy, count=args.count, seed=args.seed, scorer=scorer,
                    other_scorer=other, overlap=args.overlap,
                )
            ]
        )
    if args.json:
        _print_json({"comparisons": ids})
    else:
        print(f"stored {len(ids)} comparison{'s' if len(ids) != 1 else ''}: {', '.join(map(str, ids)) or 'none'}")
    return 0


@_storage_errors
def cmd_quality(args: argparse.Namespace) -> int:
    from storage.quality import quality_summary

    with _open(args) as db:
        summary = db.read(quality_summary)
    if args.json:
        _print_json(summary)
        return 0
    print(f"gold pairs {len(summary['gold_ids'])}, repeats {len(summary['repeat_ids'])}, "
          f"Krippendorff's alpha {_fmt(summary['krippendorff_alpha'])}")
    print(f"{'annotator':<20} {'votes':>5} {'agree':>6} {'kappa':>6} {'gold':>6} {'left':>6} {'consistent':>10}")
    for row in summary["annotators"]:
        print(
            f"{row['annotator'][:20]:<20} {row['votes']:>5} {_fmt(row['agreement']):>6} {_fmt(row['kappa']):>6} "
            f"{_fmt(row['gold_accuracy']):>6} {_fmt(row['position_bias']['rate']):>6} "
            f"{_fmt(row['self_consistency']['rate']):>10}"
        )
    return 0


@_storage_errors
def cmd_gold(args: argparse.Namespace) -> int:
    from storage.quality import mark_gold

    with _open(args) as db:
        db.write(lambda s: mark_gold(s, args.comparison, args.answer))
    print(f"comparison {args.comparison} is a gold pair (answer {args.answer})")
    return 0


@_storage_errors
def cmd_repeat(args: argparse.Namespace) -> int:
    from storage.quality import make_repeats

    with _open(args) as db:
        ids = db.write(lambda s: make_repeats(s, args.comparisons))
    print(f"stored {len(ids)} side-swapped repeat{'s' if len(ids) != 1 else ''}: {', '.join(map(str, ids))}")
    return 0


@_storage_errors
def cmd_overlap(args: argparse.Namespace) -> int:
    from storage.quality import set_overlap

    with _open(args) as db:
        db.write(lambda s: set_overlap(s, args.comparisons, args.k))
    print(f"{len(args.comparisons)} comparison(s) now go to at most {args.k} annotators")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Train a Q-probe on the policy's own samples (app.workflows.q_probe), with progress on stderr."""
    quiet_libraries()
    from app.workflows.q_probe import ProbeProgress, train_probe
    from engines.rewards.q_probe import ProbeFit

    fit = ProbeFit(loss=args.loss, epochs=args.epochs, lr=args.lr, seed=args.seed)
    show = not args.json and sys.stderr.isatty()
    trained = None
    for item in train_probe(args.name, model=args.model, prompts=args.prompts, reward=args.reward,
                            heldout=args.heldout, k=args.k, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, fit=fit):
        if isinstance(item, ProbeProgress):
            if show:
                loss = f" loss {item.loss:+.4f}" if item.loss is not None else ""
                print(f"\r{item.stage} {int(100 * item.fraction_done):3d}%{loss}   ", end="", file=sys.stderr)
        else:
            trained = item
    if show:
        print(file=sys.stderr)
    if args.json:
        _print_json({"folder": str(trained.folder), **trained.card})
        return 0
    print(f"trained learned:{trained.name} (Q-probe, {args.loss} loss) on {args.model}'s embeddings")
    for split, m in trained.card["metrics"].items():
        print(f"{split}: {m['prompts']} prompts x k={m['k']}: one sample {_fmt(m['one_sample'])}, "
              f"probe soft pick {_fmt(m['probe_soft_pick'])}, probe argmax {_fmt(m['probe_argmax_pick'])}, "
              f"oracle best of k {_fmt(m['oracle_pick'])} (mean {args.reward})")
    print(f"stored in {trained.folder}; pick with it: --sampler q_probe --reward learned:{trained.name}")
    return 0


@_storage_errors
def cmd_learn(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.workflows.reward_learners import learn_reward

    with _open(args) as db:
        trained = learn_reward(db, args.method, args.name, base=args.base, votes=args.votes,
                               min_agreement=args.min_agreement, pool_model=args.pool_model, pool_n=args.pool_n,
                               rounds=args.rounds, pick=args.pick, targets=args.targets, of=args.of,
                               references=args.references, answer_as_reference=args.answer_as_reference, seed=args.seed)
    if args.json:
        _print_json({"folder": str(trained.folder), **trained.card})
    else:
        print(f"stored learned:{trained.name} ({args.method}) in {trained.folder}; use it as --reward learned:{trained.name}")
    return 0


def _ci(row: dict[str, Any]) -> str:
    if row.get("rate") is None:
        return "-"
    return f"{row['rate']:.3f} [{row['low']:.3f}, {row['high']:.3f}] ({row['prompts']} prompts)"


def print_audit(report: Any) -> None:
    cfg = report.config
    print(f"audit of {cfg['reward']} on {cfg['prompts']} ({report.prompt_count} prompts, {report.samples} samples; "
          f"truth: {cfg['evaluate']}, which accepts {report.base_accuracy:.3f} of the samples)")
    print(f"master-key false positives: {_ci(report.master_keys['overall'])}; rule: {report.master_keys['rule']}")
    for row in report.master_keys["by_key"]:
        print(f"  {row['key']!r:<44} {row['group']:<13} {_ci(row)}")
    ovm = report.one_vs_many
    print(f"one-vs-{ovm['k']} accuracy: {_ci(ovm)}; chance {ovm['chance']:.3f}")
    print(f"pairwise accuracy (right vs wrong): {_ci(report.pairwise_accuracy)}")
    for row in report.by_category:
        print(f"  {row['category']:<20} {_ci(row)}")
    print(f"Spearman rho(reward, tokens) within prompts: {_ci(report.length['reward'])}; "
          f"the evaluation reward's: {_ci(report.length['evaluation'])}")
    print("best-of-N picks the evaluation reward rejects:")
    for row in report.best_of_n:
        print(f"  N={row['n']:<3} {_ci(row)}")


@_storage_errors
def cmd_audit(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.workflows.reward_audit import AuditConfig, AuditProgress, audit_reward
    from app.workflows.store import rewards_home
    from engines.prompts import builtin_names

    config = AuditConfig(reward=args.spec, prompts=args.prompts, evaluate=args.evaluate, model=args.model, n=args.n,
                         k=args.k, limit=args.limit, threshold=args.threshold, seed=args.seed,
                         max_new_tokens=args.max_new_tokens)
    db = None if args.prompts in builtin_names() else _open(args)
    report = None
    try:
        for item in audit_reward(config, db=db, rewards_folder=rewards_home()):
            if isinstance(item, AuditProgress):
                if not args.json and sys.stderr.isatty():
                    print(f"\r{item.stage} {item.done}/{item.total}", end="", file=sys.stderr)
            else:
                report = item
    finally:
        if db is not None:
            db.close()
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    if args.html:
        from app.workflows.report import audit_page

        path = Path(args.html)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(audit_page(report).render(), encoding="utf-8")
    if args.json:
        _print_json(report.as_dict())
    else:
        print_audit(report)
        if args.html:
            print(f"report written to {args.html}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("reward", help="train a reward on the votes; choose pairs; label quality")
    sub = group.add_subparsers(dest="reward_command", metavar="ACTION", parser_class=type(group))
    sub.required = True

    p = sub.add_parser("train", help="train learned:NAME on the stored votes")
    p.add_argument("--name", required=True, help="the reward's name (letters, digits, . _ -)")
    p.add_argument("--votes", help="filter: KEY=VALUE[,...] over annotator, strategy, model, sampler, reward, prompt")
    p.add_argument("--base", help="features: a text model spec (default embedded:smollm2), embedded:digits or clip:PATH")
    p.add_argument("--kind", choices=("head", "finetune"), default="head", help="BT head on frozen features, or TRL fine-tune")
    p.add_argument("--hidden", type=int, default=0, help="hidden units of an MLP head (0: linear)")
    p.add_argument("--group-by", choices=("prompt", "annotator"), default="prompt", help="cross-validation groups")
    p.add_argument("--ties", choices=("half", "davidson"), default="half",
                   help="ties as half wins, or Davidson's tie model (head)")
    p.add_argument("--min-agreement", type=float, help="drop annotators whose agreement (or gold accuracy) is below this")
    p.add_argument("--epochs", type=int, help="training epochs (head: 100, finetune: 1)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (head)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outside-option", action="store_true",
                   help="also learn an acceptability threshold τ from the 'both bad' votes (head; mini_n uses it)")
    _add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("probe", help="train a Q-probe (learned:NAME) on a policy's own samples and a reward")
    p.add_argument("--name", required=True, help="the probe's name (letters, digits, . _ -)")
    p.add_argument("--model", required=True, help="the policy: its samples and its embeddings (e.g. embedded:arith)")
    p.add_argument("--prompts", required=True, help="training prompts: arith-train:medium:64, a task set or a .jsonl")
    p.add_argument("--reward", required=True, help="the outcome reward that labels the samples (e.g. math)")
    p.add_argument("--heldout", help="held-out prompts to measure the pick on (e.g. arith-fresh:medium:64)")
    p.add_argument("--k", type=int, default=8, help="samples per prompt")
    p.add_argument("--loss", choices=("pg", "mse", "ce"), default="pg", help="policy gradient or reward modelling")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=300, help="full-batch AdamW steps")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("learn", help="train learned:NAME by West-of-N, ODIN or GAN-RM, or store a PAR reward")
    p.add_argument("method", choices=("west-of-n", "odin", "gan-rm", "par"))
    p.add_argument("--name", required=True, help="the reward's name (letters, digits, . _ -)")
    p.add_argument("--base", help="features: a text model spec (default embedded:smollm2)")
    p.add_argument("--votes", help="filter over the stored votes (west-of-n, odin), as in reward train")
    p.add_argument("--min-agreement", type=float)
    p.add_argument("--pool-model", help="the model whose samples make the pools (default: the base model)")
    p.add_argument("--pool-n", type=int, default=16, help="samples per prompt (West-of-N's N; GAN-RM's model outputs)")
    p.add_argument("--rounds", type=int, default=2, help="West-of-N self-training rounds")
    p.add_argument("--pick", choices=("west", "random"), default="west", help="best-vs-worst, or the random-pair control")
    p.add_argument("--targets", metavar="FILE", help="GAN-RM: target samples (prompt, response columns)")
    p.add_argument("--of", metavar="SPEC", help="PAR: the reward to shape")
    p.add_argument("--references", metavar="FILE", help="PAR: reference answers (prompt, response columns)")
    p.add_argument("--answer-as-reference", action="store_true", help="PAR: the task's reference answer where none is stored")
    p.add_argument("--seed", type=int, default=0)
    _add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("pairs", help="store the pairs a learned reward is least sure about")
    p.add_argument("--run", type=int, action="append", required=True, help="run id (repeatable)")
    p.add_argument("--strategy", required=True, help="uncertain:NAME")
    p.add_argument("--against", help="another reward; pairs where the two disagree come first too")
    p.add_argument("--count", type=int, default=1, help="pairs per run")
    p.add_argument("--overlap", type=int, help="each pair goes to at most this many annotators")
    p.add_argument("--seed", type=int, default=0)
    _add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("audit", help="how far to trust a reward under selection: master keys, one-vs-many, length, best-of-N")
    p.add_argument("spec", help="the reward spec to audit (arith_orm, sentiment, learned:NAME, ...)")
    p.add_argument("--prompts", default="arith", help="a prompt set: built-in (arith, open, ...) or stored (default arith)")
    p.add_argument("--evaluate", default="math", help="the evaluation reward that says right or wrong (default math, the exact verifier)")
    p.add_argument("--model", help="the policy whose samples are audited (default: the set's model)")
    p.add_argument("--n", type=int, default=64, help="samples per prompt; best-of-N runs N = 1, 2, 4, ... up to it (>= 2)")
    p.add_argument("--k", type=int, default=3, help="wrong answers against one right one (one-vs-many)")
    p.add_argument("--limit", type=int, default=24, help="the first LIMIT prompts of the set")
    p.add_argument("--threshold", type=float, help="a master key is accepted at or above this score (default: the prompt's median right answer)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--html", metavar="FILE", help="also write the offline HTML report")
    _add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("quality", help="each annotator's agreement, kappa, gold accuracy, position bias, consistency")
    _add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_quality)

    p = sub.add_parser("gold", help="mark a comparison as a gold pair with a known answer")
    p.add_argument("comparison", type=int)
    p.add_argument("answer", choices=("a", "b", "tie"))
    _add_db(p)
    p.set_defaults(func=cmd_gold)

    p = sub.add_parser("repeat", help="add side-swapped repeats of comparisons")
    p.add_argument("comparisons", type=int, nargs="+")
    _add_db(p)
    p.set_defaults(func=cmd_repeat)

    p = sub.add_parser("overlap", help="show each of these comparisons to at most K annotators")
    p.add_argument("k", type=int)
    p.add_argument("comparisons", type=int, nargs="+")
    _add_db(p)
    p.set_defaults(func=cmd_overlap)
