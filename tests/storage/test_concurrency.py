"""Reliability under concurrency and crashes (file databases, real threads and processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from storage_helpers import store_run

from storage import Conflict, Database, add_vote, make_comparisons
from storage.models import Vote

THREADS = 16
VOTES_EACH = 200


def count_votes(db: Database) -> int:
    return db.read(lambda s: s.scalar(select(func.count()).select_from(Vote)))


def run_threads(target, n):
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def wrapped(i):
        try:
            start.wait()
            target(i)
        except BaseException as exc:  # any error reaching a caller fails the test
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_sixteen_threads_cast_3200_distinct_votes(db):
    texts = [f"candidate {i}" for i in range(21)]  # 210 pairs
    run = store_run(db, texts, [float(i) for i in range(21)])
    cids = db.write(lambda s: make_comparisons(s, run, "all_pairs", max_pairs=VOTES_EACH))
    assert len(cids) == VOTES_EACH

    def cast(i):
        for n, cid in enumerate(cids):
            result = db.write(
                lambda s, c=cid, n=n: add_vote(
                    s,
                    comparison_id=c,
                    annotator=f"annotator-{i}",
                    outcome="ab"[n % 2],
                    idempotency_key=f"t{i}-c{c}",
                )
            )
            assert result.created

    errors = run_threads(cast, THREADS)
    assert errors == []
    assert count_votes(db) == THREADS * VOTES_EACH
    assert db.check().ok


def test_concurrent_retries_of_one_vote_store_it_once(db):
    run = store_run(db, ["x", "y"], [0.0, 1.0])
    [cid] = db.write(lambda s: make_comparisons(s, run, "max_min"))
    results = []

    def send(_):
        results.append(
            db.write(
                lambda s: add_vote(
                    s, comparison_id=cid, annotator="ada", outcome="b", idempotency_key="double-click"
                )
            )
        )

    assert run_threads(send, 8) == []
    assert count_votes(db) == 1
    assert len({r.vote_id for r in results}) == 1 and sum(r.created for r in results) == 1


def test_racing_first_votes_leave_one_current_vote(db):
    run = store_run(db, ["x", "y"], [0.0, 1.0])
    [cid] = db.write(lambda s: make_comparisons(s, run, "max_min"))
    outcomes: list[str] = []

    def send(i):
        try:
            db.write(
                lambda s: add_vote(
                    s, comparison_id=cid, annotator="ada", outcome="ab"[i % 2], idempotency_key=f"tab-{i}"
                )
            )
            outcomes.append("stored")
        except Conflict:
            outcomes.append("conflict")

    assert run_threads(send, 8) == []
    assert outcomes.count("stored") == 1 and outcomes.count("conflict") == 7
    assert count_votes(db) == 1


@pytest.mark.parametrize("rounds", [3])
def test_writer_killed_mid_stream_loses_no_acknowledged_vote(db, db_url, rounds):
    run = store_run(db, ["x", "y"], [0.0, 1.0])
    [cid] = db.write(lambda s: make_comparisons(s, run, "max_min"))
    writer = Path(__file__).with_name("vote_writer.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    acked: set[str] = set()
    for round_ in range(rounds):
        child = subprocess.Popen(
            [sys.executable, str(writer), db_url, str(cid)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        assert child.stdout.readline().strip() == "ready"
        target = 20 + 15 * round_
        got = 0
        while got < target:
            line = child.stdout.readline()
            assert line.startswith("ack "), line
            got += 1
        time.sleep(0.01 * round_)  # kill at a different point of the stream each round
        os.kill(child.pid, signal.SIGKILL)
        # whatever was acknowledged before the kill (including lines still in the pipe) counts
        rest = child.stdout.read()
        child.wait()
        round_acks = [line.split()[1] for line in rest.splitlines() if line.startswith("ack ")]
        acked.update(f"{k}" for k in round_acks)
        acked.update(f"kill-{i}" for i in range(got))
        report = db.check()
        assert report.ok, report.problems
        stored = set(db.read(lambda s: s.scalars(select(Vote.idempotency_key)).all()))
        assert acked <= stored
        # the next writer starts from scratch: its keys repeat, so each restart replays (stores nothing new)
    assert count_votes(db) >= max(int(k.split("-")[1]) for k in acked) + 1


def test_locked_writes_are_retried_then_reported(tmp_path, monkeypatch):
    import sqlite3

    from storage import DatabaseBusy, RetryPolicy, start_session

    path = tmp_path / "locked.db"
    Database.open(f"sqlite:///{path}").close()
    # no busy wait inside SQLite: every lock conflict surfaces as "database is locked" at once
    db = Database(f"sqlite:///{path}", busy_timeout_ms=0, retry=RetryPolicy(attempts=4, base_delay_s=0.01))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    with pytest.raises(DatabaseBusy, match="locked through 4 attempts"):
        db.write(lambda s: start_session(s, "ada"))
    # released while we back off: the retry goes through
    db_patient = Database(
        f"sqlite:///{path}",
        busy_timeout_ms=0,
        retry=RetryPolicy(attempts=50, base_delay_s=0.01, max_delay_s=0.05),
    )
    backoffs = []

    def back_off(seconds: float) -> None:  # the other writer commits during our third back-off
        backoffs.append(seconds)
        if len(backoffs) == 3:
            holder.execute("COMMIT")

    monkeypatch.setattr("storage.db.time.sleep", back_off)
    assert db_patient.write(lambda s: start_session(s, "ada")) == 1
    assert len(backoffs) == 3  # it waited for the lock: refused three times, retried, then through
    holder.close()
    db.close()
    db_patient.close()
