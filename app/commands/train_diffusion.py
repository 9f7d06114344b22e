"""``samplescope train`` for diffusion models: fine-tune a UNet pipeline with a rollout scheme.

``samplescope train --policy embedded:digits --strategy dpok --reward digit:3 --budget samples=640``
dispatches here (a diffusion model spec, or a scheme of engines.training.diffusion, selects it).
It runs :func:`engines.training.diffusion.loop.train_diffusion` with checkpoints in
``$SAMPLESCOPE_HOME/training/NAME``, prints the reward and the held-out digit check before and
after, the spend, and the trained model's spec (``diffusers:FOLDER``, which Explore and
``samplescope sample`` load). Budgets: samples, nfe, backward_nfe, backward_passes, seconds,
updates. ``--resume`` continues a run with its stored settings (a new ``--budget`` raises its caps).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.commands.console import parse_pairs

BUDGET_KEYS = {"samples": "samples", "nfe": "nfe", "backward_nfe": "backward_nfe", "backward_passes": "backward_passes",
               "seconds": "seconds", "updates": "max_updates"}


def is_diffusion_run(args: argparse.Namespace) -> bool:
    from engines.training.diffusion import SCHEMES

    policy = (args.policy or "").strip()
    return args.strategy in SCHEMES or policy in ("digits", "embedded:digits") or policy.startswith("diffusers:")


def build_config(args: argparse.Namespace) -> tuple[Any, dict[str, Any], bool]:
    from app.commands.train import parse_budget, stored_settings
    from engines.training.diffusion.loop import DiffusionTrainConfig

    budget = parse_budget(args.budget, BUDGET_KEYS)
    if args.resume:
        data = stored_settings(args)
        config = DiffusionTrainConfig.from_dict(data["config"])
        if budget:  # new caps replace the stored ones
            caps = DiffusionTrainConfig.from_strings({**budget, "scheme": config.scheme})
            config = config.replace(**{k: getattr(caps, k) for k in BUDGET_KEYS.values()})
        return config, data.get("scheme_params", {}), False
    values = {
        "name": args.name or f"{args.strategy}-seed{args.seed}",
        "policy": args.policy,
        "reward": args.reward,
        "scheme": args.strategy,
        "seed": str(args.seed),
        **parse_pairs(args.train_params, "--train-set"),
        **budget,
    }
    return DiffusionTrainConfig.from_strings(values), parse_pairs(args.params, "--set"), True


def run_diffusion(args: argparse.Namespace) -> int:
    from app.workflows.store import training_home
    from engines.training.diffusion import build_scheme
    from engines.training.diffusion.loop import train_diffusion

    if getattr(args, "trainer", "lab") != "lab":
        raise ValueError("diffusion schemes run in the lab's trainer only (--trainer lab)")
    config, params, strings = build_config(args)
    scheme_params = build_scheme(config.scheme, params, strings=strings).config.as_dict()  # one line on bad parameters
    evals: list[dict[str, Any]] = []
    done = None
    for event in train_diffusion(config, scheme_params, resume=args.resume, runs_folder=training_home()):
        if event.kind == "eval":
            evals.append({"step": event.step, **event.metrics})
        elif event.kind == "done":
            done = event
    result = {"status": done.status, "message": done.message, "evals": evals, **done.metrics}
    if args.json:
        print(json.dumps(result))
        return 0
    m = done.metrics
    print(f"{config.scheme} on {config.policy}: {m['updates']} updates, {m['samples']} samples, {m['nfe']} nfe, "
          f"{m['backward_nfe']} backward nfe, {m['seconds']:.1f} s ({done.status}{': ' + done.message if done.message else ''})")
    first, last = evals[0], evals[-1]
    for key in ("reward_mean", "heldout_digit", "heldout_target"):
        if key in first:
            print(f"{key}: {first[key]:.3f} -> {last[key]:.3f} on {last['n']} samples")
    if "model_spec" in m:
        print(f"trained model: {m['model_spec']}")
    return 0
