"""The robustness audit of every shipped reward, and West-of-N against random pairs.

1. ``samplescope reward audit`` (run as a user runs it: the CLI, each reward in its own process) on the ``arith`` set with the
   embedded arith policy's samples and the exact verifier (``math``) as truth, for the shipped
   rewards ``arith_orm``, ``arith_prm``, ``sentiment`` (not made for arithmetic: it shows what an
   unrelated reward does under selection), two learned ones trained here on arith (``learned:``
   GAN-RM on 300 reference solutions of fresh training problems against the policy's samples;
   PAR over ``arith_orm`` with the reference answer), and the controls ``math`` and ``random``.
2. West-of-N against the same number of random pairs (both labelled by the current head) on the
   simulated annotator of tests/rewards (hidden digit weights, logistic noise): held-out accuracy
   over ``--seeds`` seeds, the paired difference with its 95% bootstrap interval.

    python -m bench.audit [--quick]        (samplescope bench audit)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench.app_server import ROOT, cli
from bench.measure import save

REWARDS = ("math", "random:0", "arith_orm", "arith_prm", "sentiment", "learned:gan-arith", "learned:par-orm")


def samplescope(home: Path, *args: str) -> str:
    """Run the CLI as a user would (bench/ never imports app/), with its data folder in ``home``."""
    env = {**os.environ, "SAMPLESCOPE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("SAMPLESCOPE_DB", None)
    done = subprocess.run(cli(*args), cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"samplescope {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def train_learned(home: Path, targets: int, seed: int = 0) -> None:
    """learned:gan-arith (GAN-RM on reference solutions of fresh training problems against the policy's own
    samples, embedded:arith features) and learned:par-orm (PAR over arith_orm, the reference answer as reference)."""
    from engines.tasks.arith import generate_problems, reserved_expressions

    problems = generate_problems(seed + 77, "medium", targets, exclude=frozenset(reserved_expressions()))
    rows = home / "targets.jsonl"
    home.mkdir(parents=True, exist_ok=True)
    rows.write_text("\n".join(json.dumps({"prompt": p.prompt, "response": p.solution()}) for p in problems))
    samplescope(home, "reward", "learn", "gan-rm", "--name", "gan-arith", "--base", "embedded:arith", "--targets",
                str(rows), "--pool-n", "2", "--seed", str(seed))
    samplescope(home, "reward", "learn", "par", "--name", "par-orm", "--of", "arith_orm", "--answer-as-reference")


def audits(home: Path, n: int, limit: int) -> list[dict]:
    rows = []
    for spec in REWARDS:
        start = time.perf_counter()
        report = json.loads(samplescope(home, "reward", "audit", spec, "--prompts", "arith", "--n", str(n),
                                        "--limit", str(limit), "--json"))
        rows.append({"reward": spec, "seconds": time.perf_counter() - start, **report})
        keys, ovm, pairs = report["master_keys"]["overall"], report["one_vs_many"], report["pairwise_accuracy"]
        bon = {r["n"]: r for r in report["best_of_n"]}
        rho = report["length"]["reward"]["rate"]
        print(f"{spec:<18} keys {keys['rate']:.3f} [{keys['low']:.3f}, {keys['high']:.3f}]  "
              f"1-vs-{ovm['k']} {ovm['rate']:.3f} [{ovm['low']:.3f}, {ovm['high']:.3f}]  pairs {pairs['rate']:.3f}  "
              f"rho(len) {'n/a' if rho is None else f'{rho:+.3f}'}  BoN rejected N=1 {bon[1]['rate']:.3f} "
              f"N={n} {bon[n]['rate']:.3f} [{bon[n]['low']:.3f}, {bon[n]['high']:.3f}]", flush=True)
    return rows


def west_of_n_vs_random(seeds: int) -> dict:
    from engines.rewards.bt_fit import FitConfig
    from engines.rewards.pair_learners import west_of_n
    from engines.sweep_stats import bootstrap_ci
    from tests.rewards.simulated import counts, digits, heldout_accuracy, human_pairs

    config, rows = FitConfig(epochs=60), []
    for seed in range(seeds):
        rng = random.Random(seed)
        human = human_pairs(rng, 24)
        pools = [torch.stack([counts(digits(rng)) for _ in range(16)]) for _ in range(40)]
        acc = {}
        for pick in ("west", "random"):
            head, _ = west_of_n(human, pools, rounds=2, pick=pick, config=config, seed=seed)
            acc[pick] = heldout_accuracy(head, random.Random(1000 + seed))
        rows.append(acc)
    diffs = [r["west"] - r["random"] for r in rows]
    low, high = bootstrap_ci(diffs, seed=0)
    out = {"seeds": seeds, "west": statistics.fmean(r["west"] for r in rows),
           "random": statistics.fmean(r["random"] for r in rows), "diff": statistics.fmean(diffs), "low": low, "high": high}
    print(f"West-of-N {out['west']:.3f} vs random pairs {out['random']:.3f}: difference {out['diff']:+.3f} "
          f"[{low:+.3f}, {high:+.3f}] over {seeds} seeds (24 human pairs, 2 rounds x 40 synthetic pairs)", flush=True)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.audit")
    parser.add_argument("--quick", action="store_true", help="8 samples on 8 prompts, 8 seeds")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--targets", type=int, default=300, help="GAN-RM target samples")
    args = parser.parse_args(argv)
    n, limit, seeds = (8, 8, 8) if args.quick else (args.n, args.limit, args.seeds)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        train_learned(home, targets=args.targets)
        rows = audits(home, n, limit)
    path = save("audit", {"n": n, "prompts": limit, "audits": rows, "west_of_n": west_of_n_vs_random(seeds)})
    print(f"written {path}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
