"""Rejection sampling with a reward: a threshold filter, and RSO's statistical mode.

``threshold``: keep candidates whose reward reaches a threshold; stop once
``accept`` are kept or ``n`` were proposed (rejection sampling fine-tuning /
"RAFT"-style filtering).

``statistical`` targets the KL-regularised optimum
π_r(y) ∝ π(y)·exp(r(y)/β) (Liu et al., 2024, "Statistical Rejection Sampling
Improves Preference Optimization", RSO, Algorithm 1). The proposal is the
model π; the envelope is exp(r_max/β), so a candidate is accepted with
probability exp((r(y) - r_max)/β).

- With ``r_max`` given (a true upper bound of the reward), every fresh proposal
  is accepted independently with that probability: the accepted samples
  follow π_r *exactly* (classic rejection sampling).
- Without it, RSO's procedure: draw ``n`` candidates, take r_max as their
  maximum, then repeatedly pick a remaining candidate uniformly and accept it
  with probability exp((r - r_max)/β), until ``accept`` are accepted. This
  approximates π_r (exact as n → ∞).

Symbols: β = ``beta``; r_max = ``r_max``; m (samples to accept) = ``accept``.
The acceptance rate (accepted / proposals examined) is reported in the
``done`` event's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.common import Candidate, draw_scored, open_root
from engines.trace import AcceptEvent, Event, PruneEvent, SelectEvent


class RejectionConfig(GenerationConfig):
    label = "Rejection sampling"
    paper = "Liu et al. 2024, Statistical Rejection Sampling Improves Preference Optimization (arXiv:2309.06657)"
    summary = "Keep candidates above a threshold, or accept with exp((r - r_max)/β) to sample π·exp(r/β)."

    mode: Literal["threshold", "statistical"] = param(
        "statistical", label="Mode", choices=("threshold", "statistical"), help="Threshold filter or RSO."
    )
    n: int = param(16, label="Proposals", min=1, max=4096, help="Most candidates to draw.")
    accept: int = param(1, label="Samples to accept", min=1, max=4096, help="Stop after this many are accepted.")
    threshold: float = param(0.0, label="Threshold", help="Threshold mode: accept when reward >= threshold.")
    beta: float = param(0.5, label="β", min=1e-6, max=1e6, help="Statistical mode: temperature of exp(r/β).")
    r_max: float | None = param(
        None, label="r_max", help="Statistical mode: a known upper bound of the reward (exact sampling); empty = RSO's max of the proposals."
    )
    batch_size: int = param(16, label="Batch size", min=1, max=256, advanced=True, help="Candidates per model call.")

    def validate(self) -> None:
        super().validate()
        if self.mode == "statistical" and self.r_max is None and self.accept > self.n:
            raise ConfigError("RSO without r_max can accept at most n candidates: lower 'accept' or raise 'n'")


@SAMPLERS.register("rejection")
class Rejection(Sampler):
    name = "rejection"
    Config = RejectionConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: RejectionConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        pool: list[Candidate] = []
        accepted: list[Candidate] = []
        examined = 0
        ctx.metrics.update(mode=cfg.mode, proposals=0, accepted=0, acceptance_rate=0.0)

        def record() -> None:
            ctx.metrics.update(
                proposals=len(pool),
                examined=examined,
                accepted=len(accepted),
                acceptance_rate=len(accepted) / examined if examined else 0.0,
            )

        if cfg.mode == "statistical" and cfg.r_max is None:
            # RSO Algorithm 1: a pool of n proposals, r_max from the pool, subsample it
            while len(pool) < cfg.n:
                yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(pool)), cfg, pool)
            r_max = max(c.reward for c in pool)
            remaining = list(pool)
            while len(accepted) < cfg.accept and remaining:
                ctx.check()
                j = int(torch.randint(len(remaining), (1,), generator=ctx.rng))
                cand = remaining[j]
                p = math.exp(min(0.0, (cand.reward - r_max) / cfg.beta))
                u = float(torch.rand((), generator=ctx.rng))
                examined += 1
                if u < p:
                    accepted.append(remaining.pop(j))
                yield AcceptEvent(node=cand.id, accepted=u < p, probability=p, step=examined)
            for cand in remaining:
                yield PruneEvent(node=cand.id, reason="rejected")
            record()
            yield SelectEvent(nodes=[c.id for c in accepted], reason=f"accepted {len(accepted)} (RSO, β={cfg.beta:g})")
            return

        # fresh proposals, each decided on arrival
        while len(accepted) < cfg.accept and len(pool) < cfg.n:
            batch: list[Candidate] = []
            yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(pool)), cfg, batch)
            for cand in batch:
                pool.append(cand)
                if len(accepted) >= cfg.accept:
                    yield PruneEvent(node=cand.id, reason="not needed")
                    continue
                if cfg.mode == "threshold":
                    p = 1.0 if cand.reward >= cfg.threshold else 0.0
                    ok = p == 1.0
                else:
                    if cand.reward > cfg.r_max + 1e-9:
                        raise ConfigError(f"reward {cand.reward:g} exceeds r_max={cfg.r_max:g}; raise r_max")
                    p = math.exp((cand.reward - cfg.r_max) / cfg.beta)
                    ok = float(torch.rand((), generator=ctx.rng)) < p
                examined += 1
                yield AcceptEvent(node=cand.id, accepted=ok, probability=p, step=examined)
                if ok:
                    accepted.append(cand)
                else:
                    yield PruneEvent(node=cand.id, reason="rejected")
            record()
        record()
        yield SelectEvent(nodes=[c.id for c in accepted], reason=f"accepted {len(accepted)} of {examined}")

    def fallback_picks(self, trace) -> list[str]:
        # a stopped rejection run keeps what it accepted; it never promotes a rejected candidate
        return [a.node for a in trace.accepts if a.accepted]
