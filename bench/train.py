"""Training-time sampling on the arith policy: generation speed, update cost, accuracy against samples.

One command, three parts, all on the embedded arith policy (engines/assets/arith/policy):

1. Rollout throughput: the lab's generation (``HFPolicy.rollout``: batched, KV-cached,
   seeded) against TRL's ``GRPOTrainer`` generating the same groups (``_generate``: its
   transformers ``generate`` path, tokenising and decoding included): B prompts x G samples,
   generated tokens per second, medians of interleaved repeats. Goal: ratio >= 1.0.
2. Update cost: seconds per update step (the lab's ``apply_update`` and a real TRL
   ``GRPOTrainer`` step through engines.training.trl_bridge, generation excluded where TRL
   reports it apart) and peak memory (process peak RSS on CPU; peak CUDA memory on a GPU).
3. Held-out T=1 accuracy against samples spent for ``grpo``, ``dynamic_sampling``,
   ``reinforce_ada``, ``raft`` (and ``tree_rpo`` when registered) over seeds, through the
   lab's training loop (engines.training.loop.train), each run under the same sample budget;
   the mean and its spread over seeds at every evaluation, and the first sample count at
   which each strategy reaches GRPO's final accuracy.

    python -m bench.train [--quick] [--seeds N] [--samples N]      (samplescope bench train --quick)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.measure import interleaved, median, save
from engines.sweep_stats import bootstrap_ci

STRATEGIES = ("grpo", "dynamic_sampling", "reinforce_ada", "raft", "tree_rpo")


def peak_memory_mb() -> float:
    """Peak memory of this process so far: CUDA's allocator peak on a GPU, else peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _trl_trainer(policy, tasks, prompts_per_batch, group_size, max_new_tokens, out_dir, strategy="grpo"):
    from engines.training.rewards import training_reward
    from engines.training.trl_bridge import StrategyBridge, StrategyGRPOTrainer

    bridge = StrategyBridge(
        strategy, {"prompts_per_batch": prompts_per_batch, "group_size": group_size, "max_new_tokens": max_new_tokens},
        tasks=tasks, reward=training_reward("math"),
    )
    args = bridge.grpo_config(
        out_dir, learning_rate=1e-4, max_steps=1, use_cpu=not torch.cuda.is_available(), bf16=False,
        save_strategy="no", disable_tqdm=True, logging_steps=1,
    )
    return bridge, StrategyGRPOTrainer(policy.model, bridge, args=args, processing_class=policy.tokenizer)


def throughput(prompts_per_batch: int, group_size: int, max_new_tokens: int, repeats: int, vllm: str | None = None) -> dict:
    """Generated tokens/s of the lab's rollout and of TRL's own generation, on the same B x G groups;
    with ``vllm`` (a vLLM server's /v1 URL serving the same weights) also the served rollout path
    (:class:`~engines.training.rollout_policy.TextModelPolicy`: one request of n per group, the
    token ids and log-probs a rollout needs), timed in the same interleaved repeats."""
    from trl import GRPOConfig, GRPOTrainer

    from engines.training.policy import load_policy
    from engines.training.prompts import load_prompts

    policy = load_policy("embedded:arith")
    tasks = load_prompts(f"arith-train:medium:{prompts_per_batch}")
    flat = [t.prompt for t in tasks for _ in range(group_size)]
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, num_generations=group_size, per_device_train_batch_size=len(flat), temperature=1.0,
            max_completion_length=max_new_tokens, use_cpu=not torch.cuda.is_available(), bf16=False, report_to="none",
        )
        from datasets import Dataset

        # TRL gets its own copy of the weights: its trainer sets train mode (and its own generation
        # settings) on the model it is given, and the lab's side should run as the lab's loop runs it
        trainer = GRPOTrainer(load_policy("embedded:arith").model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
                              train_dataset=Dataset.from_dict({"prompt": flat[::group_size]}), processing_class=policy.tokenizer)
        trainer.model.train()  # TRL's _generate reads the mode; as in a training step
        counts: dict[str, int] = {}

        def lab():
            rollouts = policy.rollout(flat, temperature=1.0, max_new_tokens=max_new_tokens, rng=torch.Generator().manual_seed(0))
            counts["lab"] = sum(r.tokens for r in rollouts)

        def trl():
            _, completion_ids, *_ = trainer._generate(flat)
            counts["trl"] = sum(len(c) for c in completion_ids)

        lab(), trl()  # warm-up
        times = interleaved({"lab": lab, "trl": trl}, repeats)
        if vllm:
            # timed in its own block, after the in-process sides: the vLLM-CPU engine keeps the cores
            # busy for a moment after each request, which slowed an in-process run interleaved after
            # it ~3x on 2 cores (measured); on a GPU server the two would not share cores at all
            from engines.training.rollout_policy import load_rollout_policy

            served = load_rollout_policy(f"openai:{vllm}")

            def served_side():
                rollouts = served.rollout(flat, temperature=1.0, max_new_tokens=max_new_tokens, rng=torch.Generator().manual_seed(0))
                counts["vllm"] = sum(r.tokens for r in rollouts)

            served_side()  # warm-up
            times.update(interleaved({"vllm": served_side}, repeats))
    out = {name: {"seconds": median(t), "tokens": counts[name], "tokens_per_s": counts[name] / median(t)} for name, t in times.items()}
    out["ratio"] = out["lab"]["tokens_per_s"] / out["trl"]["tokens_per_s"]
    if "vllm" in out:
        out["ratio_vllm"] = out["lab"]["tokens_per_s"] / out["vllm"]["tokens_per_s"]
        out["vllm"]["server"] = vllm
    out["groups"] = f"{prompts_per_batch} prompts x {group_size} samples, max {max_new_tokens} new tokens, T=1"
    return out


