"""``samplescope pairs``: build training pairs with a pair rule and a reliability filter.

    samplescope pairs --prompts arith --limit 20 --rule grid:max/mu-2sigma --n 16 --out prefs.jsonl
    samplescope pairs --prompts arith --rule grid:all --n 16             # all 21 cells of the sweet-spot grid
    samplescope pairs --prompt "Describe a cat." --rule mcpo --beta 0.5 --n 8
    samplescope pairs --prompts arith --rule temporal --earlier embedded:arith --model hf:/path/to/rl-policy
    samplescope pairs --prompts arith --rule acecoder --n 16              # pass rates over the exact checks
    samplescope pairs --prompts arith --rule max_min --reward arith_orm --filter strength --readings arith_orm,math

The runs are stored and the kept pairs become comparisons (strategy = the rule) for the Label tab
and ``samplescope export``; ``--no-save`` stores nothing, ``--out FILE.jsonl`` writes TRL
preference rows. The work is ``app/workflows/pair_building.py``; the rules are ``engines.pairs``.
"""

from __future__ import annotations

import argparse

from app.commands.console import add_json, quiet_libraries
from app.commands.data import _add_db, _open, _print_json, _storage_errors


def _short(text: str, limit: int = 60) -> str:
    from app.cli import one_line

    return one_line(text.strip(), limit)


@_storage_errors
def cmd_pairs(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.workflows.pair_building import build_pairs, plan_from_inputs

    if args.earlier is not None and args.rule != "temporal":
        raise ValueError(f"--earlier goes with --rule temporal, not {args.rule}")
    if args.beta is not None and args.rule != "mcpo":
        raise ValueError(f"--beta goes with --rule mcpo, not {args.rule}")
    readings = tuple(s.strip() for s in (args.readings or "").split(",") if s.strip())
    options = {"n": args.n, "filter": args.filter, "readings": readings, "keep": args.keep, "earlier_model": args.earlier,
               "beta": 1.0 if args.beta is None else args.beta, "seed": args.seed, "max_new_tokens": args.max_new_tokens}
    if args.no_save:
        plan = plan_from_inputs(model=args.model, reward=args.reward, rule=args.rule, prompt_set=args.prompts,
                                prompts=args.prompt or (), limit=args.limit, **options)
        result = build_pairs(plan, out=args.out)
    else:
        with _open(args) as db:
            plan = plan_from_inputs(model=args.model, reward=args.reward, rule=args.rule, prompt_set=args.prompts,
                                    prompts=args.prompt or (), limit=args.limit, db=db, **options)
            result = build_pairs(plan, db=db, out=args.out)
    if args.json:
        _print_json(result.summary())
        return 0
    print(f"{plan.strategy} pairs, filter {plan.filter}: {len(result.pairs)} built from {len(result.prompts)} prompts "
          f"(N = {plan.n}, {plan.model}, reward {plan.reward}), {len(result.kept)} kept")
    for pair in result.pairs[:40]:
        mark = "kept" if pair.kept else "dropped"
        print(f"  [{mark}] {pair.rule}: {_short(pair.chosen)!s} ({pair.chosen_reward:.3g}) > "
              f"{_short(pair.rejected)!s} ({pair.rejected_reward:.3g})  on {_short(pair.prompt, 40)}")
    if len(result.pairs) > 40:
        print(f"  ... {len(result.pairs) - 40} more")
    if result.comparison_ids:
        print(f"stored {len(result.run_ids)} runs and {len(result.comparison_ids)} comparisons (strategy {plan.strategy})")
    if args.out:
        print(f"wrote {len(result.kept)} TRL preference rows to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pairs", help="build training pairs: sweet-spot grid, MC-PO, temporal, AceCoder; UPO / strength filters",
                       description=__doc__.splitlines()[0])
    source = p.add_argument_group("prompts")
    source.add_argument("--prompts", metavar="SET", help="a stored or built-in prompt set (arith, open, ...)")
    source.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
    source.add_argument("--limit", type=int, help="the first K prompts of the set")
    p.add_argument("--rule", required=True, help="max_min, sweet_spot, grid:HI/LO (points min, mu-2sigma, mu-sigma, mu, "
                   "mu+sigma, mu+2sigma, max), grid:all, mcpo, temporal, acecoder")
    p.add_argument("--model", help="the model (default: the set's model, else embedded:smollm2); temporal: the later model")
    p.add_argument("--earlier", metavar="MODEL", help="temporal: the earlier model, whose worst answer is the rejected")
    p.add_argument("--reward", help="the reward that scores the candidates (default: the set's)")
    p.add_argument("--n", type=int, default=8, help="candidates per prompt (N >= 2)")
    p.add_argument("--filter", default="none", help="none, upo (keep the less uncertain pairs) or strength (a vote of rewards)")
    p.add_argument("--readings", metavar="R1,R2", help="the rewards the filter reads each pair with (an ensemble)")
    p.add_argument("--keep", type=float, default=0.5, help="upo: the share of favoured pairs kept")
    p.add_argument("--beta", type=float, default=None, help="mcpo: the kernel's temperature (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    p.add_argument("--out", metavar="FILE.jsonl", help="write the kept pairs as TRL preference rows")
    p.add_argument("--no-save", action="store_true", help="store no runs or comparisons")
    _add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_pairs)
