"""Early rejection of unpromising candidates (speculative rejection).

Sun et al., 2024, "Fast Best-of-N Decoding via Speculative Rejection"
(arXiv:2410.20290): start many candidates at once; every ``interval`` new
tokens, score the partial candidates with the reward and keep only the best
(1 - α) share, so the compute a best-of-N would spend finishing hopeless
candidates is saved. Candidates that end are set aside; the pick is the
finished candidate with the highest reward. With α = 0 it is best-of-N (the
law of the maximum under the proposal q); otherwise no closed-form law.

Symbols: N = ``n``, α = ``rejection_rate``, the checkpoint spacing = ``interval``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from engines.config import param
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.stepwise import (
    STEP_MODES,
    Partial,
    StepConfig,
    StepSampler,
    expand,
    prune,
    root_partial,
    score_last,
)
from engines.trace import Event, SelectEvent


class EarlyRejectionConfig(StepConfig):
    label = "Early rejection (speculative)"
    paper = "Sun et al. 2024, Fast Best-of-N Decoding via Speculative Rejection (arXiv:2410.20290)"
    summary = "Start N candidates; at every checkpoint keep the best (1-α) share by partial reward."

    step: str = param("tokens", label="Step", choices=STEP_MODES, help="Checkpoints every `interval` tokens by default.")
    max_steps: int = param(256, label="Max checkpoints", min=1, max=4096, help="Depth limit.")
    n: int = param(16, label="N", min=1, max=1024, help="Candidates started.")
    rejection_rate: float = param(0.5, label="Rejection rate α", min=0.0, max=0.99, step=0.05, help="Share dropped at each checkpoint.")
    interval: int = param(16, label="Checkpoint every (tokens)", min=1, max=4096, help="Tokens generated between checkpoints.")
    max_tokens: int = param(128, label="Max tokens", min=1, max=4096, help="Length limit of a candidate.")


@SAMPLERS.register("early_rejection")
class EarlyRejection(StepSampler):
    name = "early_rejection"
    Config = EarlyRejectionConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: EarlyRejectionConfig = self.config  # type: ignore[assignment]
        root, node = root_partial(ctx)
        yield node
        prompt_len = len(root.ids)
        active: list[Partial] = [root]
        finished: list[Partial] = []
        checkpoint = 0
        while active:
            k = cfg.n if active == [root] else 1
            longest = max(len(p.ids) - prompt_len for p in active)
            children = yield from expand(
                ctx, active, k, cfg, distinct=False,
                max_tokens=min(cfg.interval, cfg.max_tokens - longest),
                ends=lambda c: len(c.ids) - prompt_len >= cfg.max_tokens or c.depth >= cfg.max_steps,
            )
            yield from score_last(ctx, children)
            finished += [c for c in children if c.done]
            running = sorted((c for c in children if not c.done), key=lambda c: -c.value)
            checkpoint += 1
            keep = math.ceil((1 - cfg.rejection_rate) * len(running))
            active = running[:keep]
            yield from prune(running[keep:], f"rejected at checkpoint {checkpoint}")
            yield ctx.cost_event()
        best = max(finished, key=lambda c: c.value)
        ctx.metrics.update(checkpoints=checkpoint, finished=len(finished))
        yield SelectEvent(nodes=[best.id], reason=f"best of {len(finished)} finished candidates")
