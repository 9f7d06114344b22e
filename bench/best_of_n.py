"""Best-of-N on the embedded model against plain transformers, in one process.

Measures, for N=16 and 64 new tokens (end-of-text suppressed so every run
does the same work), the wall time of samplescope's best_of_n sampler
(generation + VADER reward) against:

- ``generate(num_return_sequences=16)`` plus the same reward pass, and
- 16 sequential ``generate`` calls plus the same reward pass.

Also the model's cold start (GGUF -> safetensors conversion, in a fresh
process with an empty cache) and warm start (the cached safetensors).

    python -m bench.best_of_n [--repeats 3] [--n 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch

from bench.measure import interleaved, median, save, timed


def start_time(cache: str) -> float:
    code = "import time; t=time.perf_counter(); from engines.models import load_model; load_model('embedded:smollm2'); print(time.perf_counter()-t)"
    env = {**os.environ, "SAMPLESCOPE_CACHE": cache, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip-start", action="store_true", help="skip the cold/warm start measurement")
    args = parser.parse_args(argv)

    from engines.models import load_model
    from engines.rewards import build_reward
    from engines.samplers import build_sampler
    from engines.task import Task
    from engines.trace import collect

    model = load_model("embedded:smollm2")
    reward = build_reward("sentiment")
    task = Task(prompt="Write one sentence about a rainy Monday morning.")
    prompt = torch.tensor([model.encode_task(task)])
    n, tokens = args.n, args.tokens
    hf_args = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=tokens, min_new_tokens=tokens)

    def ours():
        sampler = build_sampler("best_of_n", {"n": n, "max_new_tokens": tokens, "min_new_tokens": tokens, "batch_size": n})
        return collect(sampler.run(task, model, reward, rng=torch.Generator().manual_seed(0)))

    @torch.inference_mode()
    def hf_batched():
        out = model.model.generate(prompt, num_return_sequences=n, **hf_args)
        texts = [model.decode(row[prompt.shape[1]:]) for row in out]
        return reward.score(task, texts)

    @torch.inference_mode()
    def hf_sequential():
        texts = []
        for _ in range(n):
            out = model.model.generate(prompt, **hf_args)
            texts.append(model.decode(out[0, prompt.shape[1]:]))
        return reward.score(task, texts)

    ours()  # warm up kernels and the tokenizer
    hf_batched()
    times = interleaved({"samplescope": ours, "hf_batched": hf_batched}, args.repeats)
    sequential = timed(hf_sequential)[0]
    trace = ours()
    generated = trace.done.cost["generated_tokens"]
    result = {
        "n": n,
        "new_tokens": tokens,
        "samplescope_s": median(times["samplescope"]),
        "hf_generate_s": median(times["hf_batched"]),
        "hf_sequential_s": sequential,
        "generated_tokens": generated,
    }
    result["ratio_vs_generate"] = result["samplescope_s"] / result["hf_generate_s"]
    result["ratio_vs_sequential"] = result["samplescope_s"] / sequential
    result["tokens_per_s"] = generated / result["samplescope_s"]
    result["hf_tokens_per_s"] = n * tokens / result["hf_generate_s"]
    if not args.skip_start:
        with tempfile.TemporaryDirectory() as cache:
            result["cold_start_s"] = start_time(cache)
            result["warm_start_s"] = start_time(cache)
    path = save("best_of_n", result)
    print(f"best-of-{n}, {tokens} new tokens, embedded SmolLM2 ({torch.get_num_threads()} threads)")
    print(f"  samplescope best_of_n     {result['samplescope_s']:.2f} s  ({result['tokens_per_s']:.0f} tok/s)")
    print(f"  generate(num_return={n})  {result['hf_generate_s']:.2f} s  ({result['hf_tokens_per_s']:.0f} tok/s)")
    print(f"  {n} sequential generate    {sequential:.2f} s")
    print(f"  ratio vs generate {result['ratio_vs_generate']:.2f} (goal <= 1.10); vs sequential {result['ratio_vs_sequential']:.2f}")
    if "cold_start_s" in result:
        print(f"  cold start {result['cold_start_s']:.1f} s, warm start {result['warm_start_s']:.1f} s")
    print(f"  -> {path}")
    return result


if __name__ == "__main__":
    main()
