"""The ``samplescope`` command: one entry point, one module per subcommand group.

Every subcommand takes ``--help``, prints human output by default and
``--json`` where a script would read it, and exits 2 with a one-line error on
bad input (any :class:`SamplescopeError`, ``ValueError`` or missing file).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: modules under app.commands, each with ``register(subparsers)``
COMMAND_MODULES = ("sample", "listing", "data", "serve", "bench", "sweep", "reward", "train")


def one_line(text: str, limit: int = 500) -> str:
    """A message as one printable line: control characters (newlines, terminal escapes) shown escaped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "…"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"samplescope: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="samplescope", description="A lab for reward-guided sampling.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"app.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from engines.errors import SamplescopeError

    try:
        return int(args.func(args) or 0)
    except (SamplescopeError, ValueError, FileNotFoundError, PermissionError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"samplescope: error: {one_line(message)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("samplescope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
