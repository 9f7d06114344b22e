"""Storage benchmark: votes per second through the repository, and run save time.

    python -m bench.bench_storage            # SQLite file in a temp folder
    python -m bench.bench_storage --url URL  # any database (PostgreSQL: use an empty one)
    python -m bench.bench_storage --vote-path --against main   # the Label tab's vote path, this tree vs a revision

Measures, in one process and one run:
* votes/s with one writer (each vote its own transaction via ``Database.write``,
  committed before the next starts: what the Label tab does per click);
* votes/s with 16 concurrent writer threads, and its ratio to one writer;
* the time to save (and to load and replay) a run whose trace has 1,000 events.
Numbers depend on the machine; compare ratios within one run.

``--vote-path`` measures instead what one click in the Label tab costs the
storage layer: ``present`` + ``add_vote`` in one write transaction, then the
next comparison and the progress counts in one read (``queue_state`` where the
tree has it, else ``next_comparison`` + ``progress``, as that tree's Label tab
does), on a database that already holds the votes of 32 other annotators.
It reports milliseconds and SQL statements per vote. ``--against REV`` runs
the same measurement on ``REV``'s ``storage/`` (``git archive``) in
alternating subprocesses, so before and after come from one command, and
prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from engines.trace import CostEvent, DoneEvent, NodeEvent, ScoreEvent, SelectEvent, Trace
from storage import Database, add_vote, load_run, make_comparisons, save_run


def thousand_event_trace() -> Trace:
    """A root, 498 candidates, their 498 scores, a select, a cost snapshot and a done: 1,000 events."""
    events: list = [NodeEvent(id="root", parent=None, text="Write a haiku about the sea.")]
    n = 498
    for i in range(n):
        events.append(
            NodeEvent(
                id=f"n{i}",
                parent="root",
                depth=1,
                text=f" candidate {i} " * 8,
                tokens=24,
                logprob=-12.5,
                final=True,
            )
        )
    for i in range(n):
        events.append(ScoreEvent(node=f"n{i}", reward="length", value=float(i % 37)))
    events.append(SelectEvent(nodes=["n36"]))
    events.append(CostEvent(cost={"generated_tokens": 12000, "wall_seconds": 3.5}))
    events.append(
        DoneEvent(picks=["n36"], candidates=[f"n{i}" for i in range(n)], cost={"generated_tokens": 12000})
    )
    assert len(events) == 1000
    return Trace(events)


def save(db: Database, trace: Trace, seed: int) -> int:
    return db.write(
        lambda s: save_run(
            s,
            trace=trace,
            task={"prompt": "Write a haiku about the sea."},
            model="bench-model",
            reward="length",
            sampler="best_of_n",
            config={"n": 498},
            seed=seed,
        )
    )


def cast_votes(db: Database, annotator: str, comparison_ids: list[int]) -> None:
    for n, cid in enumerate(comparison_ids):
        db.write(
            lambda s, c=cid, n=n: add_vote(
                s,
                comparison_id=c,
                annotator=annotator,
                outcome="ab"[n % 2],
                idempotency_key=f"{annotator}-{c}",
            )
        )


def bench(url: str, votes: int, threads: int) -> dict[str, float]:
    results: dict[str, float] = {}
    with Database.open(url) as db:
        trace = thousand_event_trace()
        save(db, trace, seed=-1)  # warm up imports, caches and the connection pool
        save_times, load_times = [], []
        for seed in range(5):
            t0 = time.perf_counter()
            run_id = save(db, trace, seed)
            save_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            stored = db.read(lambda s, r=run_id: load_run(s, r))
            load_times.append(time.perf_counter() - t0)
            assert stored.trace.to_list() == trace.to_list()
        results["save_1000_event_run_ms"] = 1000 * statistics.median(save_times)
        results["load_1000_event_run_ms"] = 1000 * statistics.median(load_times)

        comparisons = db.write(lambda s: make_comparisons(s, run_id, "all_pairs", max_pairs=max(votes, 200)))
        cast_votes(db, "warmup", comparisons[:20])
        t0 = time.perf_counter()
        cast_votes(db, "solo", comparisons[:votes])
        results["votes_per_s_1_writer"] = votes / (time.perf_counter() - t0)

        each = 200
        barrier = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            barrier.wait()
            try:
                cast_votes(db, f"writer-{i}", comparisons[:each])
            except BaseException as exc:  # reported below; a benchmark must not hide failures
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        results[f"votes_per_s_{threads}_writers"] = threads * each / elapsed
        results["concurrent_over_single"] = (
            results[f"votes_per_s_{threads}_writers"] / results["votes_per_s_1_writer"]
        )
        results["save_ms_per_event"] = results["save_1000_event_run_ms"] / 1000
        report = db.check()
        assert report.ok, report.problems
    return results


def vote_path(url: str, votes: int, background: int) -> dict[str, float]:
    """Milliseconds and SQL statements per Label-tab vote (see the module docstring)."""
    from sqlalchemy import event

    import storage

    statements = [0]

    def count(*_args: object) -> None:
        statements[0] += 1

    with Database.open(url) as db:
        run_id = save(db, thousand_event_trace(), seed=0)
        comparisons = db.write(lambda s: make_comparisons(s, run_id, "all_pairs", max_pairs=background + votes + 50))
        # the state a busy labelling session leaves: 32 annotators' votes spread over the pairs
        for start in range(0, background, 200):

            def batch(s, start=start):
                for n in range(start, min(start + 200, background)):
                    add_vote(s, comparison_id=comparisons[n % len(comparisons)], annotator=f"other-{n % 32}",
                             outcome="ab"[n % 2], idempotency_key=f"bg-{n}")

            db.write(batch)
        if hasattr(storage, "queue_state"):
            def after_vote(s):
                return storage.queue_state(s, "solo")
        else:  # the Label tab before queue_state existed
            def after_vote(s):
                return storage.next_comparison(s, "solo"), storage.progress(s, "solo")

        def label_one(n: int, cid: int):
            def write(s):
                shown = storage.present(s, cid)
                return add_vote(s, comparison_id=cid, annotator="solo", outcome=shown.outcome("left"),
                                idempotency_key=f"solo-{n}")

            db.write(write)
            return db.read(after_vote)

        state = label_one(0, db.read(lambda s: storage.next_comparison(s, "solo")).comparison_id)  # warm up
        event.listen(db.engine, "before_cursor_execute", count)
        times = []
        for n in range(1, votes + 1):
            shown = state[0]
            t0 = time.perf_counter()
            state = label_one(n, shown.comparison_id)
            times.append(time.perf_counter() - t0)
        event.remove(db.engine, "before_cursor_execute", count)
    return {
        "vote_path_ms_median": 1000 * statistics.median(times),
        "vote_path_ms_mean": 1000 * statistics.fmean(times),
        "vote_path_statements": statements[0] / votes,
        "votes": votes,
        "background_votes": background,
    }


def compare_vote_path(rev: str, votes: int, background: int, rounds: int) -> dict[str, float]:
    """``vote_path`` on this tree and on ``rev``'s storage/, alternating, in subprocesses."""
    root = Path(__file__).resolve().parents[1]
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(root), "archive", rev, "storage"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        for _ in range(rounds):
            for label, cwd in (("before", old), ("after", str(root))):
                # the code under test comes from the working directory (first on sys.path), the rest from root
                env = {**os.environ, "PYTHONPATH": str(root)}
                out = subprocess.run(
                    [sys.executable, "-m", "bench.bench_storage", "--vote-path", "--json",
                     "--votes", str(votes), "--background", str(background)],
                    cwd=cwd, env=env, capture_output=True, text=True, check=True,
                )
                results[label].append(json.loads(out.stdout))
    summary: dict[str, float] = {"rounds": rounds, "votes": votes, "background_votes": background}
    for label, runs in results.items():
        summary[f"{label}_ms_median"] = statistics.median(r["vote_path_ms_median"] for r in runs)
        summary[f"{label}_statements"] = runs[0]["vote_path_statements"]
    summary["time_ratio_before_over_after"] = summary["before_ms_median"] / summary["after_ms_median"]
    summary["statement_ratio_before_over_after"] = summary["before_statements"] / summary["after_statements"]
    return summary


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a SQLite file in a temp folder)")
    parser.add_argument("--votes", type=int, default=1000, help="votes for the one-writer measurement")
    parser.add_argument("--threads", type=int, default=16, help="concurrent writers (200 votes each)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--vote-path", action="store_true", help="ms and SQL statements per Label-tab vote")
    parser.add_argument("--against", metavar="REV", help="with --vote-path: also measure REV's storage/ (git)")
    parser.add_argument("--background", type=int, default=2000, help="with --vote-path: other annotators' votes")
    parser.add_argument("--rounds", type=int, default=3, help="with --against: alternating runs of each")
    args = parser.parse_args(argv)
    if args.vote_path:
        if args.votes < 1 or args.background < 0 or args.rounds < 1:
            parser.error("--votes and --rounds must be at least 1, --background at least 0")
        return _vote_path_main(args)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        results = bench(url, args.votes, args.threads)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        backend = "SQLite file (WAL)" if url.startswith("sqlite") else url.split(":", 1)[0]
        print(f"storage benchmark on {backend}")
        print(f"  votes/s, 1 writer:            {results['votes_per_s_1_writer']:8.0f}")
        print(
            f"  votes/s, {args.threads} writers:          {results[f'votes_per_s_{args.threads}_writers']:8.0f}"
            f"   ({results['concurrent_over_single']:.2f}x one writer)"
        )
        print(
            f"  save a 1,000-event run:       {results['save_1000_event_run_ms']:8.1f} ms"
            f"   ({results['save_ms_per_event'] * 1000:.0f} us per event)"
        )
        print(f"  load + replay it:             {results['load_1000_event_run_ms']:8.1f} ms")
    return results


def _vote_path_main(args: argparse.Namespace) -> dict[str, float]:
    if args.against:
        results = compare_vote_path(args.against, args.votes, args.background, args.rounds)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = vote_path(args.url or f"sqlite:///{Path(tmp) / 'bench.db'}", args.votes, args.background)
    if args.json:
        print(json.dumps(results, indent=2))
    elif args.against:
        print(f"Label-tab vote path, {args.votes} votes over {args.background} others', median of {args.rounds} rounds")
        print(f"  {args.against:>10}: {results['before_ms_median']:6.2f} ms/vote, {results['before_statements']:.0f} statements")
        print(f"  {'this tree':>10}: {results['after_ms_median']:6.2f} ms/vote, {results['after_statements']:.0f} statements")
        print(f"  ratio: {results['time_ratio_before_over_after']:.2f}x faster, "
              f"{results['statement_ratio_before_over_after']:.2f}x fewer statements")
    else:
        print(f"Label-tab vote path: {results['vote_path_ms_median']:.2f} ms/vote (median), "
              f"{results['vote_path_statements']:.0f} statements/vote")
    return results


if __name__ == "__main__":
    main()
