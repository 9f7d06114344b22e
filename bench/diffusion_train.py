"""Diffusion training on the digits DDPM: update steps per second and peak memory per scheme, and steer or train?

Two parts, both on the embedded digits DDPM with the ``digit:3`` reward:

1. Every registered rollout scheme (engines.training.diffusion.SCHEMES, read at run time, so schemes
   added later are measured too) runs ``--updates`` updates of ``--batch`` samples over ``--steps``
   denoising steps through the lab's loop (engines.training.diffusion.loop.train_diffusion). Each
   scheme runs in its own process, so its peak memory is its own: peak RSS on CPU (the process,
   model and libraries included; the RSS after loading, before the first update, is reported beside
   it), CUDA's allocator peak on a GPU. Update steps per second are timed from the end of the first
   update (a warm-up: the first backward pass, the optimiser's state) to the end of the last; the
   per-update spend (NFE, backward NFE, reward backward passes) is the scheme's own accounting. A scheme that
   refuses these settings is reported with its one-line reason.
2. Steer or train? (engines.steer_or_train): best-of-N, FK steering, SVDD and DTS on the base model
   against DPOK fine-tuning (plus best-of-N on the fine-tuned model), quality with 95% bootstrap
   intervals against NFE, backward NFE and wall seconds per image, training amortised over
   ``--amortize`` images; the plot data (every point) goes to the JSON.

    python -m bench.diffusion_train [--quick]          (samplescope bench diffusion_train --quick)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.measure import save

REWARD = "digit:3"


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_scheme(scheme: str, updates: int, batch: int, steps: int) -> dict:
    """One scheme's speed and memory in this process (called in a fresh process per scheme)."""
    from engines.errors import SamplescopeError
    from engines.training.diffusion import SCHEMES
    from engines.training.diffusion.loop import DiffusionTrainConfig, train_diffusion
    from engines.training.diffusion.policy import load_diffusion_policy

    policy = load_diffusion_policy("embedded:digits")
    loaded_mb = peak_memory_mb()
    params = {"batch_size": batch, "steps": steps}
    if "round_size" in {s.name for s in SCHEMES.get(scheme).Config.specs()}:
        params["round_size"] = batch  # curated retraining: one round per update at this batch
    config = DiffusionTrainConfig(name=f"bench-{scheme}", scheme=scheme, reward=REWARD, max_updates=updates,
                                  eval_every=0, eval_size=8, seed=0)
    marks, spent = [], []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for event in train_diffusion(config, params, policy=policy, runs_folder=Path(folder)):
                if event.kind == "update":
                    marks.append(time.perf_counter())
                    spent.append(event.metrics)
    except SamplescopeError as exc:
        return {"scheme": scheme, "skipped": str(exc).splitlines()[0]}
    timed = len(marks) - 1  # the first update is a warm-up (first backward pass, optimiser state): untimed
    if timed < 1:
        return {"scheme": scheme, "skipped": "fewer than 2 updates ran"}
    seconds = marks[-1] - marks[0]
    first, last = spent[0], spent[-1]
    return {
        "scheme": scheme, "updates": timed, "batch": batch, "steps": steps, "seconds": seconds,
        "updates_per_s": timed / seconds,
        "samples_per_s": (last["spent_samples"] - first["spent_samples"]) / seconds,
        "nfe_per_update": (last["spent_nfe"] - first["spent_nfe"]) / timed,
        "backward_nfe_per_update": (last["spent_backward_nfe"] - first["spent_backward_nfe"]) / timed,
        "backward_passes_per_update": (last["spent_backward_passes"] - first["spent_backward_passes"]) / timed,
        "peak_memory_mb": peak_memory_mb(), "loaded_memory_mb": loaded_mb,
        "memory_kind": "CUDA allocator peak" if torch.cuda.is_available() else "process peak RSS",
    }


