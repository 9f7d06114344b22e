"""Which pair rule and which filter give a reward that holds up: held-out accuracy against labels spent.

    samplescope bench pairs [--quick] [--json] [--seeds S] [--budgets 50,100,200,400]
    python -m bench.pairs ...

The world (everything seeded; the ``bench active`` setup with a reward model in it): P prompts
of K candidates, each a feature vector x ~ N(0, I_D); a hidden reward r*(x) = w . x; a simulated
annotator votes a over b with probability sigmoid(r*(a) - r*(b)) (logistic noise, T = 1). The
rules build pairs with a *reward model* that is not r*: M readings r_m(x) = r*(x) + e_m(x),
e_m ~ N(0, s^2) independent per reading and candidate (an ensemble, or dropout passes), their
mean the construction reward. Per prompt the rule picks one pair, the annotator labels it (one
label spent), the filter may drop it (the label stays spent), and a Bradley-Terry head
(``engines.rewards.bt_fit``, the trainer of ``samplescope reward train``) is fitted on what is
kept. It is scored on held-out prompts: accuracy on the annotator's votes over random pairs there
(ceiling E max(p, 1 - p)) and agreement with r*'s order.

Rules (``engines.pairs``): ``random`` (a uniform pair, the baseline), ``max_min``, the sweet-spot
grid's cells ``max/mu-2sigma`` (the paper's pick), ``max/mu`` and ``mu+sigma/mu-sigma``, ``mcpo``
(beta = 1), ``temporal`` (an earlier model whose candidates sit ``shift`` lower along w, a later
one ``shift`` higher) and ``acecoder`` (pass rates over C exact checks, each passed with
probability sigmoid(r*(x)); AceCoder's thresholds). Filters: ``none``, ``upo`` (keep the less
uncertain half), ``strength`` (keep pairs the readings' mean backs).

Means over S seeds with 95% t-intervals. Writes ``bench/results/pairs.json`` and ``pairs.md``
(``pairs_quick.*`` with ``--quick``). Nothing here is timed.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engines.pairs.grid import grid_pair
from engines.pairs.mcpo import mcpo_pair
from engines.pairs.reliability import apply_filter
from engines.pairs.rules import pass_rate_pairs, temporal_pair

RULES = ("random", "max_min", "grid:max/mu-2sigma", "grid:max/mu", "grid:mu+sigma/mu-sigma", "mcpo", "temporal", "acecoder")
FILTERS = ("none", "upo", "strength")


@dataclass
class World:
    w: np.ndarray  # [D] the hidden reward's weights
    pool: np.ndarray  # [P, K, D] candidates (the later model's, for temporal)
    earlier: np.ndarray  # [P, K, D] the earlier model's candidates (temporal)
    readings: np.ndarray  # [M, P, K] the reward model's readings of pool
    earlier_readings: np.ndarray  # [M, P, K]
    checks: np.ndarray  # [P, K] pass rates over C exact checks
    test: np.ndarray  # [Pt, K, D] held-out prompts
    rng: np.random.Generator


def make_world(seed: int, *, prompts: int = 400, per_prompt: int = 16, dim: int = 16, test_prompts: int = 60,
               scale: float = 2.0, noise: float = 1.0, members: int = 5, shift: float = 0.5, checks: int = 10) -> World:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    w *= scale / np.linalg.norm(w)
    unit = w / np.linalg.norm(w)
    pool = rng.normal(size=(prompts, per_prompt, dim)) + shift * unit
    earlier = rng.normal(size=(prompts, per_prompt, dim)) - shift * unit

    def read(x: np.ndarray) -> np.ndarray:
        return (x @ w)[None] + rng.normal(scale=noise, size=(members, *x.shape[:2]))

    passes = rng.random(size=(prompts, per_prompt, checks)) < 1 / (1 + np.exp(-(pool @ w)))[..., None]
    return World(w, pool, earlier, read(pool), read(earlier), passes.mean(axis=2),
                 rng.normal(size=(test_prompts, per_prompt, dim)), rng)


def choose(rule: str, world: World, k: int, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(x_first, x_second, readings_first, readings_second) of prompt k's pair under ``rule``, or None."""
    reward = world.readings[:, k].mean(axis=0)
    if rule == "random":
        i, j = world.rng.choice(len(reward), size=2, replace=False)
    elif rule == "max_min":
        i, j = int(np.argmax(reward)), int(np.argmin(reward))
    elif rule.startswith("grid:"):
        hi, lo = rule[5:].split("/")
        pair = grid_pair(reward.tolist(), hi, lo)
        if pair is None:
            return None
        i, j = pair.chosen, pair.rejected
    elif rule == "mcpo":
        pair = mcpo_pair(reward.tolist(), gen, beta=1.0)
        if pair is None:
            return None
        i, j = pair.chosen, pair.rejected
    elif rule == "temporal":
        pair = temporal_pair(world.earlier_readings[:, k].mean(axis=0).tolist(), reward.tolist())
        if pair is None:
            return None
        return (world.pool[k, pair.chosen], world.earlier[k, pair.rejected],
                world.readings[:, k, pair.chosen], world.earlier_readings[:, k, pair.rejected])
    elif rule == "acecoder":
        pairs = pass_rate_pairs(world.checks[k].tolist(), max_pairs=1)
        if not pairs:
            return None
        i, j = pairs[0].chosen, pairs[0].rejected
    else:
        raise ValueError(f"unknown rule {rule!r}")
    return world.pool[k, i], world.pool[k, j], world.readings[:, k, i], world.readings[:, k, j]


