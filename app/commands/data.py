"""Data subcommands: ``export``, ``import``, ``stats``, ``runs`` and ``db upgrade|check``.

Every command takes ``--db URL`` (default: ``$SAMPLESCOPE_DB``, else the SQLite
file in the user data folder). Commands that read or write data migrate the
database to the newest schema first; ``db check`` only looks.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.errors import SamplescopeError


class DataError(SamplescopeError):
    """A storage problem reported by a data command (one line)."""


def _storage_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report storage and database errors as one-line SamplescopeErrors (exit 2)."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        from storage.errors import StorageError

        try:
            return func(args)
        except StorageError as exc:
            raise DataError(str(exc)) from exc
        except SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise DataError(f"database error: {detail[0] if detail else type(exc).__name__}") from exc

    return wrapper


def _open(args: argparse.Namespace) -> Any:
    from storage import Database

    return Database.open(args.db)


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        help="SQLAlchemy database URL (default: $SAMPLESCOPE_DB or the user data folder)",
    )


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, allow_nan=False, default=str)
    sys.stdout.write("\n")


# -- export / import -------------------------------------------------------------


@_storage_errors
def cmd_export(args: argparse.Namespace) -> int:
    from storage.exports import RecordFilter, export, file_kind

    file_kind(args.out)
    only = RecordFilter(modality=args.modality, model=args.model, sampler=args.sampler)
    with _open(args) as db:
        n = db.read(lambda s: export(s, args.format, args.out, by=args.by, repeats=args.repeats, gold=args.gold, only=only))
    print(f"wrote {n} {args.format} row{'s' if n != 1 else ''} to {args.out}")
    return 0


@_storage_errors
def cmd_import(args: argparse.Namespace) -> int:
    from storage.imports import import_file

    if not Path(args.file).is_file():
        raise FileNotFoundError(f"no such file: {args.file}")
    with _open(args) as db:
        report = db.write(lambda s: import_file(s, args.file, seed=args.seed))
    if args.json:
        _print_json(report.__dict__)
    else:
        print(
            f"imported {report.rows} rows from {args.file}: {report.votes_created} new votes, "
            f"{report.votes_existing} already stored, {report.comparisons} comparisons, "
            f"{report.runs_created} new runs"
        )
    return 0


# -- stats ------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _proportion(p: dict[str, Any]) -> str:
    if p["rate"] is None:
        return "n/a (no votes)"
    return f"{p['rate']:.1%} of {p['n']}  (95% CI {p['low']:.1%} to {p['high']:.1%}, p = {p['p_value']:.3g})"


def print_stats(result: dict[str, Any]) -> None:
    outcomes = ", ".join(f"{k} {v}" for k, v in result["outcomes"].items())
    left_out = result.get("repeat_votes_left_out", 0)
    repeats = f"; {left_out} left out by --repeats {result.get('repeats')}" if left_out else ""
    print(f"votes: {result['votes']} ({outcomes}; skips not counted{repeats})")
    print(f"reward model agrees with people: {_proportion(result['reward_agreement']['overall'])}")
    for name, p in result["reward_agreement"]["by_reward"].items():
        print(f"  {name}: {_proportion(p)}")
    agreement = result["annotator_agreement"]
    print(
        f"annotator agreement: Krippendorff's alpha {_fmt(agreement['krippendorff_alpha'])} "
        f"({agreement['annotators']} annotators, {agreement['comparisons_with_two_or_more']} comparisons "
        "with two or more votes)"
    )
    for pair in agreement["pairs"]:
        first, second = pair["annotators"]
        print(
            f"  {first} / {second}: Cohen's kappa {_fmt(pair['kappa'])}, agree {pair['agreement']:.0%} of {pair['n']}"
        )
    ranking = result["ranking"]
    print(
        f"Bradley-Terry ranking of {ranking['by']}s (Elo scale, 95% bootstrap CI, {ranking['bootstrap']} resamples):"
    )
    if not ranking["players"]:
        print("  n/a (needs votes between two different players)")
    for row in ranking["players"]:
        ci = f"{row['low']:.0f} to {row['high']:.0f}" if row["low"] is not None else "no bootstrap"
        print(f"  {row['rank']:>2}. {row['name']:<24} {row['rating']:7.0f}  ({ci}; {row['battles']} battles)")
    print(f"left side wins: {_proportion(result['position_bias'])}")


@_storage_errors
def cmd_stats(args: argparse.Namespace) -> int:
    from storage.stats import summary

    with _open(args) as db:
        result = db.read(
            lambda s: summary(s, by=args.by, bootstrap=args.bootstrap, seed=args.seed, repeats=args.repeats)
        )
    if args.json:
        _print_json(result)
    else:
        print_stats(result)
    return 0


# -- runs -------------------------------------------------------------------------------


@_storage_errors
def cmd_runs(args: argparse.Namespace) -> int:
    from storage import list_runs

    with _open(args) as db:
        runs = db.read(
            lambda s: list_runs(
                s, sampler=args.sampler, model=args.model, reward=args.reward, limit=args.limit
            )
        )
    if args.json:
        _print_json([r.as_dict() for r in runs])
        return 0
    if not runs:
        print("no runs")
        return 0
    print(
        f"{'id':>5}  {'created (UTC)':<19}  {'sampler':<16} {'model':<20} {'reward':<14} {'status':<10} {'cands':>5} {'best':>8}  prompt"
    )
    for r in runs:
        prompt = " ".join(r.prompt.split())
        prompt = prompt[:40] + ("…" if len(prompt) > 40 else "")
        print(
            f"{r.id:>5}  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.sampler[:16]:<16} {r.model[:20]:<20} "
            f"{r.reward[:14]:<14} {r.status[:10]:<10} {r.candidates:>5} {_fmt(r.best_reward):>8}  {prompt}"
        )
    return 0


# -- db upgrade / check -------------------------------------------------------------------


@_storage_errors
def cmd_db(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from storage import Database, resolve_url

    url = resolve_url(args.db)
    parsed = make_url(url)
    if args.action == "check" and parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path and path != ":memory:" and not Path(path).expanduser().exists():
            raise DataError(f"no database at {path}")
    with Database(url) as db:
        if args.action == "upgrade":
            before = db.revision()
            db.upgrade()
            after = db.revision()
            print(
                f"{db.safe_url}: schema {before or 'empty'} -> {after}"
                if before != after
                else f"{db.safe_url}: schema already at {after}"
            )
            return 0
        report = db.check()
    if args.json:
        _print_json(
            {
                "ok": report.ok,
                "url": report.url,
                "revision": report.revision,
                "head": report.head,
                "counts": report.counts,
                "problems": report.problems,
            }
        )
    else:
        print(f"{report.url}: schema {report.revision or 'none'} (newest {report.head})")
        for table, n in report.counts.items():
            print(f"  {table:<12} {n:>10,}")
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
        print("ok" if report.ok else f"{len(report.problems)} problem(s) found")
    return 0 if report.ok else 1


# -- registration -----------------------------------------------------------------------


def _add_repeats(p: argparse.ArgumentParser) -> None:
    from storage.records import REPEAT_POLICIES

    p.add_argument(
        "--repeats", choices=REPEAT_POLICIES, default="original",
        help="side-swapped repeats: original (default) keeps one label per pair and annotator, the vote on the "
        "original; consistent also drops pairs whose repeat vote disagreed; all counts every vote",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from storage.models import EXPORT_FORMATS as FORMATS
    from storage.models import PLAYERS

    p = subparsers.add_parser("export", help="export votes as DPO, KTO or battle rows (JSONL or Parquet)")
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="dpo: prompt/chosen/rejected; kto: "
        "prompt/completion/label; battles: FastChat model_a/model_b/winner",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output file, .jsonl or .parquet")
    p.add_argument("--by", choices=PLAYERS, default="sampler", help="battles: who plays (default: sampler)")
    _add_repeats(p)
    p.add_argument(
        "--no-gold", dest="gold", action="store_false",
        help="leave out gold pairs (default: exported with the annotators' votes, like any pair)",
    )
    p.add_argument("--modality", choices=("text", "image"), default=None,
                   help="only comparisons of two texts (or two images); default: both")
    p.add_argument("--model", default=None, metavar="SPEC", help="only comparisons with this model on a side")
    p.add_argument("--sampler", default=None, metavar="NAME", help="only comparisons with this sampler on a side")
    _add_db(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("import", help="import a TRL preference file (prompt/chosen/rejected) as votes")
    p.add_argument("file", metavar="FILE", help=".jsonl or .parquet")
    p.add_argument("--seed", type=int, default=0, help="seed for the sides of new comparisons")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_db(p)
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("stats", help="agreement, Bradley-Terry ranking and position bias of the votes")
    p.add_argument(
        "--by", choices=PLAYERS, default="sampler", help="rank samplers or models (default: sampler)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=200, metavar="N", help="bootstrap resamples (default 200)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    _add_repeats(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_db(p)
    p.set_defaults(func=cmd_stats)

    p = subparsers.add_parser("runs", help="list stored runs, newest first")
    p.add_argument("--sampler", help="only this sampler")
    p.add_argument("--model", help="only this model")
    p.add_argument("--reward", help="only this reward")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_db(p)
    p.set_defaults(func=cmd_runs)

    p = subparsers.add_parser("db", help="database maintenance: upgrade the schema, check integrity")
    p.add_argument(
        "action",
        choices=("upgrade", "check"),
        help="upgrade: apply migrations; check: integrity, "
        "foreign keys (SQLite), schema revision and row counts (exit 1 on problems)",
    )
    p.add_argument("--json", action="store_true", help="check: print JSON")
    _add_db(p)
    p.set_defaults(func=cmd_db)
