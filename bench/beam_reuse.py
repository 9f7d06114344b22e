"""Beam search with and without reuse of prefix KV caches, in one process.

Beam search (4 beams × 4 expansions, 8 steps of 8 tokens) on the embedded
SmolLM2 with a long prompt (a ~300-token passage, as reasoning prompts with
instructions and examples are), rewarded by VADER sentiment on the partial
text. The same seeded run is done twice: once with the model's prefix store
(each expansion prefills only its newest tokens) and once without (each
expansion re-encodes prompt and history). Reports prefilled tokens, wall time,
generated tokens/s and the ratios. Goal: >= 4x fewer prefilled tokens and
>= 2x less wall time with reuse.

    python -m bench.beam_reuse [--repeats 2]
"""

from __future__ import annotations

import argparse

import torch

from bench.measure import median, save, timed

PASSAGE = (
    "The harbour town woke slowly. Fishing boats came back with the tide, gulls argued over the nets, "
    "and the bakery on the corner opened its shutters to the smell of bread. Children ran along the sea wall "
    "while their grandparents sat on benches, talking about the weather and the price of fish. In the afternoon "
    "a light rain fell, then the sun returned and painted the wet stones gold. Tourists took photographs of the "
    "lighthouse, and a street musician played an old song about sailors who never came home. By evening the "
    "lamps were lit, the cafes were full, and the boats rocked gently against the quay. "
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    from engines.models import load_model
    from engines.models.hf import TransformersTextModel
    from engines.rewards import build_reward
    from engines.samplers import build_sampler
    from engines.task import Task
    from engines.trace import collect

    base = load_model("embedded:smollm2")
    task = Task(prompt=PASSAGE * 2 + "\nContinue the story with a cheerful ending.")
    reward = build_reward("partial:sentiment")
    config = {"beams": 4, "expand": 4, "max_steps": 8, "step": "tokens", "max_new_tokens": 8, "temperature": 0.8}
    results: dict[str, dict] = {}
    for reuse in (True, False):
        model = TransformersTextModel(base.model, base.tokenizer, name="smollm2", reuse_prefixes=reuse)
        times, trace = [], None
        for _ in range(args.repeats):
            model.store.clear()
            sampler = build_sampler("beam_search", config)
            seconds, trace = timed(lambda m=model, s=sampler: collect(s.run(task, m, reward, rng=torch.Generator().manual_seed(0))))
            times.append(seconds)
        cost = trace.done.cost
        results["reuse" if reuse else "no_reuse"] = {
            "wall_s": median(times),
            "prefill_tokens": cost["prefill_tokens"],
            "generated_tokens": cost["generated_tokens"],
            "model_calls": cost["model_calls"],
            "tokens_per_s": cost["generated_tokens"] / median(times),
            "pick": trace.full_text(trace.done.picks[0]),
        }
    on, off = results["reuse"], results["no_reuse"]
    out = {
        "config": config,
        "prompt_tokens": len(base.encode_task(task)),
        **results,
        "prefill_ratio": off["prefill_tokens"] / on["prefill_tokens"],
        "wall_ratio": off["wall_s"] / on["wall_s"],
        "same_result": on["pick"] == off["pick"],
    }
    path = save("beam_reuse", out)
    print(f"beam search 4x4, 8 steps of 8 tokens, prompt {out['prompt_tokens']} tokens (embedded SmolLM2)")
    for name in ("reuse", "no_reuse"):
        r = results[name]
        print(f"  {name:<9} {r['wall_s']:.2f} s  prefill {r['prefill_tokens']:>6} tokens  {r['tokens_per_s']:.0f} gen tok/s")
    print(f"  prefill ratio {out['prefill_ratio']:.1f}x (goal >= 4), wall ratio {out['wall_ratio']:.2f}x (goal >= 2); "
          f"same pick: {out['same_result']}")
    print(f"  -> {path}")
    return out


if __name__ == "__main__":
    main()
