"""Child process for the SIGKILL test: casts votes forever, acknowledging each after its commit.

usage: python vote_writer.py DB_URL COMPARISON_ID
Prints "ack KEY" (flushed) only after ``Database.write`` has committed the vote.
"""

from __future__ import annotations

import sys

from storage import Database, add_vote


def main() -> None:
    url, comparison_id = sys.argv[1], int(sys.argv[2])
    db = Database(url)
    print("ready", flush=True)
    i = 0
    while True:
        key = f"kill-{i}"
        db.write(
            lambda s, k=key, n=i: add_vote(
                s,
                comparison_id=comparison_id,
                annotator=f"writer-{n}",
                outcome="ab"[n % 2],
                idempotency_key=k,
                rationale="r" * (n % 50),
            )
        )
        sys.stdout.write(f"ack {key}\n")
        sys.stdout.flush()
        i += 1


if __name__ == "__main__":
    main()
