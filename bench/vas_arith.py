"""Value Augmented Sampling on the reasoning lab: a learned value head against Monte-Carlo values and plain sampling.

    python -m bench.vas_arith [--problems 50] [--arms sample,vas_learned,...]

On the first P problems of ``arith`` with ``embedded:arith`` at T=1, each arm decodes one text per
problem (seed ``seed * 1000 + i``), judged by the ``math`` verifier. Arms:

| arm | sampler | values |
|---|---|---|
| ``sample`` | ``best_of_n``, n=1 | none: one T=1 sample |
| ``vas_learned`` | ``vas``, value=learned, β=0.1, 8 valued tokens | the value head of ``scripts/train_arith_value.py`` |
| ``vas_learned_b1`` | the same at β=1 | the same |
| ``vas_rollouts`` | ``vas``, value=rollouts, β=0.1, 4 valued tokens, 2 rollouts each | ``math`` on Monte-Carlo continuations |

A row reports accuracy (± its standard error), and per problem: generated tokens (rollouts
included), model calls (the policy's forward passes, plus the value head's), reward calls and wall
seconds. Arms can run separately (``--arms``); each run merges its arms into
``bench/results/vas_arith.json`` and rewrites ``vas_arith.md`` from all stored arms.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
FLAT = {"max_new_tokens": 80, "temperature": 1.0}
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "sample": ("best_of_n", {**FLAT, "n": 1}),
    "vas_learned": ("vas", {**FLAT, "value": "learned", "beta": 0.1, "candidates": 8}),
    "vas_learned_b1": ("vas", {**FLAT, "value": "learned", "beta": 1.0, "candidates": 8}),
    "vas_rollouts": ("vas", {**FLAT, "value": "rollouts", "beta": 0.1, "candidates": 4, "rollouts": 2}),
}


def run_arm(arm: str, problems: int, seed: int, log) -> dict[str, Any]:
    from engines.models import load_model
    from engines.prompts import builtin_prompt_set
    from engines.rewards import build_reward
    from engines.samplers import build_sampler
    from engines.trace import collect

    sampler_name, params = ARMS[arm]
    model, reward = load_model("embedded:arith"), build_reward("math")
    sampler = build_sampler(sampler_name, params)
    rows = []
    for i, task in enumerate(builtin_prompt_set("arith").tasks[:problems]):
        started = time.perf_counter()
        trace = collect(sampler.run(task, model, reward, rng=torch.Generator().manual_seed(seed * 1000 + i)))
        (pick,) = trace.done.picks
        (right,) = reward.score(task, [trace.full_text(pick)])
        cost = trace.done.cost
        rows.append({"right": right == 1.0, "tokens": cost["generated_tokens"], "model_calls": cost["model_calls"],
                     "reward_calls": cost["reward_calls"], "seconds": time.perf_counter() - started})
    accuracy = statistics.fmean(r["right"] for r in rows)
    out = {"sampler": sampler_name, "params": params, "problems": problems, "accuracy": accuracy,
           "se": math.sqrt(accuracy * (1 - accuracy) / problems),
           **{k: statistics.fmean(r[k] for r in rows) for k in ("tokens", "model_calls", "reward_calls", "seconds")}}
    log(f"{arm}: accuracy {accuracy:.2f} ± {out['se']:.2f}, {out['tokens']:.0f} tokens, {out['model_calls']:.0f} model "
        f"calls, {out['reward_calls']:.0f} reward calls, {out['seconds']:.1f} s a problem")
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    lines = ["# vas on arith: learned value head, Monte-Carlo values, plain sampling", "",
             f"`{command}` (seed {results['seed']}; CPU, 1 thread, shared machine: seconds are indicative only)", "",
             "| arm | problems | accuracy | tokens / problem | model calls | reward calls | seconds |",
             "|---|---|---|---|---|---|---|"]
    for arm, r in results["arms"].items():
        lines.append(f"| {arm} | {r['problems']} | {r['accuracy']:.2f} ± {r['se']:.2f} | {r['tokens']:.0f} | "
                     f"{r['model_calls']:.0f} | {r['reward_calls']:.0f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, among {', '.join(ARMS)}")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not 1 <= args.problems <= 200:
        raise SystemExit(f"unknown arm(s) {unknown} or --problems outside 1..200")
    torch.set_num_threads(args.threads)
    path = RESULTS / "vas_arith.json"
    for arm in arms:
        row = run_arm(arm, args.problems, args.seed, print)
        # read just before writing: another run may have stored its arms meanwhile
        results = json.loads(path.read_text()) if path.exists() else {}
        if results.get("seed") != args.seed:
            results = {"seed": args.seed, "arms": {}}
        results["arms"][arm] = row
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "vas_arith.md").write_text(markdown(results, f"python -m bench.vas_arith --problems {args.problems}"))
    return results


if __name__ == "__main__":
    main()
