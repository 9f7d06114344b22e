"""``samplescope pareto``: trace the Pareto front of two rewards by turning a preference direction (DPA).

At each angle θ the sampler is steered by ``direction:θ:R1,R2`` (v = (cos θ, sin θ), reward v · r)
at the same seed; the picks' reward vectors and the exact non-dominated set are printed
(app/workflows/pareto.py, engines/pareto.py). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from app.commands.console import add_json, parse_pairs, quiet_libraries


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pareto",
        help="trace the Pareto front of two rewards over preference directions",
        description="For each angle, run the sampler steered by v·r with v = (cos θ, sin θ) over two rewards "
        "(Directional Preference Alignment, arXiv:2402.18571); print each pick's reward vector and the front.",
    )
    p.add_argument("--rewards", required=True, help="two reward specs, R1,R2 (e.g. sentiment,length:20)")
    p.add_argument("--angles", default="0:90:7", help="degrees in [0, 90]: 0,15,30 or START:STOP:COUNT (default 0:90:7)")
    p.add_argument("--model", default="embedded:smollm2", help="model spec (default embedded:smollm2)")
    p.add_argument("--sampler", default="best_of_n", help="sampler name (default best_of_n)")
    p.add_argument("--n", type=int, help="the sampler's size (n, particles, beams, ...)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE", help="sampler parameter")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a few; points are means)")
    p.add_argument("--raw", action="store_true", help="do not wrap the prompt in the model's chat template")
    p.add_argument("--seed", type=int, default=0, help="random seed, the same at every angle (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.workflows.pareto import trace_dial
    from engines.pareto import FrontResult

    result = None
    for done, total, item in trace_dial(model=args.model, rewards=args.rewards, angles=args.angles, prompts=args.prompt,
                                        sampler=args.sampler, n=args.n, params=parse_pairs(args.params, "--set"),
                                        params_are_strings=True, seed=args.seed, chat=not args.raw, device=args.device):
        if isinstance(item, FrontResult):
            result = item
        else:
            print(f"[{done}/{total}] {item.angle:g}°: r = ({', '.join(f'{v:.4g}' for v in item.values)})",
                  file=sys.stderr, flush=True)
    assert result is not None
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, default=float))
        return 0
    from app.cli import one_line

    print(f"{result.sampler} on {result.dimensions[0]} vs {result.dimensions[1]}, seed {result.seed}, "
          f"{len(result.prompts)} prompt(s)")
    print(f"{'angle':>6}  {'r1':>9}  {'r2':>9}  {'v.r':>9}  front  pick")
    for p in result.points:
        print(f"{p.angle:>6g}  {p.values[0]:>9.4g}  {p.values[1]:>9.4g}  {p.score:>9.4g}  {'*' if p.on_front else ' ':^5}  "
              f"{one_line(' '.join(p.picks[0].split()), 80)}")
    print(f"front: {len(result.front)} of {len(result.points)} points; "
          f"{int(result.cost.get('generated_tokens', 0))} tokens, {int(result.cost.get('reward_calls', 0))} reward calls")
    return 0
