"""Storage benchmark: votes per second through the repository, and run save time.

    python -m bench.bench_storage            # SQLite file in a temp folder
    python -m bench.bench_storage --url URL  # any database (PostgreSQL: use an empty one)

Measures, in one process and one run:
* votes/s with one writer (each vote its own transaction via ``Database.write``,
  committed before the next starts: what the Label tab does per click);
* votes/s with 16 concurrent writer threads, and its ratio to one writer;
* the time to save (and to load and replay) a run whose trace has 1,000 events.
Numbers depend on the machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a SQLite file in a temp folder)")
    parser.add_argument("--votes", type=int, default=1000, help="votes for the one-writer measurement")
    parser.add_argument("--threads", type=int, default=16, help="concurrent writers (200 votes each)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
