"""Which built pairs to trust: two filters over several reward readings of each pair.

Both take ``chosen`` and ``rejected``, arrays of shape (M, P): M readings (ensemble members,
or stochastic forward passes of one reward with dropout on) of the P pairs' two sides.

``upo``: uncertainty of a pair
    Wang et al. 2024, "Self-Evolutionary Large Language Models through Uncertainty-Enhanced
    Preference Optimization" (UPO, arXiv:2409.11212). A reward's verdict on a pair,
    P_m = sigmoid(r_m(chosen) - r_m(rejected)), is read M times with Monte Carlo dropout
    (Gal & Ghahramani 2016) or across an ensemble; the spread of those verdicts is the pair's
    uncertainty. UPO trains on the reliable pairs: here, the pairs whose mean verdict favours the
    chosen side (mean P > 1/2) and whose uncertainty (the standard deviation of P_m) is among the
    lowest ``keep`` share of those.

``strength``: preference strength as a vote of several rewards
    Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward Modeling"
    (arXiv:2401.06080), Sec. 2: the strength of a preference is the mean, over M reward models,
    of r_m(chosen) - r_m(rejected); pairs with negative strength are mostly wrong labels, those
    near zero ambiguous. Kept: the pairs whose strength exceeds ``min_strength`` (0: the vote
    backs the label); with ``flip`` the negative ones are turned around instead of dropped
    (their label flip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.pairs import PairError

FILTERS = ("none", "upo", "strength")


@dataclass(frozen=True)
class Verdict:
    """Per pair: keep it, flip its sides, and the statistic the filter ranked it by."""

    keep: np.ndarray
    flip: np.ndarray
    statistic: np.ndarray
    rule: str


def _readings(chosen, rejected) -> tuple[np.ndarray, np.ndarray]:
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    if c.ndim == 1:
        c, r = c[None, :], r[None, :]
    if c.shape != r.shape or c.ndim != 2:
        raise PairError("the filters need (readings x pairs) scores of equal shape for both sides")
    if c.shape[1] == 0:
        raise PairError("no pairs to filter")
    if not (np.isfinite(c).all() and np.isfinite(r).all()):
        raise PairError("reward readings must be finite")
    return c, r


def upo_filter(chosen, rejected, keep: float = 0.5) -> Verdict:
    """UPO's reliable pairs (see the module docstring); needs M >= 2 readings."""
    if not 0.0 < keep <= 1.0:
        raise PairError(f"the share of pairs UPO keeps must be in (0, 1], got {keep!r}")
    c, r = _readings(chosen, rejected)
    if c.shape[0] < 2:
        raise PairError("UPO's uncertainty needs at least two reward readings (an ensemble or dropout passes)")
    p = 1.0 / (1.0 + np.exp(-(c - r)))
    mean, spread = p.mean(axis=0), p.std(axis=0)
    favoured = mean > 0.5
    keep_mask = np.zeros(c.shape[1], dtype=bool)
    if favoured.any():
        candidates = np.flatnonzero(favoured)
        count = max(1, int(round(keep * len(candidates))))
        order = candidates[np.argsort(spread[candidates], kind="stable")]
        keep_mask[order[:count]] = True
    return Verdict(keep_mask, np.zeros_like(keep_mask), spread, "upo")


def strength_filter(chosen, rejected, min_strength: float = 0.0, *, flip: bool = False) -> Verdict:
    """Secrets of RLHF II's preference strength (see the module docstring)."""
    c, r = _readings(chosen, rejected)
    strength = (c - r).mean(axis=0)
    flipped = (strength < -min_strength) if flip else np.zeros(c.shape[1], dtype=bool)
    keep_mask = (strength > min_strength) | flipped
    return Verdict(keep_mask, flipped, strength, "strength")


def apply_filter(name: str, chosen, rejected, **options) -> Verdict:
    """``none`` keeps every pair; ``upo`` / ``strength`` as above."""
    if name == "none":
        c, _ = _readings(chosen, rejected)
        n = c.shape[1]
        return Verdict(np.ones(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n), "none")
    if name == "upo":
        return upo_filter(chosen, rejected, **options)
    if name == "strength":
        return strength_filter(chosen, rejected, **options)
    raise PairError(f"unknown pair filter {name!r}; choose one of {', '.join(FILTERS)}")
