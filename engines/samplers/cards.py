"""Cascade reward sampling (CARDS): segment-level rejection sampling.

Li, Wang, Lochab, Grama & Zhang, 2025, "Cascade Reward Sampling for Efficient
Decoding-Time Alignment" (arXiv:2406.16306). The response grows one segment
at a time; a segment ends before a token whose next-token entropy reaches a
threshold (after a minimum length), i.e. at a likely semantic boundary. Each
candidate segment is scored with the reward of the whole prefix so far and

- ``hard``: accepted when r ≥ τ(ℓ),
- ``soft``: accepted with probability min(1, exp((r - τ(ℓ))/β)),

where the threshold rises linearly with the response length ℓ from
r₀ = (1-α)·r(empty) + α·r* to the final threshold r* at the length limit:
τ(ℓ) = min(r*, r₀ + ℓ·(r* - r₀)/L), ℓ the length of the response *including the
candidate segment* (as the reference code lblaoke/CARDS computes it). A segment
rejected ``max_retries`` times in a row gives way to the best of its attempts, so
generation always moves on.

No exact target law: CARDS is a segment-level heuristic. Segments are drawn from
the proposal q (the model at the sampling temperature / top-p / top-k, as the
reference samples at a temperature with top-k), and acceptance tilts q towards
high-reward prefixes; the paper motivates it by π(y) ∝ q(y)·exp(r(y)/β), relative
to q, but the accepted responses do not follow that law exactly.

Symbols: r* = ``reward_threshold``, α = ``alpha``, β = ``beta``, L = ``max_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from engines.config import param
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.stepwise import (
    Partial,
    StepConfig,
    StepSampler,
    expand,
    prune,
    root_partial,
    score_last,
)
from engines.trace import AcceptEvent, Event, SelectEvent


class CARDSConfig(StepConfig):
    size_field = None
    label = "CARDS (cascade reward sampling)"
    paper = "Li et al. 2025, Cascade Reward Sampling for Efficient Decoding-Time Alignment (arXiv:2406.16306)"
    summary = ("Grow the answer segment by segment; reject a segment whose prefix reward is under a threshold rising "
               "with the length (segment included). A heuristic tilt of the sampling distribution, no exact target.")

    reward_threshold: float = param(0.5, label="Final threshold r*", help="The reward the full response should reach.")
    alpha: float = param(0.5, label="α", min=0.0, max=1.0, step=0.05, help="Start of the threshold: (1-α)·r(empty) + α·r*.")
    beta: float = param(0.7, label="β", min=1e-4, max=100.0, help="Soft acceptance temperature.")
    mode: str = param("soft", label="Acceptance", choices=("soft", "hard"), help="exp((r-τ)/β) or r ≥ τ.")
    max_tokens: int = param(128, label="Max response tokens", min=1, max=4096, help="Length limit L of the response.")
    max_retries: int = param(20, label="Max retries", min=1, max=1000, help="Attempts per segment before taking the best one.")


@SAMPLERS.register("cards")
class CARDS(StepSampler):
    name = "cards"
    Config = CARDSConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: CARDSConfig = self.config  # type: ignore[assignment]
        current, node = root_partial(ctx)
        yield node
        r_empty = ctx.score_last([[""]])[0]
        r0 = (1 - cfg.alpha) * r_empty + cfg.alpha * cfg.reward_threshold
        prompt_len = len(current.ids)
        attempts = accepted = 0
        while not current.done:
            length = len(current.ids) - prompt_len
            tries: list[Partial] = []
            chosen = None
            while chosen is None:
                (segment,) = yield from expand(
                    ctx, [current], 1, cfg, max_tokens=min(cfg.max_new_tokens, cfg.max_tokens - length),
                    ends=lambda c: len(c.ids) - prompt_len >= cfg.max_tokens,
                )
                yield from score_last(ctx, [segment])
                threshold = self.threshold(r0, len(segment.ids) - prompt_len)
                tries.append(segment)
                attempts += 1
                if cfg.mode == "hard":
                    p = 1.0 if segment.value >= threshold else 0.0
                else:
                    p = min(1.0, math.exp((segment.value - threshold) / cfg.beta))
                ok = float(torch.rand((), generator=ctx.rng)) < p
                yield AcceptEvent(node=segment.id, accepted=ok, probability=p, step=attempts, current=current.id)
                if ok:
                    chosen = segment
                    accepted += 1
                elif len(tries) >= cfg.max_retries:
                    chosen = max(tries, key=lambda t: t.value)
            yield from prune([t for t in tries if t is not chosen], f"rejected (τ={threshold:.3g} at the last try)")
            current = chosen
            ctx.metrics.update(segments=accepted, attempts=attempts, acceptance_rate=accepted / attempts)
            yield ctx.cost_event()
        yield SelectEvent(nodes=[current.id], reason=f"{len(current.steps)} segments, {attempts} attempts")

    def threshold(self, r0: float, length: int) -> float:
        """τ(ℓ) for a response of ``length`` tokens, the candidate segment included."""
        cfg: CARDSConfig = self.config  # type: ignore[assignment]
        return min(cfg.reward_threshold, r0 + length * (cfg.reward_threshold - r0) / cfg.max_tokens)
