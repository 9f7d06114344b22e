"""Test-time scaling on the reasoning lab: accuracy against N and against generated tokens.

    samplescope bench scaling [--quick] [--json] [--problems P] [--max-n 64] [--part flat|steps|adaptive|all]
    python -m bench.scaling ...

On the first P problems of the ``arith`` task set (the default level) with
``embedded:arith`` at temperature 1, for N = 1, 2, 4, ..., max-n, every method
draws N candidates and picks one; the pick counts as right when the ``math``
verifier accepts its final answer.

| method | sampler | reward |
|---|---|---|
| oracle best-of-N | ``best_of_n`` | ``math`` (the exact verifier: an upper bound) |
| best-of-N, learned ORM | ``best_of_n`` | ``arith_orm`` |
| majority vote | ``majority`` | none (self-consistency; ``math`` only labels) |
| reward-weighted majority | ``weighted_majority`` | ``arith_orm:prob`` |
| knockout, pairwise ORM | ``knockout`` (stochastic) | ``pairwise:arith_orm`` |

The methods are the arms of one sweep (``engines.sweep``, the engine the
Compare tab and ``samplescope sweep`` use). Every method runs with the same
seed per (problem, N) and the same batch size, so all of them choose among the same N candidates: the differences are
the selection rules, paired on identical samples. The knockout draws each
winner with P(a beats b) = σ(r_a - r_b): with deterministic winners a
tournament over a scalar's Bradley-Terry view is exactly best-of-N by that
scalar, so only the stochastic one adds a curve.

Check of the oracle: best-of-N with the exact verifier is right iff one of the
N samples is, so its accuracy should match pass@N, estimated without bias
(Chen et al. 2021, "Evaluating Large Language Models Trained on Code") from
each problem's correct count among its max-n oracle candidates. Where the
learned-ORM curve falls away from the oracle as N grows (over-optimisation of
an imperfect reward), the table shows the gap; nothing here tunes it away.

Writes ``bench/results/scaling.json``, ``scaling.md`` (the table) and
``scaling.png`` (the plots); ``scaling_quick.*`` with ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.measure import RESULTS, accuracy_summary, machine, save
from engines.sweep_stats import pass_at_k

METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "oracle": ("best_of_n", "math", {}),
    "bon_orm": ("best_of_n", "arith_orm", {}),
    "majority": ("majority", "math", {}),
    "weighted_majority": ("weighted_majority", "arith_orm:prob", {}),
    "knockout": ("knockout", "pairwise:arith_orm", {"stochastic": True}),
}
LABELS = {
    "oracle": "best-of-N, exact verifier (oracle)",
    "bon_orm": "best-of-N, learned ORM",
    "majority": "majority vote",
    "weighted_majority": "ORM-weighted majority",
    "knockout": "knockout, pairwise ORM (stochastic)",
}
#: what a method runs at sizes below its sampler's minimum: a one-player knockout is its player
FALLBACKS: dict[str, tuple[str, str, dict[str, Any]]] = {"knockout": ("best_of_n", "arith_orm", {})}
MAX_NEW_TOKENS = 80


BASE = {"batch_size": 64, "max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0}


def arms() -> tuple[Any, ...]:
    """The methods as sweep arms. A one-player knockout is its player: below the knockout's
    minimum of two the arm falls back to best-of-1 by the ORM (the same one sample)."""
    from engines.sweep import Arm

    out = []
    for method, (sampler, reward, extra) in METHODS.items():
        spare = FALLBACKS.get(method)
        fallback = Arm(method, spare[0], spare[1], {**BASE, **spare[2]}) if spare else None
        out.append(Arm(method, sampler, reward, {**BASE, **extra}, fallback=fallback))
    return tuple(out)


def oracle_counts(task: Any, trace: Any) -> dict[str, int]:
    """How many of the run's candidates the exact verifier accepts (for the pass@N estimate)."""
    return {"correct_candidates": sum(1 for c in trace.candidates if trace.scores.get(c, {}).get("math") == 1.0),
            "candidates": len(trace.candidates)}


