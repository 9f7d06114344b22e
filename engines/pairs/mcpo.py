"""MC-PO: the rejected completion drawn by a contrastive-divergence Markov-chain kernel.

Chen et al. 2025, "Preference Optimization via Contrastive Divergence: Your Reward Model is
Secretly an NLL Estimator" (arXiv:2502.04567; AAAI 2026). They read preference optimisation as
the negative log-likelihood of p(y | x) = pi_ref(y | x) exp(r(x, y)) / Z(x) and estimate the
gradient of log Z by contrastive divergence: a short Markov chain started at the preferred
completion, whose kernel leaves p invariant. The chain's sample is the rejected completion, so
negatives are drawn in proportion to exp(r): *hard* negatives, close in reward to the preferred.

The kernel (one step):

==================  ================================  ===========================================
paper               code                              meaning
==================  ================================  ===========================================
y_0                 ``current`` (index 0)             the chain's state: the preferred completion
y_1 .. y_L          ``proposals``                     L completions drawn from the proposal pi_ref
r(x, y)             ``rewards`` / ``beta``            the reward, scaled by the temperature beta
z ~ Cat(w)          :func:`cd_kernel_step`            w_l = exp(r(y_l)/beta) / sum_{j=0..L} exp(r(y_j)/beta)
y' = y_z            the return value                  the new state (z = 0: the chain stays)
==================  ================================  ===========================================

What we could check of the paper (its abstract and summaries; no public code was found) fixes
the rule as "the MC kernel from CD, sampling hard negatives w.r.t. the reward", not whether the
preferred itself enters the categorical draw. We put it in: that is what makes the step a Markov
kernel whose invariant law is p (the conditional importance-sampling kernel: if y_0 ~ p and
y_1..L ~ pi_ref, then y_z ~ p), the property CD needs. Leaving y_0 out (plain self-normalised
resampling of the proposals) does not keep p invariant for finite L; ``tests/pairs/test_rules.py``
checks both by chi-square on an enumerable toy, the second as the wrong variant that must fail.

As a pair rule (:func:`mcpo_pair`): the preferred is the highest-reward candidate of a prompt,
the proposals are the other candidates (the model's own samples, i.e. pi_ref is the sampling
model), and the rejected is the chain's state after one step. Where the chain stays at the
preferred there is no negative for that prompt and no pair is made (reported in ``meta``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engines.pairs import IndexPair, PairError, check_rewards


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0 or beta != beta or beta == float("inf"):
        raise PairError(f"the MC-PO temperature beta must be a positive number, got {beta!r}")
    return float(beta)


def kernel_weights(current_reward: float, proposal_rewards: Sequence[float], beta: float = 1.0,
                   include_current: bool = True) -> torch.Tensor:
    """The categorical weights over (current, proposals...); the current's is 0 when excluded."""
    beta = _check_beta(beta)
    r = torch.tensor([current_reward, *proposal_rewards], dtype=torch.float64) / beta
    if not include_current:
        r[0] = -float("inf")
    return torch.softmax(r, dim=0)


def cd_kernel_step(current_reward: float, proposal_rewards: Sequence[float], rng: torch.Generator,
                   beta: float = 1.0, *, include_current: bool = True) -> int:
    """One kernel step: 0 if the chain stays at the current state, else 1 + the proposal's index.

    ``include_current=False`` is the wrong variant (resampling among the proposals alone), kept
    for the law test.
    """
    if len(proposal_rewards) < 1:
        raise PairError("the MC-PO kernel needs at least one proposal (N >= 2 candidates)")
    weights = kernel_weights(current_reward, proposal_rewards, beta, include_current)
    return int(torch.multinomial(weights, 1, generator=rng).item())


def mcpo_pair(rewards: Sequence[float], rng: torch.Generator, beta: float = 1.0) -> IndexPair | None:
    """Chosen = the highest reward (first of equals); rejected = one kernel step from it over the others."""
    values = check_rewards(rewards)
    chosen = max(range(len(values)), key=lambda i: (values[i], -i))
    others = [i for i in range(len(values)) if i != chosen]
    z = cd_kernel_step(values[chosen], [values[i] for i in others], rng, beta)
    if z == 0:
        return None  # the chain stayed at the preferred: no negative this time
    rejected = others[z - 1]
    if values[rejected] >= values[chosen]:
        return None  # an equal reward: no preference to learn
    return IndexPair(chosen, rejected, "mcpo", {"beta": beta})
