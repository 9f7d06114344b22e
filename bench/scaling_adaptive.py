"""Adaptive-compute and soft-selection samplers on the reasoning lab, against generated tokens.

    samplescope bench scaling --part adaptive [--quick] [--problems P]
    python -m bench.scaling_adaptive ...

On the first P problems of ``arith`` with ``embedded:arith`` at T=1, each method runs at
sizes K = 1, 2, 4, 8, 16 (32 without ``--quick``); a point is (mean generated tokens per
problem, accuracy of the pick under the ``math`` verifier). The adaptive methods spend
fewer tokens than their budget K; the x axis of the plot is what they really spent.

| method | sampler, size K | reward |
|---|---|---|
| best-of-N (oracle) | ``best_of_n``, n=K | ``math`` (exact: an upper bound) |
| best-of-N (ORM) | ``best_of_n``, n=K | ``arith_orm`` |
| majority vote | ``majority``, n=K | none (``math`` only labels) |
| soft best-of-k, exact | ``soft_best_of_k``, k=K, T=0.5 | ``math`` |
| soft best-of-k, ORM | ``soft_best_of_k``, k=K, T=0.5 | ``arith_orm`` (logit; misspecified) |
| mini-N, exact | ``mini_n``, N=K, m=max(1, K/4), τ=1 | ``math`` (stop at the first right answer) |
| mini-N, ORM | ``mini_n``, N=K, m=max(1, K/4), τ=0.9 | ``arith_orm:prob`` |
| DeepConf-low / -high | ``deepconf``, N=K, warm-up max(1, K/2), window 8, η=10 / 90, consensus 0.95 | none (``math`` only labels) |
| ZIP-RC | ``zip_rc``, at most K samples, 4 running, a decision every 8 tokens, α=β=0.05, the trained joint head | ``math`` on finished samples |
| dual-phase budget, exact / learned PRM | ``dual_phase``, k=K a line, cap 2K, τ=0.9 | ``arith_steps`` / ``arith_prm`` |
| beam search with early rejection, learned PRM | ``beam_early_reject``, K/4 beams x 4, scored after 3 tokens, rank cut | ``arith_prm`` (partial scores) |
| adaptive restart | ``adaptive_restart``, at most K samples, the trained head's P(restart better): prune > 0.3 at 8 tokens, stop ≤ 0.1; T from 0 (greedy) towards 1, γ=0.5 | ``math`` (picks among the finished) |
| VAS, learned value | ``vas``, value=learned, β=0.1, the K most likely tokens valued (one text at any K; K=1 is greedy) | ``math`` (its value head) |

DeepConf's window is 8 tokens (the paper's 2,048 is longer than any arith solution, ~28
tokens); its warm-up is half the budget (the paper's 16 of 512 would be under one trace
here, and a one-trace warm-up always meets the 0.95 consensus at once). Dual-phase gets
K samples a line (a line is about a third of a solution, so its worst case is about
best-of-K's tokens) and may carry savings up to 2K. GenSelect is not here: its judge must read a window of solutions, which the
arith policy's 256-token context cannot hold, and the embedded SmolLM2 is no judge of
arithmetic (FINDINGS.md); run it with a served judge (``judge=openai:URL``).

The methods are the arms of one sweep (``engines.sweep``); what K sets per sampler is data
(:data:`SIZE_PARAMS`). Writes ``bench/results/scaling_adaptive.{json,md,png}`` (``_quick``
with ``--quick``).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Any

import torch

from bench.measure import accuracy_summary
from bench.scaling_steps import markdown, publish

FLAT = {"max_new_tokens": 80, "temperature": 1.0}
LINE = {"step": "newline", "max_new_tokens": 16, "max_steps": 8, "temperature": 1.0}
SOFT_T = 0.5

METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bon_oracle": ("best_of_n", "math", {**FLAT, "batch_size": 64}),
    "bon_orm": ("best_of_n", "arith_orm", {**FLAT, "batch_size": 64}),
    "majority": ("majority", "math", {**FLAT, "batch_size": 64}),
    "soft_exact": ("soft_best_of_k", "math", {**FLAT, "batch_size": 64, "selection_temperature": SOFT_T}),
    "soft_orm": ("soft_best_of_k", "arith_orm", {**FLAT, "batch_size": 64, "selection_temperature": SOFT_T}),
    "mini_n_exact": ("mini_n", "math", {**FLAT, "threshold": 1.0}),
    "mini_n_orm": ("mini_n", "arith_orm:prob", {**FLAT, "threshold": 0.9}),
    "deepconf_low": ("deepconf", "math", {**FLAT, "batch_size": 64, "window": 8, "keep_percent": 10.0}),
    "deepconf_high": ("deepconf", "math", {**FLAT, "batch_size": 64, "window": 8, "keep_percent": 90.0}),
    "zip_rc": ("zip_rc", "math", {**FLAT, "width": 4, "interval": 8, "compute_cost": 0.05, "latency_cost": 0.05}),
    "dual_exact": ("dual_phase", "arith_steps", {**LINE, "confidence": 0.9}),
    "dual_learned": ("dual_phase", "arith_prm", {**LINE, "confidence": 0.9}),
    "beam_er_learned": ("beam_early_reject", "arith_prm", {**LINE, "expand": 4, "prefix_tokens": 3, "final_tokens": 64}),
    "adaptive_restart": ("adaptive_restart", "math", {**FLAT, "checkpoint_tokens": 8, "prune_threshold": 0.3,
                                                      "stop_threshold": 0.1, "first_temperature": 0.0, "anneal_rate": 0.5}),
    "vas_learned": ("vas", "math", {**FLAT, "value": "learned", "beta": 0.1}),
}
LABELS = {
    "bon_oracle": "best-of-N, exact verifier (oracle)",
    "bon_orm": "best-of-N, learned ORM",
    "majority": "majority vote",
    "soft_exact": f"soft best-of-k (T={SOFT_T}), exact verifier",
    "soft_orm": f"soft best-of-k (T={SOFT_T}), learned ORM",
    "mini_n_exact": "mini-N in-loop, exact verifier (τ=1)",
    "mini_n_orm": "mini-N in-loop, ORM P(right) (τ=0.9)",
    "deepconf_low": "DeepConf-low (η=10%)",
    "deepconf_high": "DeepConf-high (η=90%)",
    "zip_rc": "ZIP-RC, learned joint head (α=β=0.05)",
    "dual_exact": "dual-phase budget, exact PRM",
    "dual_learned": "dual-phase budget, learned PRM",
    "beam_er_learned": "beam search, early rejection after 3 tokens, learned PRM",
    "adaptive_restart": "adaptive restart, learned P(restart better)",
    "vas_learned": "VAS, learned value head (β=0.1), K valued tokens",
}
#: what the size K sets for each sampler (engines.sweep.Arm.size_params: max(1, int(K * factor)))
SIZE_PARAMS = {
    "best_of_n": {"n": 1}, "majority": {"n": 1}, "soft_best_of_k": {"n": 1},
    "mini_n": {"n": 1, "mini_n": 0.25}, "deepconf": {"n": 1, "warmup": 0.5},
    "zip_rc": {"samples": 1},
    "dual_phase": {"samples_per_step": 1, "max_per_step": 2},
    "beam_early_reject": {"beams": 0.25},
    "adaptive_restart": {"max_samples": 1},
    "vas": {"candidates": 1},
}


def arms() -> tuple[Any, ...]:
    from engines.sweep import Arm

    return tuple(Arm(m, sampler, spec, params, size_params=SIZE_PARAMS[sampler])
                 for m, (sampler, spec, params) in METHODS.items())


def run_benchmark(problems: int, sizes: list[int], seed: int, log, workers: int = 1) -> dict[str, Any]:
    """Every method at every K: one sweep judged by ``math``; seeds ``seed * 1_000_003 + 1_000 * i + K``."""
    from engines.prompts import builtin_prompt_set
    from engines.sweep import SweepPlan, run_sweep

    tasks = builtin_prompt_set("arith").tasks[:problems]
    plan = SweepPlan(arms=arms(), tasks=tasks, levels=tuple(sizes), models=("embedded:arith",), evaluate="math", seed=seed)
    rows: dict[str, dict[int, list[dict]]] = {m: {k: [None] * problems for k in sizes} for m in METHODS}
    left = {k: problems * len(METHODS) for k in sizes}
    summary: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METHODS}
    started = time.perf_counter()
    for result in run_sweep(plan, workers=workers):
        k = int(result.key.level)
        cost = result.trace.done.cost
        rows[result.key.arm][k][result.key.prompt] = {
            "right": result.quality == 1.0, "tokens": cost["generated_tokens"], "reward_calls": cost["reward_calls"]}
        left[k] -= 1
        if left[k]:
            continue
        for method in METHODS:
            summary[method][str(k)] = accuracy_summary(rows[method][k], ("tokens", "reward_calls"))
        log(f"K={k:>3}: " + ", ".join(f"{m} {summary[m][str(k)]['accuracy']:.2f}@{summary[m][str(k)]['tokens']:.0f}"
                                      for m in METHODS) + f"  ({time.perf_counter() - started:.0f} s)")
        started = time.perf_counter()
    summary = {m: {str(k): summary[m][str(k)] for k in sizes} for m in METHODS}
    return {"problems": problems, "sizes": sizes, "seed": seed, "summary": summary}


def findings(s: dict[str, dict[str, dict[str, float]]], sizes: list[int]) -> list[str]:
    """The papers' claims, checked against this run (none assumed to hold)."""
    top = str(max(sizes))
    target = s["bon_oracle"][top]
    out = []
    for method in ("mini_n_exact", "mini_n_orm", "deepconf_low", "deepconf_high", "dual_exact", "dual_learned",
                   "adaptive_restart"):
        reached = [(int(k), v) for k, v in s[method].items() if v["accuracy"] >= target["accuracy"] - 2 * target["se"]]
        if reached:
            k, v = min(reached, key=lambda kv: kv[1]["tokens"])
            out.append(f"{LABELS[method]} reaches best-of-{top}'s accuracy with the exact verifier ({target['accuracy']:.2f}, "
                       f"{target['tokens']:.0f} tokens) within 2 SE at K={k}: {v['accuracy']:.2f} with {v['tokens']:.0f} tokens "
                       f"({v['tokens'] / target['tokens']:.0%} of them).")
        else:
            best = max(s[method].values(), key=lambda v: v["accuracy"])
            out.append(f"{LABELS[method]} does not reach best-of-{top}'s accuracy ({target['accuracy']:.2f}) at any K here "
                       f"(best {best['accuracy']:.2f} with {best['tokens']:.0f} tokens).")
    for method in ("soft_orm", "soft_exact"):
        accs = {int(k): v["accuracy"] for k, v in s[method].items()}
        peak = max(accs, key=lambda k: (accs[k], -k))
        shape = "peaks at a finite k" if peak < max(sizes) and accs[peak] - accs[max(sizes)] > 2 * s[method][top]["se"] \
            else "does not fall off from its peak by more than 2 SE by the largest k"
        out.append(f"{LABELS[method]}: best k = {peak} ({accs[peak]:.2f}), at k={top} {accs[max(sizes)]:.2f}: it {shape}.")
    return out