def cell_row(result: Any) -> dict[str, Any]:
    cost = result.trace.done.cost
    row = {"right": result.quality == 1.0, "tokens": cost["generated_tokens"], "reward_tokens": cost["reward_tokens"],
           "wall_seconds": cost["wall_seconds"]}
    if result.key.arm == "oracle":
        row.update(result.extra)
    return row


def run_benchmark(problems: int, ns: list[int], seed: int, log: Callable[[str], None], workers: int = 1) -> dict[str, Any]:
    """Every method at every N on the first ``problems`` arith problems: one sweep (engines.sweep), the
    ``math`` verifier as its evaluation reward; cell seeds ``seed * 1_000_003 + 1_000 * problem + N``."""
    from engines.prompts import builtin_prompt_set
    from engines.sweep import SweepPlan, run_sweep

    tasks = builtin_prompt_set("arith").tasks[:problems]
    plan = SweepPlan(arms=arms(), tasks=tasks, levels=tuple(ns), models=("embedded:arith",), evaluate="math", seed=seed)
    runs: dict[str, dict[str, list[dict]]] = {m: {str(n): [None] * problems for n in ns} for m in METHODS}
    left = {n: problems * len(METHODS) for n in ns}
    started = time.perf_counter()
    for result in run_sweep(plan, workers=workers, extra=oracle_counts):
        n = int(result.key.level)
        runs[result.key.arm][str(n)][result.key.prompt] = cell_row(result)
        left[n] -= 1
        if left[n] == 0:
            accs = {m: statistics.fmean(r["right"] for r in runs[m][str(n)]) for m in METHODS}
            log(f"N={n:>3}: " + ", ".join(f"{m} {a:.3f}" for m, a in accs.items())
                + f"  ({time.perf_counter() - started:.0f} s)")
            started = time.perf_counter()
    return {"problems": problems, "ns": ns, "seed": seed, "runs": runs, "summary": summarise(runs, ns)}