def update_cost(prompts_per_batch: int, group_size: int, max_new_tokens: int, steps: int) -> dict:
    """Seconds per update step: the lab's update on a GRPO batch, and a real TRL GRPOTrainer step."""
    from engines.training import build_strategy
    from engines.training.base import Allowance, PromptPool
    from engines.training.policy import load_policy
    from engines.training.prompts import load_prompts
    from engines.training.rewards import training_reward
    from engines.training.update import apply_update

    policy = load_policy("embedded:arith")
    tasks = load_prompts("arith-train:medium:256")
    params = {"prompts_per_batch": prompts_per_batch, "group_size": group_size, "max_new_tokens": max_new_tokens}
    strategy = build_strategy("grpo", params)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    rng = torch.Generator().manual_seed(0)
    lab_update, lab_rollout = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = _drain(strategy.collect(policy, PromptPool(tuple(tasks)), training_reward("math"), Allowance(), rng))
        t1 = time.perf_counter()
        apply_update(policy, optimizer, batch)
        lab_rollout.append(t1 - t0)
        lab_update.append(time.perf_counter() - t1)
    lab_peak = peak_memory_mb()
    with tempfile.TemporaryDirectory() as out:
        _, trainer = _trl_trainer(load_policy("embedded:arith"), tasks, prompts_per_batch, group_size, max_new_tokens, out)
        trainer.args.max_steps = steps
        t0 = time.perf_counter()
        trainer.train()
        trl_total = (time.perf_counter() - t0) / steps
    return {
        "lab_update_s": median(lab_update),
        "lab_rollout_s": median(lab_rollout),
        "lab_step_s": median(lab_update) + median(lab_rollout),
        "trl_step_s": trl_total,
        "peak_memory_mb_after_lab": lab_peak,
        "peak_memory_mb": peak_memory_mb(),
        "memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_peak_rss",
    }


