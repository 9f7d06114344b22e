"""``samplescope list``: what can be picked (samplers, rollout strategies, rewards, models, task sets)."""

from __future__ import annotations

import argparse
import json

from app.commands.console import add_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list samplers, rollout strategies, rewards, models or task sets", description="List what can be picked.")
    p.add_argument("what", choices=("samplers", "strategies", "rewards", "models", "tasks"))
    add_json(p)
    p.set_defaults(func=run)


def _params(config) -> list[dict]:
    return [
        {"name": s.name, "type": s.type, "default": s.default, "min": s.min, "max": s.max,
         "choices": list(s.choices) if s.choices else None, "help": s.help}
        for s in config.specs()
    ]


def rows(what: str) -> list[dict]:
    if what == "samplers":
        from engines.samplers import SAMPLERS

        return [
            {
                "name": name,
                "label": cls.Config.label,
                "modalities": list(cls.modalities),
                "reward_kind": cls.reward_kind,
                "paper": cls.Config.paper,
                "summary": cls.Config.summary,
                "params": _params(cls.Config),
            }
            for name, cls in SAMPLERS.items()
        ]
    if what == "strategies":
        from engines.training import STRATEGIES

        return [
            {"name": name, "label": cls.Config.label, "paper": cls.Config.paper, "summary": cls.Config.summary,
             "params": _params(cls.Config)}
            for name, cls in STRATEGIES.items()
        ]
    if what == "rewards":
        from app.workflows.store import rewards_home
        from engines.rewards import list_rewards

        return list_rewards(rewards_home())
    if what == "models":
        from engines.models import list_models

        return list_models()
    from engines.tasks import TASK_SETS

    return [
        {"name": name, "description": s.description, "size": len(s.tasks()), "model": s.model, "reward": s.reward}
        for name, s in TASK_SETS.items()
    ]


def run(args: argparse.Namespace) -> int:
    data = rows(args.what)
    if args.json:
        print(json.dumps(data, ensure_ascii=False, default=str))
        return 0
    for row in data:
        if args.what in ("samplers", "strategies"):
            print(f"{row['name']:<20} {row['label']} — {row['summary']}")
            print(f"{'':<20} paper: {row['paper']}")
            print(f"{'':<20} params: " + ", ".join(f"{p['name']}={p['default']}" for p in row["params"]))
        elif args.what == "rewards":
            arg = f":{row['arg']}" if row["arg"] else ""
            print(f"{row['name'] + arg:<28} {row['kind']:<9} {row['modality']:<6} {row['help']}")
        elif args.what == "models":
            print(f"{row['spec']:<22} {row['modality']:<6} {row['description']}")
        else:
            print(f"{row['name']:<12} {row['size']:>4} tasks  model {row['model']}, reward {row['reward']}: {row['description']}")
    return 0