def summarise(runs: dict[str, dict[str, list[dict]]], ns: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, per in runs.items():
        out[method] = {}
        for n in ns:
            out[method][str(n)] = accuracy_summary(per[str(n)], ("tokens", "wall_seconds"))
    top = runs["oracle"][str(max(ns))]
    per_sample = [r["correct_candidates"] / r["candidates"] for r in top]
    out["per_sample_accuracy"] = statistics.fmean(per_sample)
    out["pass_at_n"] = {
        str(n): statistics.fmean(pass_at_k(r["candidates"], r["correct_candidates"], n) for r in top) for n in ns
    }
    return out


def markdown(result: dict[str, Any], command: str) -> str:
    s, ns = result["summary"], result["ns"]
    head = "| N | pass@N (estimate) | " + " | ".join(LABELS[m] for m in METHODS) + " | ORM gap to oracle |"
    lines = [
        "# Test-time scaling on the reasoning lab",
        "",
        f"`{command}`: {result['problems']} problems of the `arith` task set, `embedded:arith` at T=1,",
        f"seed {result['seed']}; {result['machine_line']}; {result['seconds']:.0f} s.",
        "",
        "Accuracy of the pick (the `math` verifier), ± one standard error over problems. All methods",
        "choose among the same N samples per problem. pass@N is estimated from each problem's correct",
        f"count among its {max(ns)} oracle candidates (per-sample accuracy {s['per_sample_accuracy']:.3f}); the",
        "oracle column should track it. The last column is oracle minus best-of-N with the learned ORM.",
        "",
        head,
        "|" + "---|" * (len(METHODS) + 3),
    ]
    for n in ns:
        cells = [f"{s[m][str(n)]['accuracy']:.3f} ± {s[m][str(n)]['se']:.3f}" for m in METHODS]
        gap = s["oracle"][str(n)]["accuracy"] - s["bon_orm"][str(n)]["accuracy"]
        lines.append(f"| {n} | {s['pass_at_n'][str(n)]:.3f} | " + " | ".join(cells) + f" | {gap:+.3f} |")
    lines += [
        "",
        "Generated tokens per problem (mean; the same for every method at a given N, as they share samples):",
        "",
        "| N | " + " | ".join(str(n) for n in ns) + " |",
        "|" + "---|" * (len(ns) + 1),
        "| tokens | " + " | ".join(f"{s['oracle'][str(n)]['tokens']:.0f}" for n in ns) + " |",
        "",
        "![accuracy against N and against generated tokens](scaling.png)",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, ns = result["summary"], result["ns"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for method in METHODS:
        rows = [s[method][str(n)] for n in ns]
        for ax, xs in ((axes[0], ns), (axes[1], [r["tokens"] for r in rows])):
            ax.errorbar(xs, [r["accuracy"] for r in rows], yerr=[r["se"] for r in rows], marker="o", capsize=2, label=LABELS[method])
    axes[0].plot(ns, [s["pass_at_n"][str(n)] for n in ns], "k:", label="pass@N estimate")
    for ax, xlabel in ((axes[0], "N (samples per problem)"), (axes[1], "generated tokens per problem")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy of the pick")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"arith, {result['problems']} problems: accuracy against N")
    axes[1].set_title("accuracy against generated tokens")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200, help="problems of the arith task set (max 200)")
    parser.add_argument("--max-n", type=int, default=64, help="largest N (powers of two from 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20 problems, N up to 16 (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this model)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of progress lines")
    parser.add_argument("--workers", type=int, default=1,
                        help="cells in flight at once (the cells, and so the numbers, do not depend on it)")
    parser.add_argument("--part", choices=("flat", "steps", "adaptive", "all"), default="all",
                        help="flat samplers against N, step-level samplers at matched tokens (bench/scaling_steps.py), "
                             "both, or adaptive-compute and soft-selection samplers (bench/scaling_adaptive.py)")
    args = parser.parse_args(argv)
    if args.part == "adaptive":
        from bench import scaling_adaptive

        forwarded = ["--seed", str(args.seed), "--threads", str(args.threads), "--workers", str(args.workers)]
        return scaling_adaptive.main(forwarded + (["--quick"] if args.quick else []) + (["--json"] if args.json else []))
    if args.part != "flat":
        from bench import scaling_steps

        forwarded = ["--seed", str(args.seed), "--threads", str(args.threads), "--workers", str(args.workers)]
        forwarded += ["--quick"] if args.quick else []
        forwarded += ["--json"] if args.json else []
        steps = scaling_steps.main(forwarded)
        if args.part == "steps":
            return steps
    problems, max_n = (20, 16) if args.quick else (args.problems, args.max_n)
    if not 1 <= problems <= 200 or max_n < 1:
        raise ValueError("--problems must be in 1..200 and --max-n >= 1")
    torch.set_num_threads(args.threads)
    ns = [2**i for i in range(int(math.log2(max_n)) + 1)]
    started = time.perf_counter()
    result = run_benchmark(problems, ns, args.seed, log=(lambda line: None) if args.json else print, workers=args.workers)
    result["seconds"] = time.perf_counter() - started
    info = machine()
    result["machine_line"] = f"{info['processor']}, {info['threads']} torch thread(s), torch {info['torch']}"
    command = "samplescope bench scaling" + (" --quick" if args.quick else f" --problems {problems} --max-n {max_n}")
    name = "scaling_quick" if args.quick else "scaling"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown(result, command).replace("(scaling.png)", f"({name}.png)"))
    plot(result, RESULTS / f"{name}.png")
    path = save(name, result)
    if args.json:
        print(json.dumps(result["summary"], indent=2))
    else:
        print(f"wrote {path}, {RESULTS / f'{name}.md'}, {RESULTS / f'{name}.png'} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
