"""Soft best-of-k: draw k candidates, pick one with probability softmax(r / T).

The reward-weighted sampler of Halder & Pehlevan, 2025, "Demystifying LLM-as-a-Judge:
Analytically Tractable Model for Inference-Time Scaling" (arXiv:2512.19905): k samples
from the model, selection by a softmax at temperature T over the judge's reward. T → 0 is
best-of-k (ties split evenly here, where best-of-N gives them to the first draw); T → ∞
is a single draw from the model. The same rule is Verdun et al., 2025, "Soft Best-of-n
Sampling for Model Alignment" (arXiv:2505.03156), whose law tends to q·exp(r/T)/Z as k → ∞.

The paper's point, which ``bench scaling --part adaptive`` shows on arith: with a
reward close to the truth, accuracy keeps rising with k; with a misspecified one
(``arith_orm``, a learned ORM) there is a finite best k beyond which more samples
hurt, and for a fixed k a best T.

Exact pick law for i.i.d. draws y_1..y_k ~ q (what the tests enumerate):
P(pick = y) = E[ Σ_i 1[y_i = y] · exp(r(y_i)/T) / Σ_j exp(r(y_j)/T) ].
The pick is drawn with the run's rng, so a run is reproducible from its seed.

Symbols: k = ``n``, T = ``selection_temperature``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from engines.config import param
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.candidates import Candidate, draw_scored, open_root
from engines.trace import Event, SelectEvent


class SoftBestOfKConfig(GenerationConfig):
    label = "Soft best-of-k"
    paper = "Halder & Pehlevan 2025, Demystifying LLM-as-a-Judge: Analytically Tractable Model for Inference-Time Scaling (arXiv:2512.19905)"
    summary = "Draw k candidates; pick one with probability softmax(reward / T) (T → 0: best-of-k)."

    n: int = param(8, label="k", min=1, max=1024, help="How many candidates to draw.")
    selection_temperature: float = param(0.1, label="Selection temperature T", min=1e-4, max=1e4, step=0.01,
                                         help="Softmax temperature over the rewards; small is greedy, large is uniform.")
    batch_size: int = param(16, label="Batch size", min=1, max=256, help="Candidates per model call.", advanced=True)


def softmax_weights(rewards: list[float], temperature: float) -> list[float]:
    """softmax(r / T), stable for any T > 0 (the max is subtracted first)."""
    top = max(rewards)
    raw = [math.exp((r - top) / temperature) for r in rewards]
    total = math.fsum(raw)
    return [w / total for w in raw]


@SAMPLERS.register("soft_best_of_k")
class SoftBestOfK(Sampler):
    name = "soft_best_of_k"
    Config = SoftBestOfKConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: SoftBestOfKConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        found: list[Candidate] = []
        while len(found) < cfg.n:
            found += yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(found)), cfg)
        weights = softmax_weights([float(c.reward) for c in found], cfg.selection_temperature)
        index = int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=ctx.rng))
        ctx.metrics.update(pick_probabilities={c.id: round(w, 6) for c, w in zip(found, weights, strict=True)})
        chosen = found[index]
        yield SelectEvent(nodes=[chosen.id], reason=f"softmax(r/{cfg.selection_temperature:g}) drew it with p={weights[index]:.3f}")
