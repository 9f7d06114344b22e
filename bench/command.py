"""``samplescope bench NAME``: run a benchmark from bench/ (ratios measured in one process)."""

from __future__ import annotations

import argparse
import importlib

from app.commands.console import quiet_libraries
from bench import BENCHES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark",
        description="Run a benchmark; extra arguments go to it (e.g. samplescope bench scaling --quick --json).",
    )
    p.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in sorted(BENCHES.items())))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    module = importlib.import_module(BENCHES[args.name][0])
    result = module.main(list(args.args))
    return int(result) if isinstance(result, int) else 0
