"""Run every benchmark: python -m bench [name ...]."""

from __future__ import annotations

import importlib
import sys

BENCHES = ["best_of_n", "browser"]


def main(argv: list[str]) -> int:
    names = argv or BENCHES
    for name in names:
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}", file=sys.stderr)
            return 2
    for name in names:
        print(f"== {name}")
        importlib.import_module(f"bench.{name}").main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
