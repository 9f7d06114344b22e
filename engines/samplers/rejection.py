"""Rejection sampling with a reward: a threshold filter, and RSO's statistical rejection sampling.

``threshold``: keep candidates whose reward reaches a threshold; stop once
``accept`` are kept or ``n`` were proposed (rejection sampling fine-tuning /
"RAFT"-style filtering). No target law: the kept candidates follow q restricted
to {r ≥ threshold}.

``statistical`` follows Liu et al., 2024, "Statistical Rejection Sampling
Improves Preference Optimization" (RSO, arXiv:2309.06657). Its target is the
KL-regularised optimum relative to the *proposal* q, the model as it samples
here (temperature, top-p, top-k; q = the base model p only at temperature 1,
top-p 1, top-k 0):

    π_r(y) ∝ q(y) · exp(r(y)/β).

- With ``r_max`` given (a true upper bound of the reward): classic rejection
  sampling. Every fresh proposal is accepted independently with probability
  exp((r(y) - r_max)/β); the accepted samples follow π_r *exactly*.
- Without it: the paper's Algorithm 1, as printed in its appendix A.1. Draw a
  pool of ``n`` candidates; then sweep: r_max is the maximum reward of the
  candidates still in the pool, each remaining candidate in turn is accepted
  with probability exp((r - r_max)/β) (the sweep stops as soon as ``accept``
  are accepted), the accepted ones leave the pool, and the next sweep starts
  with r_max recomputed over the rest. The pool's best is always accepted, so
  a run takes at most ``accept`` sweeps and examines at most ``accept`` · n
  candidates. The law of the accepted samples tends to π_r as n → ∞ (for a
  finite pool it is the law that Algorithm 1 defines; the tests enumerate it).
  One difference from the printed code: it keys the pool by response text, so
  duplicate responses merge; here every proposal is its own pool entry (each is
  one draw from q).

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
from engines.samplers.candidates import Candidate, draw_scored, open_root
from engines.trace import AcceptEvent, Event, PruneEvent, SelectEvent


class RejectionConfig(GenerationConfig):
    label = "Rejection sampling"
    paper = "Liu et al. 2024, Statistical Rejection Sampling Improves Preference Optimization (arXiv:2309.06657)"
    summary = ("Keep candidates above a threshold, or accept with exp((r - r_max)/β): a sample of q·exp(r/β), "
               "q the model at the sampling temperature (RSO).")

    mode: Literal["threshold", "statistical"] = param(
        "statistical", label="Mode", choices=("threshold", "statistical"), help="Threshold filter or RSO."
    )
    n: int = param(16, label="Proposals", min=1, max=4096, help="Most candidates to draw.")
    accept: int = param(1, label="Samples to accept", min=1, max=4096, help="Stop after this many are accepted.")
    threshold: float = param(0.0, label="Threshold", help="Threshold mode: accept when reward >= threshold.")
    beta: float = param(0.5, label="β", min=1e-6, max=1e6, help="Statistical mode: temperature of exp(r/β).")
    r_max: float | None = param(
        None, label="r_max", help="Statistical mode: a known upper bound of the reward (exact sampling of q·exp(r/β)); "
        "empty = RSO's Algorithm 1 on a pool of n (sweeps, r_max the best remaining)."
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
            while len(pool) < cfg.n:
                pool += yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(pool)), cfg)
            ctx.check()
            taken: set[int] = set()
            for index, p, ok in self.subsample([c.reward for c in pool], cfg.accept, cfg.beta, ctx.rng):
                examined += 1
                if ok:
                    accepted.append(pool[index])
                    taken.add(index)
                yield AcceptEvent(node=pool[index].id, accepted=ok, probability=p, step=examined)
            for index, cand in enumerate(pool):
                if index not in taken:
                    yield PruneEvent(node=cand.id, reason="rejected")
            record()
            yield SelectEvent(nodes=[c.id for c in accepted], reason=f"accepted {len(accepted)} (RSO, β={cfg.beta:g})")
            return

        # fresh proposals, each decided on arrival
        while len(accepted) < cfg.accept and len(pool) < cfg.n:
            batch = yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(pool)), cfg)
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

    @staticmethod
    def subsample(rewards: list[float], accept: int, beta: float, rng: torch.Generator) -> list[tuple[int, float, bool]]:
        """RSO's Algorithm 1 on a pool: (pool index, acceptance probability, accepted) for every
        candidate examined, in order."""
        return rso_algorithm_1(rewards, accept, beta, rng)

    def fallback_picks(self, trace) -> list[str]:
        # a stopped rejection run keeps what it accepted; it never promotes a rejected candidate
        return [a.node for a in trace.accepts if a.accepted]


def rso_algorithm_1(rewards: list[float], accept: int, beta: float, rng: torch.Generator) -> list[tuple[int, float, bool]]:
    """Liu et al. 2024, Algorithm 1: sweeps over the remaining pool, r_max recomputed per sweep."""
    remaining = list(range(len(rewards)))
    decisions: list[tuple[int, float, bool]] = []
    count = 0
    while count < accept and remaining:
        r_max = max(rewards[i] for i in remaining)
        taken = []
        for i in remaining:
            p = math.exp((rewards[i] - r_max) / beta)
            ok = float(torch.rand((), generator=rng)) < p  # the paper's "u >= p: continue"
            decisions.append((i, p, ok))
            if ok:
                taken.append(i)
                count += 1
                if count == accept:
                    break
        remaining = [i for i in remaining if i not in taken]
    return decisions
