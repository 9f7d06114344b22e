"""Step-level samplers on the reasoning lab at matched generated-token budgets.

    samplescope bench scaling --part steps [--quick] [--problems P]
    python -m bench.scaling_steps ...

On the first P problems of the ``arith`` task set with ``embedded:arith`` at
T=1, each method runs at sizes K = 4, 8, 16 (N for the flat samplers, K·... for
the others as below); a point is (mean generated tokens per problem, accuracy
of the pick under the ``math`` verifier). Methods at equal tokens are at equal
generation compute; reward calls are reported too.

| method | sampler, size K | reward |
|---|---|---|
| best-of-N (oracle) | ``best_of_n``, n=K | ``math`` (exact outcome: an upper bound) |
| best-of-N (ORM) | ``best_of_n``, n=K | ``arith_orm`` |
| weighted majority | ``weighted_majority``, n=K | ``arith_orm:prob`` |
| best-of-N by the PRM | ``best_of_n``, n=K | ``last:`` the process reward of the final line |
| beam search | ``beam_search``, K/4 beams × 4 | process reward |
| DVTS | ``dvts``, n=K, 4 per subtree | process reward |
| SMC | ``smc``, K particles, λ=10 | process reward (difference potential) |
| CARDS | ``cards``, up to K tries per step, hard threshold 0.5 | process reward |
| early rejection | ``early_rejection``, n=K, α=0.5 at every line | process reward |

The methods are the arms of one sweep (``engines.sweep``, shared with the
Compare tab and ``samplescope sweep``); what K sets per sampler is data
(:data:`SIZE_PARAMS`), not code. Every step-level method runs twice: with the exact process reward
(``arith_steps``, the verifier of each line) and with the learned one
(``arith_prm``). Steps are lines (the lab writes one reduction per line), so
CARDS cuts at newlines here rather than by entropy, and early rejection's
checkpoints fall at line ends (a process reward cannot judge half a line).
Beam search and DVTS finish their last iteration to end-of-text, up to 80 tokens
(the flat samplers' length limit), as search-and-learn does.

Writes ``bench/results/scaling_steps.{json,md,png}`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from bench.measure import RESULTS, accuracy_summary, machine, save

LINE = {"step": "newline", "max_new_tokens": 16, "max_steps": 8, "temperature": 1.0}
PRMS = {"exact": "arith_steps", "learned": "arith_prm"}


def configs(k: int) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """method -> (sampler, reward spec, params) at size k."""
    flat = {"max_new_tokens": 80, "temperature": 1.0, "batch_size": 64}
    out: dict[str, tuple[str, str, dict[str, Any]]] = {
        "bon_oracle": ("best_of_n", "math", {"n": k, **flat}),
        "bon_orm": ("best_of_n", "arith_orm", {"n": k, **flat}),
        "weighted_majority": ("weighted_majority", "arith_orm:prob", {"n": k, **flat}),
    }
    for tag, prm in PRMS.items():
        out[f"bon_{tag}"] = ("best_of_n", f"last:{prm}", {"n": k, **flat})
        out[f"beam_{tag}"] = ("beam_search", prm, {"beams": max(1, k // 4), "expand": 4, "final_tokens": 80, **LINE})
        out[f"dvts_{tag}"] = ("dvts", prm, {"n": k, "expand": 4, "final_tokens": 80, **LINE})
        out[f"smc_{tag}"] = ("smc", prm, {"particles": k, "lam": 10.0, "ess_threshold": 0.5, **LINE})
        out[f"cards_{tag}"] = ("cards", prm, {"mode": "hard", "reward_threshold": 0.5, "alpha": 1.0, "max_retries": k,
                                              "max_tokens": 80, **LINE})
        out[f"early_{tag}"] = ("early_rejection", prm, {"n": k, "rejection_rate": 0.5, "interval": 16, "max_tokens": 80,
                                                        **LINE, "max_steps": 8})
    return out


LABELS = {
    "bon_oracle": "best-of-N, exact verifier (oracle)",
    "bon_orm": "best-of-N, learned ORM",
    "weighted_majority": "ORM-weighted majority",
    **{f"{m}_{t}": f"{name}, {t} PRM" for t in PRMS for m, name in
       (("bon", "best-of-N by the last step"), ("beam", "beam search"), ("dvts", "DVTS"), ("smc", "SMC"), ("cards", "CARDS"), ("early", "early rejection"))},
}


#: what the size K sets for each sampler (engines.sweep.Arm.size_params): the flat ones draw K, a beam
#: search keeps K/4 beams of 4, CARDS retries up to K times a line
SIZE_PARAMS = {"best_of_n": {"n": 1}, "weighted_majority": {"n": 1}, "beam_search": {"beams": 0.25}, "dvts": {"n": 1},
               "smc": {"particles": 1}, "cards": {"max_retries": 1}, "early_rejection": {"n": 1}}


def arms() -> tuple[Any, ...]:
    """The methods as sweep arms, their fixed parameters those of ``configs`` less what the size sets."""
    from engines.sweep import Arm

    out = []
    for method, (sampler, spec, params) in configs(4).items():
        sized = SIZE_PARAMS[sampler]
        out.append(Arm(method, sampler, spec, {k: v for k, v in params.items() if k not in sized}, size_params=sized))
    return tuple(out)


def run_benchmark(problems: int, sizes: list[int], seed: int, log, workers: int = 1) -> dict[str, Any]:
    """Every method at every K: one sweep (engines.sweep) judged by ``math``; seeds ``seed * 1_000_003 + 1_000 * i + K``."""
    from engines.prompts import builtin_prompt_set
    from engines.sweep import SweepPlan, run_sweep

    tasks = builtin_prompt_set("arith").tasks[:problems]
    plan = SweepPlan(arms=arms(), tasks=tasks, levels=tuple(sizes), models=("embedded:arith",), evaluate="math", seed=seed)
    for key in plan.cells():  # the arms give exactly the configs the table documents
        sampler, spec, params = configs(int(key.level))[key.arm]
        request = plan.request(key)
        if (request.sampler, request.reward) != (sampler, spec) or any(request.params[k] != v for k, v in params.items()):
            raise AssertionError(f"{key.arm} at K={key.level:g} does not run the documented config")
    rows: dict[str, dict[int, list[dict]]] = {m: {k: [None] * problems for k in sizes} for m in configs(sizes[0])}
    left = {k: problems * len(rows) for k in sizes}
    summary: dict[str, dict[str, dict[str, float]]] = {m: {} for m in rows}
    started = time.perf_counter()
    for result in run_sweep(plan, workers=workers):
        k = int(result.key.level)
        cost = result.trace.done.cost
        rows[result.key.arm][k][result.key.prompt] = {
            "right": result.quality == 1.0, "tokens": cost["generated_tokens"], "reward_calls": cost["reward_calls"],
            "wall_seconds": cost["wall_seconds"], "status": result.status}
        left[k] -= 1
        if left[k]:
            continue
        for method in rows:
            summary[method][str(k)] = accuracy_summary(rows[method][k], ("tokens", "reward_calls", "wall_seconds"))
        log(f"K={k:>3}: " + ", ".join(f"{m} {summary[m][str(k)]['accuracy']:.2f}@{summary[m][str(k)]['tokens']:.0f}"
                                      for m in summary) + f"  ({time.perf_counter() - started:.0f} s)")
        started = time.perf_counter()
    summary = {m: {str(k): summary[m][str(k)] for k in sizes} for m in summary}
    return {"problems": problems, "sizes": sizes, "seed": seed, "summary": summary}


def findings(s: dict[str, dict[str, dict[str, float]]], sizes: list[int]) -> list[str]:
    """The papers' claims, checked against this run's numbers (no claim is assumed to hold).

    Each search method is compared with best-of-N ranked by the *same* process
    reward (its score after the last line), the baseline the papers use.
    """
    top, low = str(max(sizes)), str(min(sizes))
    out = []

    def holds(a: dict[str, float], b: dict[str, float]) -> str:
        return "holds" if a["accuracy"] >= b["accuracy"] - 2 * b["se"] else "does not hold"

    for tag in PRMS:
        early, bon = s[f"early_{tag}"][top], s[f"bon_{tag}"][top]
        out.append(
            f"Speculative rejection ({tag} PRM), K={top}: {early['accuracy']:.2f} with {early['tokens']:.0f} tokens against "
            f"best-of-{top} by the same reward {bon['accuracy']:.2f} with {bon['tokens']:.0f} tokens "
            f"({early['tokens'] / bon['tokens']:.0%} of the tokens): reaching best-of-N's quality for a fraction of "
            f"the compute {holds(early, bon)} here."
        )
        beam, bon_low = s[f"beam_{tag}"][low], s[f"bon_{tag}"][low]
        out.append(
            f"Beam search ({tag} PRM) at K={low}: {beam['accuracy']:.2f} with {beam['tokens']:.0f} tokens, against "
            f"best-of-{low} by the same reward {bon_low['accuracy']:.2f} with {bon_low['tokens']:.0f} tokens: beam search "
            f"beating best-of-N at a small budget (Snell et al.) {'holds' if beam['accuracy'] > bon_low['accuracy'] + 2 * bon_low['se'] else 'does not hold'} here."
        )
        dvts, beam_top = s[f"dvts_{tag}"][top], s[f"beam_{tag}"][top]
        verdict = "holds" if dvts["accuracy"] > beam_top["accuracy"] + 2 * beam_top["se"] else "does not hold"
        out.append(f"DVTS beating beam search at a large budget (search-and-learn), {tag} PRM, K={top}: "
                   f"{dvts['accuracy']:.2f} against {beam_top['accuracy']:.2f}: {verdict} here.")
        cards = s[f"cards_{tag}"][top]
        out.append(f"CARDS ({tag} PRM, up to {top} tries a line): {cards['accuracy']:.2f} with {cards['tokens']:.0f} tokens, "
                   f"against best-of-{top} by the same reward {bon['accuracy']:.2f} with {bon['tokens']:.0f}.")
    return out


def markdown(result: dict[str, Any], command: str, *, title: str = "Step-level samplers at matched token budgets (reasoning lab)",
             note: str = "", labels: dict[str, str] | None = None) -> str:
    """The results page: the command and machine, one row per method (accuracy, tokens, reward calls
    at every K), the findings and the plot. bench/scaling_adaptive.py writes its page with it too."""
    s, sizes, labels = result["summary"], result["sizes"], labels or LABELS
    lines = [
        f"# {title}",
        "",
        f"`{command}`: {result['problems']} problems of `arith`, `embedded:arith` at T=1, seed {result['seed']};",
        f"{result['machine_line']}; {result['seconds']:.0f} s. Cells: accuracy of the pick ± one standard error",
        f"(mean generated tokens per problem, mean reward calls).{note}",
        "",
        "| method | " + " | ".join(f"K={k}" for k in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for method, per in s.items():
        cells = [f"{per[str(k)]['accuracy']:.2f} ± {per[str(k)]['se']:.2f} ({per[str(k)]['tokens']:.0f} tok, "
                 f"{per[str(k)]['reward_calls']:.0f} rc)" for k in sizes]
        lines.append(f"| {labels[method]} | " + " | ".join(cells) + " |")
    lines += ["", "What the numbers say about the papers' claims:", ""] + [f"- {f}" for f in result["findings"]]
    lines += ["", f"![accuracy against generated tokens]({result['name']}.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, sizes = result["summary"], result["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, tag in zip(axes, PRMS, strict=True):
        for method in ["bon_oracle", "bon_orm", "weighted_majority"] + [m for m in s if m.endswith(f"_{tag}")]:
            rows = [s[method][str(k)] for k in sizes]
            style = "--" if method.startswith(("bon", "weighted")) else "-"
            ax.errorbar([r["tokens"] for r in rows], [r["accuracy"] for r in rows], yerr=[r["se"] for r in rows],
                        fmt=style, marker="o", capsize=2, label=LABELS[method])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("generated tokens per problem")
        ax.set_title(f"{tag} process reward ({PRMS[tag]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("accuracy of the pick")
    axes[0].set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="12 problems, K = 4 and 8 (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="cells in flight at once (the numbers do not depend on it)")
    args = parser.parse_args(argv)
    problems, sizes = (12, [4, 8]) if args.quick else (args.problems, [4, 8, 16])
    if not 1 <= problems <= 200:
        raise ValueError("--problems must be in 1..200")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = run_benchmark(problems, sizes, args.seed, log=(lambda line: None) if args.json else print, workers=args.workers)
    result["seconds"] = time.perf_counter() - started
    result["name"] = "scaling_steps_quick" if args.quick else "scaling_steps"
    result["findings"] = findings(result["summary"], sizes)
    command = "samplescope bench scaling --part steps" + (" --quick" if args.quick else f" --problems {problems}")
    return publish(result, command, markdown, plot, args.json)


def publish(result: dict[str, Any], command: str, page, draw, as_json: bool) -> dict[str, Any]:
    """Write ``result['name']``.md (``page(result, command)``), .png (``draw(result, path)``) and .json;
    print the findings (bench/scaling_adaptive.py publishes through it too)."""
    info = machine()
    result["machine_line"] = f"{info['processor']}, {info['threads']} torch thread(s), torch {info['torch']}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{result['name']}.md").write_text(page(result, command))
    draw(result, RESULTS / f"{result['name']}.png")
    path = save(result["name"], result)
    if as_json:
        print(json.dumps({"summary": result["summary"], "findings": result["findings"]}, indent=2))
    else:
        print("\n".join(result["findings"]))
        print(f"wrote {path} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
