"""``samplescope bench NAME``: run a benchmark from bench/ (ratios measured in one process).

A plugin of the ``samplescope`` CLI: app/cli.py lists this module among the ones that attach
subcommands, so the app itself imports no bench code. It asks the CLI, through the parser's
defaults, to quiet the libraries' progress bars as the app's own model commands do.
"""

from __future__ import annotations

import argparse
import importlib

from bench import BENCHES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark",
        description="Run a benchmark; extra arguments go to it (e.g. samplescope bench scaling --quick --json).",
    )
    p.add_argument("name", choices=sorted(BENCHES), help="; ".join(f"{k}: {v[1]}" for k, v in sorted(BENCHES.items())))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=run, quiet_libraries=True)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.name][0])
    result = module.main(list(args.args))
    return int(result) if isinstance(result, int) else 0
