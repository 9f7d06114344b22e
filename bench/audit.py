"""The robustness audit of every shipped reward, and West-of-N against random pairs.

1. ``samplescope reward audit`` (app/workflows/reward_audit.py) on the ``arith`` set with the
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
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.measure import save

REWARDS = ("math", "random:0", "arith_orm", "arith_prm", "sentiment", "learned:gan-arith", "learned:par-orm")


def train_learned(folder: Path, targets: int, seed: int = 0) -> None:
    """learned:gan-arith (GAN-RM) and learned:par-orm (PAR over arith_orm) in ``folder``."""
    from app.workflows.reward_training import write_folder
    from engines.models import load_model
    from engines.models.base import SamplingParams
    from engines.rewards.learned import TextFeatures, save_head
    from engines.rewards.pair_learners import fit_gan_rm
    from engines.tasks.arith import generate_problems, reserved_expressions

    problems = generate_problems(seed + 77, "medium", targets, exclude=frozenset(reserved_expressions()))
    model = load_model("embedded:arith", device="cpu")
    features = TextFeatures(model, "embedded:arith")
    prompts = [p.prompt for p in problems]
    target = features(prompts, [p.solution() for p in problems])
    rng = torch.Generator().manual_seed(seed)
    outputs = model.sample([model.encode(p) for p in prompts], SamplingParams(max_new_tokens=96), n=1, rng=rng)
    generated = features(prompts, [g[0].text for g in outputs])
    head = fit_gan_rm(target, generated, seed=seed)
    card = {"name": "gan-arith", "kind": "head", "method": "gan-rm", "modality": "text", "base": "embedded:arith",
            "featuriser": "text", "head": {"input_dim": head.input_dim, "hidden": 0}, "targets": targets, "metrics": {}}
    write_folder(folder / "gan-arith", card, lambda tmp: save_head(head, tmp))
    par = {"name": "par-orm", "kind": "par", "method": "par", "modality": "text", "of": "arith_orm", "references": {},
           "answer_as_reference": True}
    write_folder(folder / "par-orm", par, lambda tmp: None)


def audits(folder: Path, n: int, limit: int) -> list[dict]:
    from app.workflows.reward_audit import AuditConfig, run_audit

    rows = []
    for spec in REWARDS:
        start = time.perf_counter()
        report = run_audit(AuditConfig(reward=spec, prompts="arith", n=n, limit=limit), rewards_folder=folder)
        rows.append({"reward": spec, "seconds": time.perf_counter() - start, **report.as_dict()})
        keys, ovm = report.master_keys["overall"], report.one_vs_many
        bon = {r["n"]: r for r in report.best_of_n}
        print(f"{spec:<18} keys {keys['rate']:.3f} [{keys['low']:.3f}, {keys['high']:.3f}]  "
              f"1-vs-{ovm['k']} {ovm['rate']:.3f} [{ovm['low']:.3f}, {ovm['high']:.3f}]  "
              f"pairs {report.pairwise_accuracy['rate']:.3f}  rho(len) {report.length['reward']['rate'] or float('nan'):+.3f}  "
              f"BoN rejected N=1 {bon[1]['rate']:.3f} N={n} {bon[n]['rate']:.3f} [{bon[n]['low']:.3f}, {bon[n]['high']:.3f}]",
              flush=True)
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
    args = parser.parse_args(argv)
    n, limit, seeds = (8, 8, 8) if args.quick else (args.n, args.limit, args.seeds)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train_learned(folder, targets=300)
        rows = audits(folder, n, limit)
    np.random.seed(0)
    path = save("audit", {"n": n, "prompts": limit, "audits": rows, "west_of_n": west_of_n_vs_random(seeds)})
    print(f"written {path}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
