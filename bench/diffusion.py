"""Reward-guided diffusion samplers at matched compute, and where a strong reward weight hacks the reward.

    python -m bench.diffusion [--target 3] [--seeds 10] [--quick] [--methods fk_steering,psi_sampler]

On the embedded digits model (``embedded:digits``, 25 denoising steps) with
the reward ``digit:K`` (the classifier's probability of digit K), for
best-of-N over seeds, Feynman-Kac steering, SVDD, Diffusion Tree
Sampling / Search and Ψ-Sampler, at budgets of 25 to 800 network evaluations
(NFE; one chain costs 25; for Ψ-Sampler, whose MCMC back-propagates through the
network, forward plus backward network passes: ``nfe + backward_nfe``), every
run's pick is measured by:

- **reward**: p(K) under the reward classifier, as the sampler saw it;
- **check: K**: whether the held-out check (a k-NN vote over real digits that
  neither the DDPM nor the classifier saw, with a distance cut; no gradient,
  no shared weights) recognises the picked image, as stored in the trace
  (8-bit PNG), as the digit K;
- **check: digit**: whether the check recognises it as any digit at all.

The second part sweeps the reward weight λ of FK steering at a fixed budget,
derivative-free (resampling only) and with the gradient-guided proposal
(s = λ): selection among the model's own samples keeps digits, while a strong
gradient push produces images that the classifier scores p ≈ 1 but that are
not digits -- reward hacking, exposed by the held-out check. Example picks of
the sweep are saved as an image.

Writes ``bench/results/diffusion.json`` (every run), ``diffusion.md`` (the
tables), ``diffusion.png`` (the plots) and ``diffusion_hacking.png``
(``diffusion_quick.*`` with ``--quick``, so a smoke run keeps the full results).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.measure import RESULTS, machine, save
from engines.models.diffusion import image_from_data_uri

STEPS = 25
BUDGETS = (25, 50, 100, 200, 400, 800)
HACK_LAMBDAS = (10.0, 100.0, 1000.0)
HACK_BUDGET = 200


@dataclass(frozen=True)
class Plan:
    sampler: str
    params: dict[str, Any]
    nfe_cap: int | None = None  # a Budget(nfe=...) for anytime samplers


def matched_plans(lam: float, steps: int = STEPS) -> dict[str, Callable[[int], Plan | None]]:
    """Per method, the configuration that spends (at most) a given NFE budget (None: none fits)."""
    return {
        "best_of_n": lambda b: Plan("best_of_n", {"n": max(1, b // steps), "steps": steps, "batch_size": 64}),
        "fk_steering": lambda b: Plan("fk_steering", {"particles": max(1, b // steps), "lam": lam, "steps": steps}),
        "svdd": lambda b: Plan(
            "svdd", {"particles": 1, "candidates": max(1, (b - 1) // (steps - 1)), "steps": steps}
        ),
        "dts": lambda b: Plan("dts", {"rollouts": 100000, "lam": lam, "steps": steps}, nfe_cap=b),
        "dts_star": lambda b: Plan("dts", {"rollouts": 100000, "lam": lam, "steps": steps, "mode": "search"}, nfe_cap=b),
        "psi_sampler": lambda b: None if (p := psi_params(b, lam, steps)) is None else Plan("psi_sampler", p),
    }


def psi_params(budget: int, lam: float, steps: int = STEPS) -> dict[str, Any] | None:
    """Ψ-Sampler at ``budget`` forward + backward network passes, the paper's defaults (ρ = 0.9,
    the one-step Tweedie estimate, chains thinned to particles): half the budget to the SMC
    particles (``steps`` passes each), the rest to the pCNL chains (each evaluation one forward
    and one backward pass, a chain at least two). None when the budget cannot hold both."""
    particles = max(1, (budget // 2) // steps)
    evaluations = (budget - particles * steps) // 2
    chains = max(1, min(particles // 2, evaluations // 2))
    proposals = evaluations // chains - 1  # after each chain's first evaluation
    if proposals < 1:
        return None
    kept = max(-(-particles // chains), proposals // 2)
    if kept > proposals:
        return None
    return {"particles": particles, "chains": chains, "burn_in": proposals - kept, "mcmc_steps": kept,
            "lam": lam, "steps": steps}


def hacking_plans(budget: int = HACK_BUDGET, steps: int = STEPS) -> dict[str, Plan]:
    plans = {}
    for lam in HACK_LAMBDAS:
        base = {"particles": budget // steps, "lam": lam, "steps": steps}
        plans[f"fk λ={lam:g} (derivative-free)"] = Plan("fk_steering", base)
        plans[f"fk λ={lam:g} + gradient s=λ"] = Plan("fk_steering", {**base, "guidance": lam})
    return plans


def run_plan(plan: Plan, seed: int, target: int, model: Any, reward: Any, check: Any) -> dict[str, Any]:
    from engines.samplers import build_sampler
    from engines.task import Task
    from engines.trace import Budget, collect

    budget = Budget(nfe=plan.nfe_cap) if plan.nfe_cap else None
    sampler = build_sampler(plan.sampler, plan.params)
    trace = collect(sampler.run(Task(prompt=""), model, reward, budget=budget, rng=torch.Generator().manual_seed(seed)))
    pick = trace.selected[0]
    image = trace.nodes[pick].image
    label = check.recognise(image_from_data_uri(image)[None])[0]
    return {
        "seed": seed,
        "status": trace.done.status,
        "reward": trace.scores[pick][reward.name],
        "check_target": label == target,
        "check_digit": label is not None,
        "check_label": label,
        "nfe": trace.done.cost["nfe"],
        "reward_calls": trace.done.cost["reward_calls"],
        "decodes": trace.done.cost.get("decodes", 0),
        "backward_passes": trace.done.cost.get("backward_passes", 0),
        "backward_nfe": trace.done.cost.get("backward_nfe", 0),
        "wall_seconds": trace.done.cost["wall_seconds"],
        "image": image,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    def mean_se(key: str) -> tuple[float, float]:
        values = [float(r[key]) for r in runs]
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        return statistics.fmean(values), se

    reward, reward_se = mean_se("reward")
    target, target_se = mean_se("check_target")
    digit, _ = mean_se("check_digit")
    return {
        "runs": len(runs),
        "reward": reward,
        "reward_se": reward_se,
        "check_target": target,
        "check_target_se": target_se,
        "check_digit": digit,
        "nfe": statistics.fmean(r["nfe"] for r in runs),
        "reward_calls": statistics.fmean(r["reward_calls"] for r in runs),
        "decodes": statistics.fmean(r.get("decodes", 0) for r in runs),
        "backward_passes": statistics.fmean(r.get("backward_passes", 0) for r in runs),
        "backward_nfe": statistics.fmean(r.get("backward_nfe", 0) for r in runs),
        "wall_seconds": statistics.fmean(r["wall_seconds"] for r in runs),
    }


def run_benchmark(
    *, target: int = 3, seeds: int = 10, budgets: tuple[int, ...] = BUDGETS, lam: float = 10.0, log: Callable[[str], None] = print,
    methods: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run both parts (only the matched part for ``methods``, a subset of the matched methods);
    return every run and the summaries (the JSON that ``main`` saves)."""
    from engines.models import load_model
    from engines.models.digits import load_heldout_check
    from engines.rewards import build_reward

    model = load_model("embedded:digits", device="cpu")
    reward = build_reward(f"digit:{target}")
    check = load_heldout_check()
    matched: dict[str, dict[int, dict[str, Any]]] = {}
    for method, plan_for in matched_plans(lam).items():
        if methods is not None and method not in methods:
            continue
        matched[method] = {}
        for budget in budgets:
            plan = plan_for(budget)
            if plan is None:
                continue
            runs = [run_plan(plan, seed, target, model, reward, check) for seed in range(seeds)]
            matched[method][budget] = {"plan": plan.__dict__, "summary": summarise(runs), "runs": runs}
            s = matched[method][budget]["summary"]
            log(
                f"{method:12s} budget {budget:4d}  nfe {s['nfe']:6.1f}  bwd nfe {s['backward_nfe']:5.1f}  reward {s['reward']:.3f}  "
                f"check:{target} {s['check_target']:.2f}  check:digit {s['check_digit']:.2f}  {s['wall_seconds']:.2f}s/run"
            )
    hacking: dict[str, dict[str, Any]] = {}
    for name, plan in (hacking_plans() if methods is None else {}).items():
        runs = [run_plan(plan, seed, target, model, reward, check) for seed in range(seeds)]
        hacking[name] = {"plan": plan.__dict__, "summary": summarise(runs), "runs": runs}
        s = hacking[name]["summary"]
        log(f"{name:34s} reward {s['reward']:.3f}  check:{target} {s['check_target']:.2f}  check:digit {s['check_digit']:.2f}")
    return {
        "target": target,
        "seeds": seeds,
        "steps": STEPS,
        "lambda": lam,
        "budgets": list(budgets),
        "hack_budget": HACK_BUDGET,
        "matched": {m: {str(b): v for b, v in per.items()} for m, per in matched.items()},
        "hacking": hacking,
    }


