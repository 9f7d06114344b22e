"""Run benchmarks: python -m bench [name ...] (all of them by default)."""

from __future__ import annotations

import importlib
import sys

from bench import BENCHES


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}: {BENCHES[name][1]}", flush=True)
        importlib.import_module(BENCHES[name][0]).main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
