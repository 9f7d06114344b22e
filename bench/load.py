"""Many users at once: labellers and sampler runs against a real ``samplescope serve``, over HTTP.

    samplescope bench load                       # 32 labellers, 2 sampler users, 60 s
    samplescope bench load --clients 8 --seconds 10 --json

The server is its own process (``python -m app.cli serve`` on a loopback port, a fresh
SQLite file seeded with runs and comparisons). Each labeller is a page session making the
page's own calls (bench/gradio_http.py): page load (the server issues its guest id), then
vote after vote, each answered with the next pair. Two more users call ``/sample`` in a loop.
Afterwards the database is checked: every acknowledged vote is stored exactly once, nothing
is stored that was not acknowledged, ``samplescope db check`` is clean, every run finished.
Reports votes/s and the vote latency (median, 95th percentile), HTTP round trip included.
Numbers depend on the machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.app_server import free_port, served
from bench.gradio_http import GradioCallError, PageSession

ROOT = Path(__file__).resolve().parents[1]
CHOICES = ("vote-a", "vote-b", "vote-tie", "vote-bad")


def seed_database(url: str, runs: int = 120, candidates: int = 5) -> int:
    """Stored runs and all their pairs; the number of comparisons made."""
    from engines.trace import DoneEvent, NodeEvent, ScoreEvent, SelectEvent, Trace
    from storage import Database, make_comparisons, save_run

    made = 0
    with Database.open(url) as db:
        for r in range(runs):
            ids = [f"n{i}" for i in range(candidates)]
            events: list[Any] = [NodeEvent(id="root", parent=None, text=f"prompt {r}")]
            events += [NodeEvent(id=i, parent="root", depth=1, text=f"answer {r}.{k}", tokens=3, final=True)
                       for k, i in enumerate(ids)]
            events += [ScoreEvent(node=i, reward="toy", value=k / candidates) for k, i in enumerate(ids)]
            events += [SelectEvent(nodes=[ids[-1]]), DoneEvent(picks=[ids[-1]], candidates=ids, cost={})]
            run_id = db.write(lambda s, events=events, r=r: save_run(
                s, trace=Trace(events), task={"prompt": f"prompt {r}"}, model="toy:abc", reward="toy",
                sampler=("best_of_n", "smc")[r % 2], config={}, seed=r))
            made += len(db.write(lambda s, run_id=run_id: make_comparisons(s, run_id, "all_pairs")))
    return made


@dataclass
class Labeller:
    base: str
    rng: random.Random
    acks: int = 0  # votes the server acknowledged as stored now
    repeats: int = 0  # acknowledged as already stored (a replay)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)  # perf_counter when each new vote was acknowledged
    in_flight: bool = False  # a vote sent and not yet answered (what a killed server may or may not have stored)
    guest: str | None = None
    give_up_on_error: bool = False  # stop at the first failed call (the server was killed)
    token: str | None = None

    def run(self, stop: threading.Event, config: dict) -> None:
        with httpx.Client(timeout=120) as http:
            page = PageSession(self.base, http, config)
            load = page.dependency(event="load")
            out = page.call(load, [None])
            token = self.token = _token(out) if self.token is None else self.token
            self.guest = token.split(".")[0]
            votes = {elem: page.dependency(elem_id=elem) for elem in CHOICES}
            reveal_at = {elem: votes[elem]["outputs"].index(page.component_id("label-reveal")) for elem in CHOICES}
            while not stop.is_set():
                elem = self.rng.choice(CHOICES)
                started = time.perf_counter()
                self.in_flight = True
                try:
                    result = page.call(votes[elem], [None, "", token])
                except (GradioCallError, httpx.HTTPError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    if stop.is_set() or self.give_up_on_error:
                        break
                    continue
                self.in_flight = False
                self.latencies.append(time.perf_counter() - started)
                reveal = result[reveal_at[elem]] or ""
                reveal = reveal.get("value", "") if isinstance(reveal, dict) else reveal
                if reveal.startswith("Your vote"):
                    if "already stored" in reveal:
                        self.repeats += 1
                    else:
                        self.acks += 1
                        self.acked_at.append(time.perf_counter())
                elif reveal == "Nothing to vote on.":
                    break  # this labeller's queue is empty
                else:
                    self.refused.append(reveal[:200])


def _token(outputs: list[Any]) -> str:
    for value in outputs:
        if isinstance(value, str) and value.startswith("guest-") and "." in value:
            return value
    raise RuntimeError("the page load issued no guest token")


@dataclass
class SamplerUser:
    base: str
    seed: int
    runs: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event, config: dict) -> None:
        with httpx.Client(timeout=300) as http:
            page = PageSession(self.base, http, config)
            sample = page.dependency(api_name="sample")
            k = 0
            while not stop.is_set():
                k += 1
                try:
                    (result,) = page.call(sample, ["toy:abc", "length", "best_of_n", f"user {self.seed} run {k}",
                                                   {"n": 16, "max_new_tokens": 8}, None, self.seed * 1000 + k, None])
                except (GradioCallError, httpx.HTTPError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                self.runs.append(int(result["run_id"]))


def verify(url: str, labellers: list[Labeller], users: list[SamplerUser]) -> dict[str, Any]:
    """What the database holds against what the clients were told."""
    from sqlalchemy import func, select

    from storage import Database
    from storage.models import Annotator, Run, Vote

    with Database.open(url) as db:
        with db.engine.connect() as conn:
            per_annotator = dict(conn.execute(
                select(Annotator.name, func.count(Vote.id)).join(Vote, Vote.annotator_id == Annotator.id).group_by(Annotator.name)
            ).all())
            duplicates = conn.execute(
                select(func.count()).select_from(
                    select(Vote.comparison_id, Vote.annotator_id).group_by(Vote.comparison_id, Vote.annotator_id)
                    .having(func.count() > 1).subquery())
            ).scalar_one()
            statuses = Counter(s for (s,) in conn.execute(select(Run.status).where(Run.id.in_([r for u in users for r in u.runs]))))
        report = db.check()
    acked = {lab.guest: lab.acks for lab in labellers if lab.guest}
    missing = {g: n - per_annotator.get(g, 0) for g, n in acked.items() if per_annotator.get(g, 0) < n}
    unacked = {g: per_annotator.get(g, 0) - n for g, n in acked.items() if per_annotator.get(g, 0) > n}
    strangers = sorted(set(per_annotator) - set(acked))
    return {
        "acknowledged": sum(acked.values()), "stored": sum(per_annotator.get(g, 0) for g in acked),
        "lost": missing, "stored_unacknowledged": unacked, "unknown_annotators": strangers,
        "duplicate_votes": int(duplicates), "db_check_problems": list(report.problems),
        "runs": sum(len(u.runs) for u in users), "run_statuses": dict(statuses),
    }


def db_check_cli(url: str, home: Path) -> tuple[int, str]:
    env = {**os.environ, "SAMPLESCOPE_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "app.cli", "db", "check", "--db", url], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, (done.stdout + done.stderr).strip()


def run_load(clients: int = 32, seconds: float = 60.0, samplers: int = 2, folder: Path | None = None) -> dict[str, Any]:
    folder = Path(folder or tempfile.mkdtemp(prefix="samplescope-load-"))
    url = f"sqlite:///{folder / 'load.db'}"
    comparisons = seed_database(url)
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    with served(url, folder, port):
        config = httpx.get(base + "config", timeout=30).json()
        stop = threading.Event()
        labellers = [Labeller(base, random.Random(k)) for k in range(clients)]
        users = [SamplerUser(base, seed=k + 1) for k in range(samplers)]
        threads = [threading.Thread(target=w.run, args=(stop, config), daemon=True) for w in [*labellers, *users]]
        started = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        window = time.perf_counter() - started
        for t in threads:
            t.join(300)
        hung = sum(t.is_alive() for t in threads)
    latencies = sorted(x for lab in labellers for x in lab.latencies)
    checked = verify(url, labellers, users)
    rc, check_text = db_check_cli(url, folder)
    return {
        "clients": clients, "sampler_users": samplers, "seconds": round(window, 1), "comparisons": comparisons,
        "votes_per_s": round(sum(t - started <= window for lab in labellers for t in lab.acked_at) / window, 1),
        "vote_latency_ms": {"median": _ms(statistics.median(latencies)) if latencies else None,
                            "p95": _ms(_quantile(latencies, 0.95)) if latencies else None,
                            "max": _ms(latencies[-1]) if latencies else None},
        "errors": [e for w in [*labellers, *users] for e in w.errors][:10],
        "refused": [r for lab in labellers for r in lab.refused][:10],
        "replays": sum(lab.repeats for lab in labellers), "hung_clients": hung,
        "db_check_cli": {"rc": rc, "output": check_text.splitlines()[-1] if check_text else ""},
        **checked,
    }


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samplescope bench load", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="labellers at once (default 32)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they label (default 60)")
    parser.add_argument("--samplers", type=int, default=2, help="users running samplers meanwhile (default 2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 1 <= args.seconds <= 3600 or not 0 <= args.samplers <= 16:
        parser.error("--clients 1-256, --seconds 1-3600, --samplers 0-16")
    result = run_load(args.clients, args.seconds, args.samplers)
    out = ROOT / "bench" / "results" / "load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result))
    else:
        lat = result["vote_latency_ms"]
        print(f"{result['clients']} labellers + {result['sampler_users']} sampler users for {result['seconds']} s: "
              f"{result['votes_per_s']} votes/s, vote latency median {lat['median']} ms, p95 {lat['p95']} ms")
        print(f"acknowledged {result['acknowledged']}, stored {result['stored']}, lost {sum(result['lost'].values())}, "
              f"stored unacknowledged {sum(result['stored_unacknowledged'].values())}, duplicates {result['duplicate_votes']}, "
              f"runs {result['runs']} {result['run_statuses']}, db check rc {result['db_check_cli']['rc']}")
    ok = not (result["lost"] or result["stored_unacknowledged"] or result["duplicate_votes"] or result["db_check_problems"]
              or result["db_check_cli"]["rc"] or result["hung_clients"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