# -- reporting --------------------------------------------------------------------------------

LABELS = {
    "best_of_n": "best-of-N",
    "fk_steering": "FK steering (λ=10, difference potential)",
    "svdd": "SVDD (M candidates, α=0)",
    "dts": "DTS (λ=10)",
    "dts_star": "DTS* (greedy, as the paper)",
    "psi_sampler": "Ψ-Sampler (λ=10, pCNL start, half the budget)",
}


def markdown(result: dict[str, Any], command: str) -> str:
    target = result["target"]
    lines = [
        f"# Diffusion samplers on `embedded:digits`, reward `digit:{target}`",
        "",
        f"`{command}` -- {result['seeds']} seeds per cell, {result['steps']} denoising steps (one chain = "
        f"{result['steps']} NFE). Machine: {result['machine_line']}.",
        "",
        f"**reward**: p({target}) of the pick under the reward classifier (mean ± s.e.). "
        f"**check: {target}** / **check: digit**: share of picks the held-out k-NN check recognises as a {target} / as "
        "any digit. **NFE**: network evaluations actually used. **reward calls**, **backward**: reward evaluations and "
        "reward backward passes per run (the digits model works in pixel space, so decoding is a clamp and "
        "costs no decodes; on a latent model every reward call here would also be a VAE decode).",
        "",
        "## Quality at matched compute",
        "",
        "**budget**: network passes, forward (NFE) plus backward through the network (backward NFE: Ψ-Sampler's "
        "pCNL chains differentiate the reward through the denoiser, one backward per forward pass).",
        "",
        f"| method | budget | NFE used | backward NFE | reward calls | reward | check: {target} | check: digit | s/run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, per in result["matched"].items():
        for budget, cell in per.items():
            s = cell["summary"]
            lines.append(
                f"| {LABELS[method]} | {budget} | {s['nfe']:.0f} | {s.get('backward_nfe', 0):.0f} | {s['reward_calls']:.0f} | "
                f"{s['reward']:.3f} ± {s['reward_se']:.3f} | "
                f"{s['check_target']:.2f} | {s['check_digit']:.2f} | {s['wall_seconds']:.2f} |"
            )
    if not result["hacking"]:
        return "\n".join([*lines, ""])
    lines += [
        "",
        f"## Reward weight λ and reward hacking (FK steering, {result['hack_budget']} NFE)",
        "",
        f"| configuration | reward calls | backward | reward | check: {target} | check: digit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, cell in result["hacking"].items():
        s = cell["summary"]
        lines.append(
            f"| {name} | {s['reward_calls']:.0f} | {s['backward_passes']:.0f} | {s['reward']:.3f} ± {s['reward_se']:.3f} | "
            f"{s['check_target']:.2f} | {s['check_digit']:.2f} |"
        )
    lines += [
        "",
        "Derivative-free steering only selects among the model's own samples, so even λ = 1000 keeps digits. With the",
        "gradient-guided proposal (s = λ) a strong weight pushes the chain along the classifier's gradient: the",
        f"classifier reports p({target}) ≈ 1 for images the held-out check no longer recognises as digits (see",
        "`diffusion_hacking.png`, one row per configuration, in the table's order).",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = result["target"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method, per in result["matched"].items():
        budgets = [int(b) for b in per]
        rows = [per[str(b)]["summary"] for b in budgets]
        nfe = [r["nfe"] + r.get("backward_nfe", 0) for r in rows]
        axes[0].errorbar(nfe, [r["reward"] for r in rows], yerr=[r["reward_se"] for r in rows], marker="o", capsize=2, label=LABELS[method])
        axes[1].errorbar(
            nfe, [r["check_target"] for r in rows], yerr=[r["check_target_se"] for r in rows], marker="o", capsize=2, label=LABELS[method]
        )
    for ax, title in ((axes[0], f"reward p({target}) of the pick"), (axes[1], f"held-out check: recognised as {target}")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network passes (NFE + backward NFE)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    lams = list(HACK_LAMBDAS)
    for kind, style, colors in (("derivative-free", "-", ("C0", "C2")), ("gradient", "--", ("C1", "C3"))):
        names = [n for n in result["hacking"] if kind in n]
        rows = [result["hacking"][n]["summary"] for n in names]
        if not rows:  # a run of selected methods skips the λ sweep
            continue
        axes[2].plot(lams, [r["reward"] for r in rows], "o" + style, color=colors[0], label=f"reward, {kind}")
        axes[2].plot(lams, [r["check_target"] for r in rows], "s" + style, color=colors[1], label=f"check: {target}, {kind}")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("λ (reward weight)")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_title(f"FK steering at {result['hack_budget']} NFE: reward hacking")
    axes[2].grid(alpha=0.3)
    if result["hacking"]:
        axes[2].legend(fontsize=8, loc="center left")
    else:  # a run of selected methods has no λ sweep
        axes[2].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hacking_examples(result: dict[str, Any], path: Any, per_row: int = 10, scale: int = 6) -> None:
    """The picks of the λ sweep, one labelled row per configuration; a light frame marks the
    picks the held-out check recognised as the target digit, a dark frame the others."""
    from PIL import Image, ImageDraw

    if not result["hacking"]:
        return
    rows = []
    for cell in result["hacking"].values():
        tiles = []
        for run in cell["runs"][:per_row]:
            pixels = ((image_from_data_uri(run["image"])[None][0, 0].numpy() + 1) * 127.5).astype(np.uint8)
            tiles.append(np.pad(pixels, 1, constant_values=200 if run["check_target"] else 90))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    tiles = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    margin = 230
    canvas = Image.new("L", (tiles.width + margin, tiles.height), 255)
    canvas.paste(tiles, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(result["hacking"]):
        draw.text((6, i * 10 * scale + 4 * scale), name.replace("λ", "lambda"), fill=0)
    canvas.save(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, default=3, help="the digit the reward asks for")
    parser.add_argument("--seeds", type=int, default=10, help="runs per cell")
    parser.add_argument("--quick", action="store_true", help="3 seeds and budgets up to 200 (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this model)")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON instead of progress lines")
    parser.add_argument(
        "--methods", default=None, help=f"comma-separated matched methods only, no λ sweep ({', '.join(LABELS)})"
    )
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    if methods is not None and not set(methods) <= set(LABELS):
        parser.error(f"unknown method(s) {', '.join(sorted(set(methods) - set(LABELS)))}; known: {', '.join(LABELS)}")
    torch.set_num_threads(args.threads)
    seeds, budgets = (3, BUDGETS[:4]) if args.quick else (args.seeds, BUDGETS)
    started = time.perf_counter()
    result = run_benchmark(
        target=args.target, seeds=seeds, budgets=budgets, log=(lambda line: None) if args.json else print, methods=methods
    )
    result["seconds"] = time.perf_counter() - started
    info = machine()
    result["machine_line"] = f"{info['processor']}, {info['threads']} torch thread(s), torch {info['torch']}"
    command = "python -m bench.diffusion" + (" --quick" if args.quick else f" --target {args.target} --seeds {seeds}")
    command += f" --methods {','.join(methods)}" if methods else ""
    name = "diffusion_quick" if args.quick else "diffusion"  # a smoke run never overwrites the full results
    name += "_" + "-".join(methods) if methods else ""  # nor does a run of a few methods
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown(result, command))
    plot(result, RESULTS / f"{name}.png")
    hacking_examples(result, RESULTS / f"{name}_hacking.png")
    for section in ("matched", "hacking"):  # the JSON keeps numbers, not images
        cells = result[section].values() if section == "hacking" else [c for per in result[section].values() for c in per.values()]
        for cell in cells:
            for run in cell["runs"]:
                run.pop("image", None)
    path = save(name, result)
    if args.json:
        summaries = {
            "matched": {m: {b: c["summary"] for b, c in per.items()} for m, per in result["matched"].items()},
            "hacking": {name: c["summary"] for name, c in result["hacking"].items()},
        }
        print(json.dumps(summaries, indent=2))
    else:
        print(f"wrote {path}, {RESULTS / f'{name}.md'}, {RESULTS / f'{name}.png'} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
