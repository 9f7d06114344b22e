"""Particle maths shared by every sequential Monte Carlo sampler (SMC over steps, FK steering).

All functions take *log* weights (any real numbers, ``-inf`` for a dead particle) as a
tensor or a sequence, so callers never normalise by hand:

- :func:`normalised_weights`: w̄ᵢ = exp(ℓᵢ) / Σⱼ exp(ℓⱼ) (softmax, in float64);
- :func:`effective_sample_size`: ESS = 1 / Σ w̄ᵢ² (Kong, 1992; between 1 and N);
- :func:`log_mean_exp`: log (1/N) Σ exp(ℓᵢ), the increment of the SMC estimate of the log
  normalising constant log Ẑ at a resampling step (Del Moral, 2004);
- :func:`resample`: N ancestor indices drawn in proportion to the weights, by one of
  ``multinomial`` (N independent draws), ``stratified`` (one uniform in each of the N strata
  [k/N, (k+1)/N)) or ``systematic`` (one uniform shared by all strata) — Douc, Cappé &
  Moulines, 2005, "Comparison of Resampling Schemes for Particle Filtering";
- :func:`adaptive_resample`: the resampling step SMC over steps and FK steering share —
  resample when the ESS falls below a fraction of N (or when forced), add the log Ẑ
  increment, and describe the step as trace events (the ``resample`` event, then a ``prune``
  for every particle left without descendants). Resetting the weights stays with the
  caller: it is part of each sampler's weight recursion.

Inverse-CDF convention (stratified and systematic): ancestor i is chosen for a point u when
C_{i-1} ≤ u < C_i, where C is the cumulative sum of the normalised weights, i.e.
``searchsorted(C, u, right=True)``. With this convention a particle of weight 0 (an empty
interval) is never chosen, even when u falls exactly on a boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engines.errors import ConfigError
from engines.trace import Event, PruneEvent, ResampleEvent

RESAMPLING_METHODS = ("systematic", "stratified", "multinomial")


def _as_log_weights(log_weights: torch.Tensor | Sequence[float]) -> torch.Tensor:
    values = torch.as_tensor(log_weights, dtype=torch.float64).detach().cpu().reshape(-1)
    if values.numel() == 0:
        raise ValueError("no particles")
    if torch.isnan(values).any() or bool(torch.isneginf(values).all()) or torch.isposinf(values).any():
        raise ValueError("log weights must be finite or -inf, with at least one finite")
    return values


def normalised_weights(log_weights: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """w̄ = softmax(ℓ) in float64."""
    return torch.softmax(_as_log_weights(log_weights), dim=0)


def effective_sample_size(log_weights: torch.Tensor | Sequence[float]) -> float:
    """1 / Σ w̄ᵢ² of the normalised weights."""
    w = normalised_weights(log_weights)
    return float(1.0 / (w * w).sum())


def log_mean_exp(log_weights: torch.Tensor | Sequence[float]) -> float:
    """log (1/N) Σ exp(ℓᵢ), computed stably."""
    values = _as_log_weights(log_weights)
    return float(torch.logsumexp(values, dim=0) - math.log(values.numel()))


def resample(log_weights: torch.Tensor | Sequence[float], method: str, rng: torch.Generator | None) -> torch.Tensor:
    """N ancestor indices (int64) drawn in proportion to the weights."""
    w = normalised_weights(log_weights)
    n = w.numel()
    if method == "multinomial":
        return torch.multinomial(w, n, replacement=True, generator=rng)
    if method == "systematic":
        u = (torch.rand(1, generator=rng, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    elif method == "stratified":
        u = (torch.rand(n, generator=rng, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    else:
        raise ConfigError(f"unknown resampling method {method!r}; use one of {', '.join(RESAMPLING_METHODS)}")
    cdf = torch.cumsum(w, dim=0)
    cdf[-1] = 1.0  # rounding must not leave u ≥ C_N
    return torch.searchsorted(cdf, u, right=True).clamp(max=n - 1)


@dataclass(frozen=True)
class ResampleStep:
    """What :func:`adaptive_resample` did: ancestors (the identity when it did not resample)."""

    resampled: bool
    ancestors: list[int]
    ess: float
    log_evidence: float  # the log Ẑ increment: log-mean-exp of the weights when resampled, else 0
    events: list[Event]


def adaptive_resample(
    log_weights: torch.Tensor | Sequence[float],
    particle_ids: Sequence[str],
    *,
    step: int,
    threshold: float,
    method: str,
    rng: torch.Generator | None,
    force: bool = False,
    allowed: bool = True,
    prune_reason: str = "resampled away",
) -> ResampleStep:
    """Resample when ``force``, or when ``allowed`` and ESS < ``threshold``·N (adaptive resampling).

    ``particle_ids[i]`` is particle i's node id; ids may repeat (finished particles that were
    copied keep their node), and a node is pruned once, when no new particle descends from it.
    """
    weights = [float(v) for v in torch.as_tensor(log_weights, dtype=torch.float64).reshape(-1).tolist()]
    n = len(weights)
    if n != len(particle_ids):
        raise ValueError(f"{n} weights for {len(particle_ids)} particles")
    ess = effective_sample_size(weights)
    ids = list(particle_ids)
    if not (force or (allowed and ess < threshold * n)):
        event = ResampleEvent(step=step, particles=ids, ancestors=list(range(n)), log_weights=weights, ess=ess,
                              resampled=False)
        return ResampleStep(False, list(range(n)), ess, 0.0, [event])
    increment = log_mean_exp(weights)
    ancestors = resample(weights, method, rng).tolist()
    survivors = {ids[a] for a in ancestors}
    gone = [node for node in dict.fromkeys(ids) if node not in survivors]
    events: list[Event] = [ResampleEvent(step=step, particles=ids, ancestors=ancestors, log_weights=weights, ess=ess)]
    events += [PruneEvent(node=node, reason=prune_reason) for node in gone]
    return ResampleStep(True, ancestors, ess, increment, events)
