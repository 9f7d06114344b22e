"""``samplescope steer-or-train``: steer the base diffusion model or fine-tune it, at matched compute.

    samplescope steer-or-train --reward digit:3 --samplers best_of_n,fk_steering,svdd,dts --sizes 1,4,16 \\
        --schemes dpok --train-samples 256 --finetuned-sizes 1,4 --amortize 1000 --prompts 16

fine-tunes the digits DDPM with each scheme (its run under the data folder's ``training/``), runs the
steering samplers on the base model and best-of-N on each fine-tuned model, and prints every point:
quality with its 95% bootstrap interval, the held-out k-NN check, and compute per delivered image
(NFE, backward NFE, backward passes, wall seconds; training spread over ``--amortize`` images).
The result is stored as ``training/steer-or-train/NAME.json``; ``samplescope report steer:NAME
--out report.html`` draws it. Scheme parameters: ``--scheme-set dpok.batch_size=8`` (repeatable).
"""

from __future__ import annotations

import argparse
import json
import sys

from app.commands.console import add_json, parse_pairs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("steer-or-train", help="steering the base diffusion model vs fine-tuning it, at matched compute",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="steer-or-train", help="the stored result's name (report steer:NAME)")
    p.add_argument("--reward", default="digit:3", help="the image reward both steer and train towards")
    p.add_argument("--evaluate", help="the evaluation reward (default: the reward)")
    p.add_argument("--samplers", default="best_of_n,fk_steering,svdd,dts", help="steering samplers on the base model")
    p.add_argument("--sizes", default="1,4,16", help="sizes of the steering samplers (N, particles, rollouts)")
    p.add_argument("--schemes", default="dpok", help="diffusion rollout schemes to fine-tune with (empty: none)")
    p.add_argument("--scheme-set", action="append", default=[], metavar="SCHEME.KEY=VALUE", help="a scheme parameter")
    p.add_argument("--train-samples", type=int, default=256, help="training budget per scheme, in samples")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--finetuned-sizes", default="1,4", help="best-of-N sizes on each fine-tuned model (1: plain sampling)")
    p.add_argument("--amortize", type=int, default=1000, help="images a fine-tuned model generates: its training compute is spread over them")
    p.add_argument("--prompts", type=int, default=16, help="images per point (each its own seed; the bootstrap unit)")
    p.add_argument("--steps", type=int, help="denoising steps for every sampler and scheme (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(func=run, quiet_libraries=True)


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def _sizes(text: str, flag: str) -> tuple[int, ...]:
    from engines.errors import ConfigError

    try:
        return tuple(int(v) for v in _names(text))
    except ValueError:
        raise ConfigError(f"{flag} takes whole numbers separated by commas, got {text!r}") from None


def build_plan(args: argparse.Namespace):
    from engines.errors import ConfigError
    from engines.steer_or_train import SteerOrTrainPlan
    from engines.training.diffusion import SCHEMES

    schemes = _names(args.schemes)
    raw: dict[str, dict[str, str]] = {}
    for key, value in parse_pairs(args.scheme_set, "--scheme-set").items():
        scheme, dot, field = key.partition(".")
        if not dot or scheme not in schemes:
            raise ConfigError(f"--scheme-set takes SCHEME.KEY=VALUE for a scheme in --schemes, got {key!r}")
        raw.setdefault(scheme, {})[field] = value
    scheme_params = {}
    for scheme, values in raw.items():
        typed = SCHEMES.get(scheme).Config.from_strings(values).as_dict()  # one line on a bad value
        scheme_params[scheme] = {k: typed[k] for k in values}
    return SteerOrTrainPlan(
        name=args.name, reward=args.reward, evaluate=args.evaluate, samplers=_names(args.samplers),
        sizes=_sizes(args.sizes, "--sizes"), schemes=schemes, scheme_params=scheme_params,
        train_samples=args.train_samples, learning_rate=args.learning_rate,
        finetuned_sizes=_sizes(args.finetuned_sizes, "--finetuned-sizes"), amortize_images=args.amortize,
        prompts=args.prompts, steps=args.steps, seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    from app.workflows.steer_or_train import point_table, result_path, run_and_store

    plan = build_plan(args)
    result_path(plan.name)  # the name's check, before any work
    result, path = run_and_store(plan, progress=None if args.json else lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({**result.as_dict(), "stored": str(path)}, default=str))
        return 0
    headers, rows = point_table(result.points())
    print("\t".join(headers))
    for row in rows:
        print("\t".join("–" if v is None else str(v) for v in row))
    print(f"stored: {path} (samplescope report steer:{plan.name} --out report.html)")
    return 0