def _drain(generator):
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def accuracy_curves(
    strategies: list[str], seeds: int, samples: int, eval_every: int, eval_size: int, params: dict, train_params: dict | None = None
) -> dict:
    """Held-out T=1 accuracy against samples spent, per strategy, over seeds (the lab's loop, the
    training defaults of ``TrainConfig`` unless ``train_params`` says otherwise), with each strategy's
    median seconds per update step (the update alone and rollout + update) and the process's peak
    memory after its runs (cumulative: the process peak never goes down)."""
    from engines.training import STRATEGIES as REGISTRY
    from engines.training.loop import TrainConfig, train

    out: dict[str, dict] = {}
    for name in strategies:
        if name not in REGISTRY:
            out[name] = {"skipped": "not registered on this branch"}
            continue
        runs = []
        for seed in range(seeds):
            config = TrainConfig.from_dict({
                "name": f"bench-{name}-{seed}", "strategy": name, "samples": samples, "seed": seed,
                "eval_every": eval_every, "eval_size": eval_size, "eval_greedy": False, "checkpoint_every": 10_000,
                **(train_params or {}),
            })
            points, update_s, step_s = [], [], []
            with tempfile.TemporaryDirectory() as run_dir:
                t0 = last = time.perf_counter()
                for e in train(config, params, run_dir=Path(run_dir)):
                    if e.kind == "eval":
                        points.append((e.metrics["samples"], e.metrics["accuracy_t1"]))
                        last = time.perf_counter()  # a step's time excludes the evaluation before it
                    elif e.kind == "update":
                        update_s.append(e.metrics["update_seconds"])
                        step_s.append(time.perf_counter() - last)
                        last = time.perf_counter()
                runs.append({"seed": seed, "points": points, "seconds": time.perf_counter() - t0,
                             "update_s": median(update_s), "step_s": median(step_s)})
        out[name] = {
            "runs": runs, **_summary(runs),
            "update_s": median([r["update_s"] for r in runs]), "step_s": median([r["step_s"] for r in runs]),
            "peak_memory_mb_after": peak_memory_mb(),
        }
    if "runs" in out.get("grpo", {}):
        for data in out.values():
            if "runs" in data:
                data["samples_to_grpo_plateau"] = samples_to_plateau(data["runs"], out["grpo"]["runs"])
    return out


def _summary(runs: list[dict]) -> dict:
    """Mean over seeds at each evaluation (runs evaluate at matching points), and the final
    accuracy's mean with a percentile bootstrap interval over seeds (coarse with 3 seeds)."""
    depth = min(len(r["points"]) for r in runs)
    curve = []
    for i in range(depth):
        accs = [r["points"][i][1] for r in runs]
        spent = statistics.fmean(r["points"][i][0] for r in runs)
        curve.append((round(spent), statistics.fmean(accs)))
    finals = [r["points"][depth - 1][1] for r in runs]
    return {"mean_curve": curve, "final_mean": statistics.fmean(finals), "final_ci95": bootstrap_ci(finals)}


def plateau(runs: list[dict], last: int = 2) -> float:
    """GRPO's plateau: the mean over seeds of the mean of each run's last ``last`` evaluations."""
    return statistics.fmean(statistics.fmean(acc for _, acc in r["points"][-last:]) for r in runs)


def first_reaching(runs: list[dict], level: float) -> float | None:
    """The first sample count at which the seeds' mean curve reaches ``level`` (None: never)."""
    depth = min(len(r["points"]) for r in runs)
    for i in range(depth):
        if statistics.fmean(r["points"][i][1] for r in runs) >= level:
            return statistics.fmean(r["points"][i][0] for r in runs)
    return None


