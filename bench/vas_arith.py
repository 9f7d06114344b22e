"""Value Augmented Sampling on the reasoning lab: a learned value head against Monte-Carlo values and plain sampling.

    python -m bench.vas_arith [--problems 50] [--arms sample,vas_learned,...]

On the first P problems of ``arith`` with ``embedded:arith`` at T=1, each arm decodes one text per
problem (seed ``seed * 1000 + i``), judged by the ``math`` verifier. Arms:

| arm | sampler | values |
|---|---|---|
| ``sample`` | ``best_of_n``, n=1 | none: one T=1 sample |
| ``greedy`` | ``best_of_n``, n=1, T=0 | none: the policy's most likely tokens |
| ``vas_learned`` | ``vas``, value=learned, β=0.1, 8 valued tokens | the value head of ``scripts/train_arith_value.py`` |
| ``vas_learned_b1`` | the same at β=1 | the same |
| ``vas_learned_mean`` | the same at β=0.1 with the paper's mean value E[r given s, a] in place of the soft one | the same |
| ``vas_learned_mean_sharp`` | the mean value at β=0.02 (a spread of 0.08 in q is a factor e^4) | the same |
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
    "greedy": ("best_of_n", {**FLAT, "n": 1, "temperature": 0.0}),
    "vas_learned": ("vas", {**FLAT, "value": "learned", "beta": 0.1, "candidates": 8}),
    "vas_learned_b1": ("vas", {**FLAT, "value": "learned", "beta": 1.0, "candidates": 8}),
    "vas_learned_mean": ("vas", {**FLAT, "value": "learned", "beta": 0.1, "candidates": 8, "estimator": "mean"}),
    "vas_learned_mean_sharp": ("vas", {**FLAT, "value": "learned", "beta": 0.02, "candidates": 8, "estimator": "mean"}),
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


@torch.no_grad()
def tilt_strength(problems: int, candidates: int = 8) -> dict[str, float]:
    """How far the learned head moves decoding: along a p·q-tilted decode (the soft rule as β → 0) of
    the first ``problems`` problems, the total-variation distance between p over the ``candidates``
    most likely tokens and p·q renormalised, and the spread max q - min q, averaged over steps."""
    from engines.models import load_model
    from engines.models.sampling import warp
    from engines.models.value_head import ValueHead
    from engines.prompts import builtin_prompt_set
    from engines.samplers.vas import VASConfig

    model, head = load_model("embedded:arith"), ValueHead.from_pretrained()
    sampling = VASConfig(**FLAT).sampling()
    distances, spreads = [], []
    for i, task in enumerate(builtin_prompt_set("arith").tasks[:problems]):
        prefix, response, gen = model.encode_task(task), [], torch.Generator().manual_seed(i)
        for _ in range(FLAT["max_new_tokens"]):
            policy = warp(model.next_token_logprobs([prefix + response])[0].float(), sampling)
            tokens = torch.topk(policy, candidates).indices.tolist()
            q = head.success_probabilities(prefix + response, tokens)
            p = policy[tokens].double().softmax(-1)
            tilted = (p * q) / (p * q).sum()
            distances.append(0.5 * float((p - tilted).abs().sum()))
            spreads.append(float(q.max() - q.min()))
            response.append(tokens[int(torch.multinomial(tilted.float(), 1, generator=gen))])
            if response[-1] == model.eos_token_id:
                break
    return {"problems": problems, "steps": len(distances), "mean_tv": statistics.fmean(distances),
            "share_tv_above_0.05": statistics.fmean(d > 0.05 for d in distances), "mean_q_spread": statistics.fmean(spreads)}


def markdown(results: dict[str, Any], command: str) -> str:
    lines = ["# vas on arith: learned value head, Monte-Carlo values, plain sampling", "",
             f"`{command}` (seed {results['seed']}; CPU, 1 thread, shared machine: seconds are indicative only)", "",
             "| arm | problems | accuracy | tokens / problem | model calls | reward calls | seconds |",
             "|---|---|---|---|---|---|---|"]
    for arm, r in results["arms"].items():
        lines.append(f"| {arm} | {r['problems']} | {r['accuracy']:.2f} ± {r['se']:.2f} | {r['tokens']:.0f} | "
                     f"{r['model_calls']:.0f} | {r['reward_calls']:.0f} | {r['seconds']:.1f} |")
    if "tilt" in results:
        t = results["tilt"]
        lines += ["", f"How far the head moves decoding ({t['steps']} steps of a p·q-tilted decode of {t['problems']} "
                      f"problems): mean total-variation distance between p over the 8 most likely tokens and p·q "
                      f"{t['mean_tv']:.4f}, above 0.05 at {t['share_tv_above_0.05']:.1%} of the steps; mean spread of q "
                      f"over those tokens {t['mean_q_spread']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, among {', '.join(ARMS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tilt", type=int, default=10, help="problems for the tilt-strength measurement (0: skip)")
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
    if args.tilt:
        tilt = tilt_strength(args.tilt)
        print(f"tilt: mean TV {tilt['mean_tv']:.4f} over {tilt['steps']} steps, q spread {tilt['mean_q_spread']:.3f}")
        results = json.loads(path.read_text()) if path.exists() else {"seed": args.seed, "arms": {}}
        results["tilt"] = tilt
        path.write_text(json.dumps(results, indent=2) + "\n")
    results = json.loads(path.read_text())
    (RESULTS / "vas_arith.md").write_text(markdown(results, f"python -m bench.vas_arith --problems {args.problems}"))
    return results


if __name__ == "__main__":
    main()
