"""Benchmarks: each prints ratios measured in one process and writes JSON under bench/results/.

``python -m bench [name ...]`` (``make bench``) runs them; ``samplescope bench NAME`` runs one.
"""

#: name -> (module, one-line description)
BENCHES = {
    "best_of_n": ("bench.best_of_n", "best-of-N against transformers generate, tokens/s, start times"),
    "beam_reuse": ("bench.beam_reuse", "beam search with and without prefix KV reuse"),
    "storage": ("bench.bench_storage", "votes per second and run save time"),
    "scaling": ("bench.scaling", "accuracy against N and tokens on the reasoning lab"),
    "diffusion": ("bench.diffusion", "reward and digit share against network evaluations"),
    "browser": ("bench.browser", "page done / sampler wall time in a real browser: best-of-N, knockout, FK steering on digits"),
    "load": ("bench.load", "32 labellers and 2 sampler users over HTTP: votes/s, vote latency, nothing lost"),
    "active": ("bench.active", "held-out accuracy against labels: random vs uncertain pairs (simulated annotator)"),
    "remote": ("bench.remote", "vLLM through samplescope: overhead, prefix cache, concurrent users, in-process"),
    "sweep_engines": ("bench.sweep_engines", "a sweep on two vLLM servers against one: throughput (needs .venv-vllm)"),
    "pairs": ("bench.pairs", "held-out reward accuracy against labels spent, per pair rule and filter (simulated annotator)"),
    "audit": ("bench.audit", "robustness audit of every shipped reward on arith; West-of-N vs random pairs (simulated annotator)"),
    "train": ("bench.train", "RL on the arith policy: lab vs TRL rollout tokens/s, s per update, accuracy vs samples per strategy"),
    "vas_arith": ("bench.vas_arith", "vas on arith: a learned value head against Monte-Carlo values and one T=1 sample"),
    "diffusion_train": ("bench.diffusion_train", "diffusion RL on digits: updates/s and peak memory per scheme; steer or train? at matched compute"),
}
