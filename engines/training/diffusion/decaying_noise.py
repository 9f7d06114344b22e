"""decaying_noise: a per-step η that concentrates the chain's stochasticity in its early (noisiest) steps.

Yang, Zhou, Han, Tao, Qiu, Yang & Shen, "HiCoGen: Hierarchical Compositional Text-to-Image
Generation in Diffusion Models via Reinforcement Learning" (CVPR 2026, arXiv:2511.19965): its
*Decaying Stochasticity Schedule* puts the sampler's noise in the early generation stages,
where (they prove) it does most for sample diversity, and lets it decay towards the end, so
RL rollouts explore layouts rather than pixel noise.

The functional form here is ours, not checked against the paper's equation (its text was not
available to us): with K steps, noisiest first,

    η_i = η · (1 − i/K)^p,   i = 0 … K−1,

full η on the first step, decaying monotonically to η/K^p on the last; ``p = 0`` is the constant
η. Any scheme reads it through :meth:`SchemeConfig.eta_schedule` (``eta_shape = 'decaying'``),
so DPOK's score-function estimator stays the exact gradient under it: only σ per step changes.
"""

from __future__ import annotations

ETA_SHAPES = ("constant", "decaying")


def decaying_eta(eta: float, steps: int, power: float) -> tuple[float, ...]:
    """η_i = η·(1 − i/K)^p for the K = ``steps`` steps of a chain, noisiest first."""
    if steps < 1:
        raise ValueError(f"a chain needs at least one step, got {steps}")
    if not power >= 0:
        raise ValueError(f"the decay power must be >= 0, got {power}")
    return tuple(eta * (1 - i / steps) ** power for i in range(steps))
