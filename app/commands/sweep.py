"""``samplescope prompts``, ``sweep``, ``sweeps`` and ``report``: own prompt sets, sweeps at matched compute, a report.

    samplescope prompts add FILE [--name N] [--prompt-col C] [--answer-col C] [--system-col C]
    samplescope prompts list
    samplescope sweep --prompts SET --samplers a,b,c (--sizes 1,2,4 | --budget COUNTER=V1,V2) [--engine SPEC]...
    samplescope sweep --resume ID
    samplescope sweeps list | export ID --out cells.csv|cells.parquet
    samplescope report run:ID|sweep:ID|compare:NAME --out report.html
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading

from app.commands.console import add_json, parse_pairs, quiet_libraries
from app.commands.data import _storage_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prompts", help="add and list prompt sets", description="Store your own prompt sets.")
    psub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    psub.required = True
    add = psub.add_parser("add", help="store a prompt set from a file or datasets folder")
    add.add_argument("path", help=".jsonl, .csv, .parquet, .arrow, a save_to_disk folder or a datasets cache folder")
    add.add_argument("--name", help="the set's name (default: the file name)")
    add.add_argument("--prompt-col", default="prompt")
    add.add_argument("--answer-col")
    add.add_argument("--system-col")
    add.add_argument("--reward-col", help="a column naming each row's steering reward")
    add.add_argument("--split", help="the split of a datasets folder")
    add.add_argument("--raw", action="store_true", help="do not wrap prompts in the chat template")
    add.add_argument("--db")
    add_json(add)
    add.set_defaults(func=_storage_errors(prompts_add))
    ls = psub.add_parser("list", help="stored and built-in prompt sets")
    ls.add_argument("--db")
    add_json(ls)
    ls.set_defaults(func=_storage_errors(prompts_list))

    s = sub.add_parser("sweep", help="samplers on a prompt set at matched compute",
                       description="Run every chosen sampler on a prompt set at matched sizes or budgets; stored, resumable.")
    s.add_argument("--prompts", help="a prompt set name (samplescope prompts list)")
    s.add_argument("--samplers", help="comma-separated sampler names, each optionally NAME@REWARD")
    axis = s.add_mutually_exclusive_group()
    axis.add_argument("--sizes", help="values of each sampler's size knob, e.g. 1,2,4,8")
    axis.add_argument("--budget", help="COUNTER=V1,V2,... caps of one cost counter, e.g. generated_tokens=64,128")
    s.add_argument("--size", type=int, default=64, help="the size knob under --budget (default 64, within each sampler's range)")
    s.add_argument("--engine", action="append", default=[], metavar="MODEL_SPEC",
                   help="a model spec; repeat to spread prompts over several engines (default: the set's model)")
    s.add_argument("--reward", help="steering reward for every sampler (default: each prompt's)")
    s.add_argument("--evaluate", help="evaluation reward (default: the steering reward)")
    s.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter for every sampler that has it, e.g. max_new_tokens=64")
    s.add_argument("--limit", type=int, help="only the first N prompts")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=4, help="cells in flight at once (default 4)")
    s.add_argument("--title")
    s.add_argument("--resume", type=int, metavar="ID", help="finish a stored sweep (skips its finished cells)")
    s.add_argument("--device", default="auto")
    s.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    s.add_argument("--db")
    add_json(s)
    s.set_defaults(func=_storage_errors(sweep_run))

    w = sub.add_parser("sweeps", help="list and export stored sweeps")
    wsub = w.add_subparsers(dest="action", metavar="ACTION", parser_class=type(w))
    wsub.required = True
    wl = wsub.add_parser("list", help="stored sweeps, newest first")
    wl.add_argument("--db")
    add_json(wl)
    wl.set_defaults(func=_storage_errors(sweeps_list))
    we = wsub.add_parser("export", help="a sweep's cells as CSV or Parquet")
    we.add_argument("id", type=int)
    we.add_argument("--out", required=True, help="FILE.csv or FILE.parquet")
    we.add_argument("--db")
    we.set_defaults(func=_storage_errors(sweeps_export))

    r = sub.add_parser("report", help="one self-contained HTML file for a run or a sweep")
    r.add_argument("target", help="run:ID, sweep:ID, compare:NAME (a strategy comparison: samplescope train --compare), "
                   "steer:NAME (samplescope steer-or-train), or a bare run id")
    r.add_argument("--out", required=True)
    r.add_argument("--db")
    r.set_defaults(func=_storage_errors(report))


def _db(args):
    from app.workflows.store import open_database

    return open_database(args.db)


def prompts_add(args) -> int:
    from app.workflows.sweeps import add_prompt_set
    from engines.prompts import load_prompt_file

    prompts = load_prompt_file(args.path, name=args.name, prompt_col=args.prompt_col, answer_col=args.answer_col,
                               system_col=args.system_col, reward_col=args.reward_col, split=args.split, chat=not args.raw)
    set_id, created, name = add_prompt_set(_db(args), prompts)
    if args.json:
        print(json.dumps({"id": set_id, "name": name, "prompts": len(prompts), "created": created}))
    else:
        print(f"{'stored' if created else 'already stored (same content)'}: prompt set {set_id} "
              f"{name!r}, {len(prompts)} prompts")
    return 0


def prompts_list(args) -> int:
    from engines.tasks import TASK_SETS
    from storage.prompt_sets import list_prompt_sets

    stored = _db(args).read(list_prompt_sets)
    names = {s.name for s in stored}
    rows = [s.as_dict() | {"builtin": s.source.startswith("builtin:")} for s in stored]
    rows += [{"name": n, "size": len(TASK_SETS.get(n).tasks()), "source": f"builtin:{n}", "builtin": True}
             for n in TASK_SETS.names() if n not in names]
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in sorted(rows, key=lambda r: r["name"]):
        print(f"{row['name']:<20} {row['size']:>6} prompts  {row['source']}")
    return 0


def sweep_run(args) -> int:
    quiet_libraries()
    from app.workflows.sweeps import load_plan, parse_arms, parse_budget, parse_levels, run_stored, start
    from engines.errors import ConfigError

    db = _db(args)
    if args.resume is not None:
        sweep_id = args.resume
        plan = load_plan(db, sweep_id, device=args.device, dtype=args.dtype)
    else:
        if not args.prompts or not args.samplers or not (args.sizes or args.budget):
            raise ConfigError("give --prompts, --samplers and --sizes or --budget (or --resume ID)")
        arms = parse_arms(args.samplers, parse_pairs(args.params, "--set"), strings=True)
        if args.reward:
            arms = tuple(a if a.reward else dataclasses.replace(a, reward=args.reward) for a in arms)
        if args.budget:
            counter, levels = parse_budget(args.budget)
            axis = "budget"
        else:
            counter, levels, axis = None, parse_levels(args.sizes, "--sizes"), "size"
        sweep_id, plan = start(db, args.prompts, arms=arms, levels=levels, axis=axis, counter=counter,
                               models=args.engine, evaluate=args.evaluate, seed=args.seed, size=args.size,
                               prompts=args.limit, title=args.title, device=args.device, dtype=args.dtype)
    total = len(plan.cells())
    from storage.sweeps import done_keys

    already = len(db.read(lambda s: done_keys(s, sweep_id)))
    bar = _Bar(total, already, enabled=not args.json and sys.stderr.isatty())
    cancel = threading.Event()
    try:
        for result in run_stored(db, sweep_id, plan, workers=args.workers, cancel=cancel):
            bar.step(result)
    except KeyboardInterrupt:
        cancel.set()
        bar.close()
        print(f"samplescope: interrupted; resume with: samplescope sweep --resume {sweep_id}", file=sys.stderr)
        return 130
    bar.close()
    from app.workflows.sweeps import cell_rows
    from engines.sweep_stats import points

    summary = points(cell_rows(db, sweep_id))
    if args.json:
        print(json.dumps({"sweep_id": sweep_id, "cells": total, "points": summary}, default=float))
        return 0
    print(f"sweep {sweep_id}: {total} cells ({already} were stored already)")
    axis = plan.counter if plan.axis == "budget" else "size"
    print(f"{'arm':<28} {axis:>16} {'quality':>8} {'95% CI':>17} {'tokens':>8} {'reward calls':>12}")
    for p in summary:
        print(f"{p['arm']:<28} {p['level']:>16g} {p['quality']:>8.3f} [{p['ci_low']:6.3f}, {p['ci_high']:6.3f}] "
              f"{p['generated_tokens']:>8.1f} {p['reward_calls']:>12.1f}")
    return 0


class _Bar:
    """A one-line progress bar on stderr: cells done of all, the latest cell."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, done, enabled

    def step(self, result) -> None:
        self.done += 1
        if self.enabled:
            filled = int(30 * self.done / max(1, self.total))
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {result.key.arm} "
                  f"@{result.key.level:g} prompt {result.key.prompt}\033[K", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def sweeps_list(args) -> int:
    from storage.sweeps import list_sweeps

    rows = _db(args).read(list_sweeps)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows]))
    else:
        for row in rows:
            print(row.label())
    return 0


def sweeps_export(args) -> int:
    from storage.sweeps import export_cells

    count = _db(args).read(lambda s: export_cells(s, args.id, args.out))
    print(f"wrote {count} cells to {args.out}")
    return 0


def report(args) -> int:
    from app.workflows.report import write_report

    path = write_report(_db(args), args.target, args.out)
    print(f"wrote {path}")
    return 0