def labelled_pairs(rule: str, world: World, budget: int, seed: int) -> dict[str, np.ndarray]:
    """Up to ``budget`` pairs, one per prompt in order, each labelled by the annotator: winner first."""
    gen = torch.Generator().manual_seed(seed)
    win, lose, rw, rl, truth = [], [], [], [], []
    for k in range(len(world.pool)):
        if len(win) >= budget:
            break
        pair = choose(rule, world, k, gen)
        if pair is None:
            continue
        xa, xb, ra, rb = pair
        p = 1 / (1 + math.exp(-float((xa - xb) @ world.w)))
        a_wins = world.rng.random() < p
        win.append(xa if a_wins else xb)
        lose.append(xb if a_wins else xa)
        rw.append(ra if a_wins else rb)
        rl.append(rb if a_wins else ra)
        truth.append(a_wins == (p > 0.5))  # the label agrees with the hidden reward's order
    return {"win": np.array(win), "lose": np.array(lose), "readings_win": np.array(rw).T,
            "readings_lose": np.array(rl).T, "agrees": np.array(truth, dtype=bool)}


def heldout(world: World, seed: int) -> tuple[Any, Any, float]:
    from engines.rewards.bt_fit import PairData

    rng = np.random.default_rng(seed + 10_000)
    xa, xb, y, truth, ceiling = [], [], [], [], []
    for block in world.test:
        for i, j in zip(*np.triu_indices(len(block), k=1), strict=True):
            p = 1 / (1 + math.exp(-float((block[i] - block[j]) @ world.w)))
            xa.append(block[i])
            xb.append(block[j])
            y.append(1.0 if rng.random() < p else 0.0)
            truth.append(1.0 if p > 0.5 else 0.0)
            ceiling.append(max(p, 1 - p))
    a, b = torch.tensor(np.array(xa)).float(), torch.tensor(np.array(xb)).float()
    zeros = np.zeros(len(y))
    return PairData(a, b, torch.tensor(y), zeros), PairData(a, b, torch.tensor(truth), zeros), float(np.mean(ceiling))


