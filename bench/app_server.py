"""The app as its users run it: ``samplescope serve`` and ``samplescope sample`` in their own processes.

Benchmarks reach the app only from outside, over HTTP and the command line, so bench imports
nothing from app/ (the layer rule that tests/test_layers.py checks) and measures what a user sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args: str) -> list[str]:
    """The command line of ``samplescope ARGS`` with this interpreter (works without the script installed)."""
    return [sys.executable, "-m", "app.cli", *args]


@contextlib.contextmanager
def served(db_url: str, home: Path, port: int, *, model: str = "toy:abc", preload: bool = False,
           device: str = "auto", concurrency: int = 2, timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """``samplescope serve`` in its own process on 127.0.0.1:port, its data folder ``home`` and its log
    in ``home/server.log``; killed (not left running) on exit."""
    env = {**os.environ, "SAMPLESCOPE_HOME": str(home), "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    args = ["serve", "--db", db_url, "--port", str(port), "--model", model, "--device", device,
            "--concurrency", str(concurrency), *([] if preload else ["--no-preload"])]
    log = open(home / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cli(*args), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", proc, timeout)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def wait_until_up(base: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering")
        try:
            if httpx.get(base + "config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"no answer from {base} within {timeout:.0f} s")


def sample_and_save(db_url: str, args: Sequence[str]) -> int:
    """``samplescope sample ARGS --save --db DB_URL --json``; returns the stored run's id."""
    done = subprocess.run(cli("sample", *args, "--save", "--db", db_url, "--json"), cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"samplescope sample failed: {done.stderr.strip()[-500:]}")
    return int(json.loads(done.stdout)["run_id"])
