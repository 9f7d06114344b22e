"""Training-pair construction: which (chosen, rejected) pairs to build from scored samples, and
which of them to trust.

Every rule here is a pure function of rewards (or pass rates) and index positions, so it is
testable without a model; ``app.workflows.pair_building`` draws the samples, scores them and
applies a rule and a filter for the CLI (``samplescope pairs``) and the Data tab.

==============  ===================================================================  ==============
rule            pair                                                                  module
==============  ===================================================================  ==============
grid:HI/LO      the sweet-spot grid: the candidates nearest two of the seven          :mod:`.grid`
                representative points of the reward distribution (Xiao et al. 2025)
mcpo            chosen = the best; rejected drawn by the contrastive-divergence       :mod:`.mcpo`
                Markov-chain kernel w.r.t. the reward (MC-PO, Chen et al. 2025)
temporal        chosen = best of a later model, rejected = worst of an earlier one    :mod:`.rules`
                (Temporal Self-Rewarding, Wang et al. 2025)
acecoder        pairs by pass rate over checks: chosen >= 0.8, gap >= 0.4,            :mod:`.rules`
                rejected > 0 (AceCoder, Zeng et al. 2025)
==============  ===================================================================  ==============

Filters (:mod:`.reliability`): ``upo`` keeps the pairs an ensemble (or MC dropout) is least
uncertain about (UPO, Wang et al. 2024); ``strength`` keeps the pairs a vote of several rewards
backs (Secrets of RLHF II, Wang et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engines.errors import ConfigError


class PairError(ConfigError):
    """Bad input to a pair rule or filter (one line)."""


@dataclass(frozen=True)
class IndexPair:
    """One (chosen, rejected) choice among a prompt's candidates, by position, and why."""

    chosen: int
    rejected: int
    rule: str
    meta: dict[str, Any] = field(default_factory=dict)


def check_rewards(values: Any, what: str = "rewards", minimum: int = 2) -> list[float]:
    """Finite floats, at least ``minimum`` of them, else one line."""
    import math

    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PairError(f"{what} must be numbers") from None
    if len(out) < minimum:
        raise PairError(f"a pair needs at least {minimum} scored candidates (N >= {minimum}), got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise PairError(f"{what} must be finite numbers")
    return out