def run_cell(world: World, rule: str, filt: str, budget: int, seed: int, tests: tuple[Any, Any]) -> dict[str, float]:
    from engines.rewards.bt_fit import FitConfig, PairData, correct_count, fit_head

    data = labelled_pairs(rule, world, budget, seed)
    spent = len(data["agrees"])
    if spent < 2:
        return {"spent": spent, "kept": 0, "label_agreement": float("nan"), "accuracy": float("nan"), "hidden_order": float("nan")}
    verdict = apply_filter(filt, data["readings_win"], data["readings_lose"])
    win, lose = data["win"].copy(), data["lose"].copy()
    win[verdict.flip], lose[verdict.flip] = data["lose"][verdict.flip], data["win"][verdict.flip]
    agrees = np.where(verdict.flip, ~data["agrees"], data["agrees"])[verdict.keep]
    keep = verdict.keep
    if keep.sum() < 2:
        return {"spent": spent, "kept": int(keep.sum()), "label_agreement": float("nan"), "accuracy": float("nan"), "hidden_order": float("nan")}
    # half the kept pairs shown winner-first, half loser-first, so the head has both outcomes
    xa, xb = torch.tensor(win[keep]).float(), torch.tensor(lose[keep]).float()
    swap = torch.arange(len(xa)) % 2 == 1
    xa2, xb2 = torch.where(swap[:, None], xb, xa), torch.where(swap[:, None], xa, xb)
    y = (~swap).double()
    head = fit_head(PairData(xa2, xb2, y, np.zeros(len(y))), FitConfig(epochs=100, curve=(1.0,)), seed=seed)
    votes, order = tests
    c, n = correct_count(head, votes)
    ct, nt = correct_count(head, order)
    return {"spent": spent, "kept": int(keep.sum()), "label_agreement": float(agrees.mean()), "accuracy": c / n, "hidden_order": ct / nt}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval (0 for one value)."""
    from scipy.stats import t

    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    if len(values) < 2:
        return values[0], 0.0
    return statistics.fmean(values), float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def main(argv: list[str] | None = None) -> int:
    from bench.measure import publish

    parser = argparse.ArgumentParser(prog="samplescope bench pairs", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, budgets 50,100, fewer rules")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budgets", default="50,100,200", help="labels spent, comma-separated")
    parser.add_argument("--noise", type=float, default=1.0, help="the reward model's noise s (r* has scale 2)")
    args = parser.parse_args(argv)
    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        parser.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    rules = RULES
    if args.quick:
        args.seeds, budgets, rules = 2, [50, 100], ("random", "max_min", "grid:max/mu-2sigma", "mcpo")
    if args.seeds < 1 or not budgets or min(budgets) < 2:
        parser.error("need --seeds >= 1 and budgets >= 2")
    torch.set_num_threads(1)  # tiny full-batch fits: one thread is fastest (this process only)
    cells: dict[str, dict[str, list[dict[str, float]]]] = {}
    ceilings = []
    for seed in range(args.seeds):
        tests = heldout(make_world(seed, noise=args.noise), seed)
        ceilings.append(tests[2])
        for rule in rules:
            for filt in FILTERS:
                for budget in budgets:
                    world = make_world(seed, noise=args.noise)  # the same world for every cell of a seed
                    row = run_cell(world, rule, filt, budget, seed, tests[:2])
                    cells.setdefault(f"{rule} | {filt}", {}).setdefault(str(budget), []).append(row)
    summary = {}
    for key, by_budget in cells.items():
        summary[key] = {}
        for budget, rows in by_budget.items():
            out = {}
            for metric in ("spent", "kept", "label_agreement", "accuracy", "hidden_order"):
                m, h = mean_ci([r[metric] for r in rows])
                out[metric], out[f"{metric}_ci"] = m, h
            summary[key][budget] = out
    result = {"setup": {"seeds": args.seeds, "budgets": budgets, "noise": args.noise, "rules": list(rules),
                        "filters": list(FILTERS)}, "ceiling": statistics.fmean(ceilings), "cells": summary}
    name = "pairs_quick" if args.quick else "pairs"
    header = "| rule | filter | " + " | ".join(f"{b} labels: accuracy (kept, label agreement)" for b in budgets) + " |"
    lines = [header, "|---|---|" + "---:|" * len(budgets)]
    for key, by_budget in summary.items():
        rule, filt = key.split(" | ")
        parts = []
        for b in budgets:
            c = by_budget[str(b)]
            parts.append(f"{c['accuracy']:.3f} ± {c['accuracy_ci']:.3f} ({c['kept']:.0f}, {c['label_agreement']:.2f})")
        lines.append(f"| `{rule}` | {filt} | " + " | ".join(parts) + " |")
    table = "\n".join(lines)
    publish(name, result, f"Pair rules and filters, {args.seeds} seeds, reward-model noise {args.noise}, annotator ceiling "
            f"{result['ceiling']:.3f} (mean ± 95% t-interval half-width)", table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