def plot(result: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, sizes = result["summary"], result["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = {m: plt.cm.tab20(i / len(METHODS)) for i, m in enumerate(METHODS)}  # 11 curves: one colour each
    for method in METHODS:
        rows = [s[method][str(k)] for k in sizes]
        style = "--" if method.startswith(("bon", "majority")) else "-"
        axes[0].errorbar([r["tokens"] for r in rows], [r["accuracy"] for r in rows], yerr=[r["se"] for r in rows],
                         fmt=style, marker="o", capsize=2, label=LABELS[method], color=colours[method])
    for method in ("bon_oracle", "bon_orm", "soft_exact", "soft_orm"):
        rows = [s[method][str(k)] for k in sizes]
        axes[1].errorbar(sizes, [r["accuracy"] for r in rows], yerr=[r["se"] for r in rows], marker="o", capsize=2,
                         label=LABELS[method], color=colours[method])
    axes[0].set_xlabel("generated tokens per problem")
    axes[0].set_title("accuracy against generated tokens")
    axes[1].set_xlabel("k (samples)")
    axes[1].set_title("soft best-of-k: exact verifier against a misspecified ORM")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_ylabel("accuracy of the pick")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20 problems, K up to 16 (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="cells in flight at once (the numbers do not depend on it)")
    args = parser.parse_args(argv)
    problems, sizes = (20, [1, 2, 4, 8, 16]) if args.quick else (args.problems, [1, 2, 4, 8, 16, 32])
    if not 1 <= problems <= 200:
        raise ValueError("--problems must be in 1..200")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = run_benchmark(problems, sizes, args.seed, log=(lambda line: None) if args.json else print, workers=args.workers)
    result["seconds"] = time.perf_counter() - started
    result["name"] = "scaling_adaptive_quick" if args.quick else "scaling_adaptive"
    result["findings"] = findings(result["summary"], sizes)
    command = "samplescope bench scaling --part adaptive" + (" --quick" if args.quick else f" --problems {problems}")
    page = partial(markdown, title="Adaptive compute and soft selection at matched token budgets (reasoning lab)",
                   note=" K is the budget; adaptive methods spend less.", labels=LABELS)
    return publish(result, command, page, plot, args.json)

if __name__ == "__main__":
    main()