def schemes_part(updates: int, batch: int, steps: int) -> list[dict]:
    from engines.training.diffusion import SCHEMES

    rows = []
    for scheme, _ in SCHEMES.items():
        command = [sys.executable, "-m", "bench.diffusion_train", "--one", scheme, "--updates", str(updates),
                   "--batch", str(batch), "--steps", str(steps)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        row = json.loads(lines[-1]) if done.returncode == 0 and lines else {
            "scheme": scheme, "skipped": (done.stderr.strip().splitlines() or ["failed"])[-1]}
        rows.append(row)
        if "skipped" in row:
            print(f"  {scheme:<20} skipped: {row['skipped']}", flush=True)
        else:
            print(f"  {scheme:<20} {row['updates_per_s']:.3f} updates/s ({row['samples_per_s']:.1f} samples/s), "
                  f"{row['nfe_per_update']:.0f} NFE + {row['backward_nfe_per_update']:.0f} backward NFE + "
                  f"{row['backward_passes_per_update']:.0f} reward backward passes per update; peak "
                  f"{row['peak_memory_mb']:.0f} MB ({row['loaded_memory_mb']:.0f} MB after loading)", flush=True)
    return rows


def steer_part(quick: bool, steps: int, amortize: int) -> dict:
    from engines.steer_or_train import SteerOrTrainPlan, run_steer_or_train

    plan = SteerOrTrainPlan(
        name="bench", reward=REWARD, sizes=(1, 4) if quick else (1, 4, 16), schemes=("dpok",),
        scheme_params={"dpok": {"batch_size": 16, "baseline": "mean_std"}}, learning_rate=3e-4,
        train_samples=160 if quick else 480, finetuned_sizes=(1, 4), amortize_images=amortize,
        prompts=8 if quick else 32, steps=steps, seed=0,
    )
    with tempfile.TemporaryDirectory() as folder:
        result = run_steer_or_train(plan, Path(folder), progress=lambda m: print(f"  {m}", flush=True))
    points = result.points()
    print(f"  {'arm':<22} {'size':>4} {'quality [95% CI]':>24} {'read as 3':>9} {'NFE/image':>10} {'bwd NFE':>8} {'wall s':>7}")
    for p in points:
        print(f"  {p['arm']:<22} {p['level']:>4g} {p['quality']:>8.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] "
              f"{p.get('heldout_target') or 0:>9.2f} {p['nfe']:>10.1f} {p['backward_nfe']:>8.2f} {p['wall_seconds']:>7.3f}")
    return {"plan": plan.as_dict(), "training": result.training, "points": points}


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes that finish in minutes on 2 CPU cores")
    parser.add_argument("--updates", type=int, default=None, help="updates per scheme, the first untimed (default 3 quick, 10 full)")
    parser.add_argument("--batch", type=int, default=None, help="samples per update (default 8 quick, 16 full)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 10 quick, 20 full)")
    parser.add_argument("--amortize", type=int, default=1000, help="images a fine-tuned model's training is spread over")
    parser.add_argument("--skip-steer", action="store_true", help="only the per-scheme speed and memory")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # measure one scheme in this process (the parent's child)
    args = parser.parse_args(argv)
    quick = args.quick
    updates = args.updates or (3 if quick else 10)
    batch = args.batch or (8 if quick else 16)
    steps = args.steps or (10 if quick else 20)
    if args.one:
        print(json.dumps(measure_scheme(args.one, updates, batch, steps)))
        return None
    result: dict = {"quick": quick, "reward": REWARD, "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "threads": torch.get_num_threads()}
    print(f"update speed and peak memory per scheme ({updates} updates of {batch} samples, {steps} steps, {REWARD}):",
          flush=True)
    result["schemes"] = schemes_part(updates, batch, steps)
    if not args.skip_steer:
        print(f"steer or train? ({REWARD}, {steps} steps, training amortised over {args.amortize} images):", flush=True)
        result["steer_or_train"] = steer_part(quick, steps, args.amortize)
    path = save("diffusion_train_quick" if quick else "diffusion_train", result)
    print(f"  -> {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
