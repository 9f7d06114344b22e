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

from app.commands.console import quiet_libraries
from engines.errors import SamplescopeError

#: the modules that attach subcommands, each with ``register(subparsers)``: the app's own, and bench's
#: ``bench`` command, a plugin from the layer above the app (the app imports no bench code). Command
#: modules import engines (torch) inside their handlers, the one measured exception to imports at the
#: top: ``import engines.samplers`` took 21 s on the shared 2-core machine, ``import app.cli`` 0.3 s.
COMMAND_MODULES = (
    "app.commands.sample",
    "app.commands.listing",
    "app.commands.data",
    "app.commands.serve",
    "bench.command",
    "app.commands.sweep",
    "app.commands.reward",
    "app.commands.train",
    "app.commands.pairs",
    "app.commands.pareto",
    "app.commands.steer_or_train",
)


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
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet_libraries", False):  # a plugin command asks (the app's own commands call it)
        quiet_libraries()

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
