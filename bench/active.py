"""Choosing what to label next: random pairs against ``uncertain:`` pairs, with a simulated annotator.

    samplescope bench active [--quick] [--json] [--seeds S] [--budget B] [--dim D]
    python -m bench.active ...

Setup (everything seeded): a pool of P prompts with K candidates each, every
candidate a feature vector x ~ N(0, I_D) (standing in for frozen embeddings);
a hidden reward r*(x) = w . x with w ~ N(0, I_D / D) scaled so that a typical
pair is neither obvious nor a coin flip; a simulated annotator votes a over b
with probability sigmoid((r*(a) - r*(b)) / T) (logistic noise, T = 1).

Both strategies start from the same B0 random labels, then add labels in
rounds of R until the budget B:

- ``random``: R pairs drawn uniformly from the unlabelled pairs of the pool;
- ``uncertain``: the Bradley-Terry head fitted so far (``engines.rewards.bt_fit``,
  the trainer ``samplescope reward train`` uses) scores every candidate, and the
  R unlabelled pairs with the highest priority of ``storage.pairs.pair_priority``
  (P(a beats b) closest to 1/2) are labelled next.

After each round the head is refitted on all labels so far and scored on
held-out prompts (never in the pool): accuracy against the annotator's own
noisy votes there (what the app reports; its ceiling is E max(p, 1 - p)), and
agreement with the hidden reward's order (noise-free). Means and standard
errors over S seeds. One torch thread (the fits are tiny). The machine was
shared with other jobs while this ran; nothing here is timed.

Writes ``bench/results/active.json``, ``active.md`` and ``active.png``
(``active_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import numpy as np
import torch

from bench.measure import RESULTS, publish
from engines.rewards.bt_fit import FitConfig, PairData, correct_count, fit_head
from storage.pairs import pair_priority

STRATEGIES = ("random", "uncertain")


def world(seed: int, prompts: int, per_prompt: int, dim: int, test_prompts: int, scale: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim) * scale / math.sqrt(dim)
    pool = rng.normal(size=(prompts, per_prompt, dim))
    test = rng.normal(size=(test_prompts, per_prompt, dim))
    return {"w": w, "pool": pool, "test": test, "rng": rng}


def vote(rng: np.random.Generator, w: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> tuple[float, float]:
    """(the annotator's outcome, P(a beats b)) for one pair."""
    p = 1 / (1 + math.exp(-float((xa - xb) @ w)))
    return (1.0 if rng.random() < p else 0.0), p


def heldout_set(env: dict[str, Any], seed: int) -> tuple[PairData, np.ndarray, float]:
    rng = np.random.default_rng(seed + 10_000)
    xa, xb, y, truth, ceiling = [], [], [], [], []
    for block in env["test"]:
        for i, j in zip(*np.triu_indices(len(block), k=1), strict=True):
            outcome, p = vote(rng, env["w"], block[i], block[j])
            xa.append(block[i])
            xb.append(block[j])
            y.append(outcome)
            truth.append(1.0 if p > 0.5 else 0.0)
            ceiling.append(max(p, 1 - p))
    data = PairData(torch.tensor(np.array(xa)).float(), torch.tensor(np.array(xb)).float(), torch.tensor(y), np.zeros(len(y)))
    return data, np.array(truth), float(np.mean(ceiling))


def run_strategy(strategy: str, seed: int, args: argparse.Namespace, config: FitConfig) -> list[dict[str, float]]:
    env = world(seed, args.prompts, args.per_prompt, args.dim, args.test_prompts, args.scale)
    pool, w = env["pool"], env["w"]
    test, truth, _ = heldout_set(env, seed)
    truth_data = PairData(test.xa, test.xb, torch.tensor(truth).float(), test.groups)
    rng = np.random.default_rng(seed + 1)  # the same first labels for both strategies
    unlabelled = [(k, i, j) for k in range(len(pool)) for i, j in zip(*np.triu_indices(pool.shape[1], k=1), strict=True)]
    labelled: list[tuple[int, int, int, float]] = []

    def label(chosen: list[tuple[int, int, int]]) -> None:
        for key in chosen:
            unlabelled.remove(key)
            k, i, j = key
            labelled.append((k, i, j, vote(rng, w, pool[k, i], pool[k, j])[0]))

    start = [unlabelled[t] for t in rng.choice(len(unlabelled), size=args.start, replace=False)]
    label(start)
    points = []
    while True:
        xa = torch.tensor(np.array([pool[k, i] for k, i, _, _ in labelled])).float()
        xb = torch.tensor(np.array([pool[k, j] for k, _, j, _ in labelled])).float()
        y = torch.tensor([o for *_, o in labelled])
        head = fit_head(PairData(xa, xb, y, np.zeros(len(y))), config, seed=seed)
        c, n = correct_count(head, test)
        ct, nt = correct_count(head, truth_data)
        points.append({"labels": len(labelled), "accuracy": c / n, "truth_agreement": ct / nt})
        if len(labelled) >= args.budget:
            return points
        take = min(args.round, args.budget - len(labelled))
        if strategy == "random":
            chosen = [unlabelled[t] for t in rng.choice(len(unlabelled), size=take, replace=False)]
        else:
            with torch.no_grad():
                scores = head(torch.tensor(pool.reshape(-1, pool.shape[2])).float()).numpy().reshape(pool.shape[:2])
            free = set(unlabelled)
            ranked = []
            for k in range(len(pool)):
                ia, ib, priority = pair_priority(scores[k])
                ranked += [(float(pr), (k, int(i), int(j))) for i, j, pr in zip(ia, ib, priority, strict=True) if (k, int(i), int(j)) in free]
            ranked.sort(key=lambda t: -t[0])
            chosen = [key for _, key in ranked[:take]]
        label(chosen)


def summarise(runs: dict[str, list[list[dict[str, float]]]]) -> dict[str, list[dict[str, float]]]:
    out = {}
    for strategy, seeds in runs.items():
        rows = []
        for step in range(len(seeds[0])):
            acc = [s[step]["accuracy"] for s in seeds]
            agree = [s[step]["truth_agreement"] for s in seeds]
            se = lambda v: statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0  # noqa: E731
            rows.append({"labels": seeds[0][step]["labels"], "accuracy": statistics.fmean(acc), "accuracy_se": se(acc),
                         "truth_agreement": statistics.fmean(agree), "truth_agreement_se": se(agree)})
        out[strategy] = rows
    return out


def plot(summary: dict[str, list[dict[str, float]]], ceiling: float, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax, title in (("accuracy", axes[0], "held-out accuracy on the annotator's votes"),
                           ("truth_agreement", axes[1], "agreement with the hidden reward's order")):
        for strategy, rows in summary.items():
            x = [r["labels"] for r in rows]
            m = np.array([r[key] for r in rows])
            s = np.array([r[f"{key}_se"] for r in rows])
            ax.plot(x, m, marker="o", ms=3, label=strategy)
            ax.fill_between(x, m - s, m + s, alpha=0.2)
        if key == "accuracy":
            ax.axhline(ceiling, color="grey", ls="--", label=f"annotator ceiling {ceiling:.3f}")
        ax.set_xlabel("labels")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samplescope bench active", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, budget 100")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--round", type=int, default=20)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument("--test-prompts", type=int, default=30)
    parser.add_argument("--scale", type=float, default=2.0, help="norm of the hidden reward's weights")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.budget = 2, 100
    if args.seeds < 1 or args.budget <= args.start or args.start < 2 or args.round < 1:
        parser.error("need seeds >= 1, start >= 2, round >= 1 and budget > start")
    torch.set_num_threads(1)  # tiny full-batch fits: one thread is fastest (this process only)
    config = FitConfig(epochs=100, curve=(1.0,))
    runs = {s: [run_strategy(s, seed, args, config) for seed in range(args.seeds)] for s in STRATEGIES}
    ceilings = [heldout_set(world(seed, args.prompts, args.per_prompt, args.dim, args.test_prompts, args.scale), seed)[2]
                for seed in range(args.seeds)]
    summary = summarise(runs)
    name = "active_quick" if args.quick else "active"
    result = {"setup": {k: v for k, v in vars(args).items() if k != "json"}, "ceiling": statistics.fmean(ceilings),
              "curves": summary}
    plot(summary, result["ceiling"], RESULTS / f"{name}.png")
    lines = ["| labels | random: accuracy | uncertain: accuracy | random: hidden order | uncertain: hidden order |",
             "|---:|---:|---:|---:|---:|"]
    for r, u in zip(summary["random"], summary["uncertain"], strict=True):
        lines.append(f"| {r['labels']} | {r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | {u['accuracy']:.3f} ± {u['accuracy_se']:.3f} "
                     f"| {r['truth_agreement']:.3f} | {u['truth_agreement']:.3f} |")
    table = "\n".join(lines)
    publish(name, result, f"Active labelling, {args.seeds} seeds, D={args.dim}, ceiling {result['ceiling']:.3f} (mean ± s.e.)",
            table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