def samples_to_plateau(runs: list[dict], grpo_runs: list[dict], *, resamples: int = 2000, seed: int = 0) -> dict:
    """Samples a strategy's mean curve needs to reach GRPO's plateau, with a percentile bootstrap
    interval that resamples the seeds of both the strategy and GRPO (the plateau moves with them);
    ``never`` is the share of resamples in which the curve does not reach it within the budget."""
    import numpy as np

    point = first_reaching(runs, plateau(grpo_runs))
    rng = np.random.default_rng(seed)
    draws, never = [], 0
    for _ in range(resamples):
        mine = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
        theirs = [grpo_runs[i] for i in rng.integers(0, len(grpo_runs), len(grpo_runs))]
        reached = first_reaching(mine, plateau(theirs))
        if reached is None:
            never += 1
        else:
            draws.append(reached)
    ci = (float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))) if draws else (None, None)
    return {"samples": point, "ci95": ci, "never": never / resamples, "plateau": plateau(grpo_runs)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes that finish in minutes on 2 CPU cores")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None, help="sample budget per training run")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--eval-every", type=int, default=None, help="updates between held-out evaluations")
    parser.add_argument("--eval-size", type=int, default=None, help="held-out arith-fresh prompts (default 200)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="training parameter for the accuracy runs (learning_rate=..., kl_coef=...; default TrainConfig's)")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the throughput and update-cost parts")
    parser.add_argument("--out", default=None, help="results file name under bench/results (default train / train_quick)")
    parser.add_argument("--speed-only", action="store_true", help="skip the accuracy part")
    parser.add_argument("--prompts-per-batch", type=int, default=None, help="prompts per update (default 16; quick 4)")
    parser.add_argument("--group-size", type=int, default=None, help="samples per prompt (default 8; quick 4)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on CPU: the 856K-parameter policy gains nothing from a second "
                             "thread, and on a shared machine its OpenMP barriers wait for a core: 61 against 5,036 tok/s measured)")
    parser.add_argument("--vllm", default=None, metavar="URL",
                        help="a vLLM server's /v1 URL serving the arith policy's weights: its rollouts join the throughput part")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.threads or not torch.cuda.is_available():
        torch.set_num_threads(args.threads or 1)
    quick = args.quick
    size = {"prompts_per_batch": args.prompts_per_batch or (4 if quick else 16), "group_size": args.group_size or (4 if quick else 8),
            "max_new_tokens": 32 if quick else 96}
    seeds = args.seeds or (2 if quick else 3)
    samples = args.samples or (48 if quick else 5120)
    eval_every, eval_size = (3, 30) if quick else (5, 200)
    eval_every, eval_size = args.eval_every or eval_every, args.eval_size or eval_size
    train_params = _typed_train_params(dict(item.split("=", 1) for item in args.train_set))

    result: dict = {"quick": quick, "size": size, "train_params": train_params, "threads": torch.get_num_threads()}
    if not args.accuracy_only:
        _speed(result, size, quick, args.vllm)
    if args.speed_only:
        path = save("train_speed_quick" if quick else "train_speed", result)
        print(f"  -> {path}")
        return result
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    curves = accuracy_curves(strategies, seeds, samples, eval_every, eval_size, size, train_params)
    result["accuracy"] = {"seeds": seeds, "samples": samples, "eval_size": eval_size, "eval_every": eval_every, "strategies": curves}
    print(f"held-out T=1 accuracy ({eval_size} arith-fresh prompts) against samples, {seeds} seeds, budget {samples}:")
    for name, data in curves.items():
        if "skipped" in data:
            print(f"  {name:<17} skipped: {data['skipped']}")
            continue
        curve = "  ".join(f"{s}:{a:.3f}" for s, a in data["mean_curve"])
        lo, hi = data["final_ci95"]
        reach = data.get("samples_to_grpo_plateau", {})
        print(f"  {name:<17} {curve}   final {data['final_mean']:.3f} [{lo:.3f}, {hi:.3f}]; "
              f"reaches GRPO's plateau {reach.get('plateau', float('nan')):.3f} at {reach.get('samples')} samples "
              f"(95% CI {reach.get('ci95')}, never in {reach.get('never', 0):.0%} of resamples); "
              f"{data['step_s']:.2f} s per step ({data['update_s']:.2f} s update); peak {data['peak_memory_mb_after']:.0f} MB",
              flush=True)
    path = save(args.out or ("train_quick" if quick else "train"), result)
    print(f"  -> {path}")
    return result


def _typed_train_params(raw: dict[str, str]) -> dict:
    """``--train-set KEY=VALUE`` strings typed by TrainConfig's fields (eval_samples=4 an int, lrs floats)."""
    from engines.training.loop import TrainConfig

    typed = TrainConfig.from_strings({**raw, "samples": "1"}).as_dict()
    return {key: typed[key] for key in raw}


def _speed(result: dict, size: dict, quick: bool, vllm: str | None = None) -> None:
    result["throughput"] = throughput(size["prompts_per_batch"] * (2 if quick else 1), size["group_size"], size["max_new_tokens"], 1 if quick else 3, vllm)
    t = result["throughput"]
    print(f"rollout throughput ({t['groups']}): lab {t['lab']['tokens_per_s']:.0f} tok/s, "
          f"TRL GRPOTrainer {t['trl']['tokens_per_s']:.0f} tok/s, ratio {t['ratio']:.2f} (goal >= 1.0)", flush=True)
    if "vllm" in t:
        print(f"  vLLM server {t['vllm']['server']}: {t['vllm']['tokens_per_s']:.0f} tok/s; lab / vLLM {t['ratio_vllm']:.2f}", flush=True)
    result["update"] = update_cost(size["prompts_per_batch"], size["group_size"], size["max_new_tokens"], 1 if quick else 3)
    u = result["update"]
    print(f"per update step ({size['prompts_per_batch']}x{size['group_size']}): lab rollout {u['lab_rollout_s']:.2f} s + "
          f"update {u['lab_update_s']:.2f} s = {u['lab_step_s']:.2f} s; TRL GRPOTrainer step {u['trl_step_s']:.2f} s; "
          f"peak memory {u['peak_memory_mb']:.0f} MB ({u['memory_kind']})", flush=True)


if __name__ == "__main__":
    main()
