"""Q-probes: a linear function on the policy's own embeddings that reweights its k samples.

Li, Chen, Hao, Sui, Wu & Kakade 2024, "Q-Probe: A Lightweight Approach to Reward Maximization for
Language Models" (arXiv:2402.14688); reference code likenneth/q_probe (``code_exp/q_probe/trainer.py``).

Inference (the ``q_probe`` sampler): draw k completions y_1..y_k ~ p(.|x), embed each with the same
model, and pick y_i with probability softmax(Q(x, y_i) / beta). As k grows the pick's law tends to the
KL-constrained maximiser of Q, p(y|x) exp(Q(x,y)/beta) / Z(x) (the paper's Theorem 3.1);
:func:`soft_pick_law` gives the exact law at finite k on an enumerable toy, which the tests compare.

Training, on k samples of the policy per training prompt with rewards r from any reward (on arith: the
exact verifier), one of the paper's losses:

- ``mse``: reward modelling by regression, mean (Q - r)^2;
- ``ce``: reward modelling by classification, binary cross-entropy of sigmoid(Q) against r in [0, 1];
- ``pg``: the importance-weighted policy gradient, -mean_x sum_i softmax(Q(x, y_.))_i r(x, y_i): the
  expected reward of the softmax pick over the prompt's k samples, maximised directly (the reference
  code uses beta = 1 in training and splits each prompt's samples into chunks of k; so do we).

The probe is a :class:`engines.rewards.learned.BTHead` without a hidden layer (w . z + c on standardised
features, as ``learned:NAME`` heads are), saved as a learned-reward folder whose ``base`` is the policy:
``learned:NAME`` then scores any candidate with it, and the ``q_probe`` sampler checks that the probe was
fit on the run's own model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from engines.errors import ConfigError
from engines.rewards.learned import BTHead

LOSSES = ("pg", "mse", "ce")


@dataclass(frozen=True)
class ProbeFit:
    """How a probe is fitted: the loss, full-batch AdamW steps, weight decay as in the reference code."""

    loss: str = "pg"
    epochs: int = 300
    lr: float = 1e-2
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown probe loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.epochs < 1:
            raise ConfigError(f"probe epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"probe learning rate must be > 0, got {self.lr}")


def probe_loss(q: torch.Tensor, rewards: torch.Tensor, loss: str) -> torch.Tensor:
    """The training loss of probe values ``q`` [P, k] against rewards [P, k] (see the module docstring)."""
    if loss == "mse":
        return ((q - rewards) ** 2).mean()
    if loss == "ce":
        return torch.nn.functional.binary_cross_entropy_with_logits(q, rewards)
    if loss == "pg":
        return -(torch.softmax(q, dim=1) * rewards).sum(dim=1).mean()
    raise ConfigError(f"unknown probe loss {loss!r}; known: {', '.join(LOSSES)}")


def check_probe_data(features: torch.Tensor, rewards: torch.Tensor, loss: str) -> None:
    if features.ndim != 3 or rewards.shape != features.shape[:2]:
        raise ConfigError(f"probe data must be features [P, k, d] and rewards [P, k], got "
                          f"{tuple(features.shape)} and {tuple(rewards.shape)}")
    prompts, k = rewards.shape
    if prompts < 1 or k < 2:
        raise ConfigError(f"a probe needs at least one prompt with k >= 2 samples, got {prompts} prompt(s) of {k}")
    if not torch.isfinite(features).all() or not torch.isfinite(rewards).all():
        raise ConfigError("probe data holds a NaN or an infinite value")
    if loss == "ce" and ((rewards < 0) | (rewards > 1)).any():
        raise ConfigError("the ce loss needs rewards in [0, 1]; use mse or pg for other rewards")


def fit_probe(features: torch.Tensor, rewards: torch.Tensor, fit: ProbeFit = ProbeFit()) -> Iterator[float | BTHead]:
    """Fit a linear Q-probe; yields the loss every tenth of the way (progress), then the probe."""
    features, rewards = features.float(), rewards.float()
    check_probe_data(features, rewards, fit.loss)
    prompts, k, dim = features.shape
    generator = torch.Generator().manual_seed(fit.seed)
    head = BTHead(dim)
    head.standardise_on(features.reshape(-1, dim))
    with torch.no_grad():  # a seeded start: nn.Linear's default init draws from the global generator
        bound = 1 / math.sqrt(dim)
        head.net.weight.uniform_(-bound, bound, generator=generator)
        head.net.bias.zero_()
    optimiser = torch.optim.AdamW(head.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    every = max(1, fit.epochs // 10)
    for epoch in range(fit.epochs):
        loss = probe_loss(head(features), rewards, fit.loss)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if (epoch + 1) % every == 0:
            yield float(loss.detach())
    yield head.eval().requires_grad_(False)


def soft_pick_weights(q: Sequence[float], beta: float) -> list[float]:
    """softmax(q / beta); beta = 0 is the argmax (ties shared equally). Plain floats: k is small and this runs
    once per pick (and per multinomial count vector in :func:`soft_pick_law`)."""
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta}")
    if not q:
        return []
    top = max(q)
    if beta == 0:
        best = [1.0 if v == top else 0.0 for v in q]
        return [b / sum(best) for b in best]
    weights = [math.exp((v - top) / beta) for v in q]
    total = sum(weights)
    return [w / total for w in weights]


def soft_pick_law(p: Sequence[float], q: Sequence[float], k: int, beta: float) -> list[float]:
    """The exact law of the soft pick over k i.i.d. draws from the categorical ``p`` with values ``q``:
    P(pick = y) = E[ sum_{i: y_i = y} softmax(q(y_.) / beta)_i ], summed over the multinomial count
    vectors of the k draws (the pick depends on the draws only through their counts)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    m = len(p)
    law = [0.0] * m
    for counts in _compositions(k, m):
        if any(c and pi == 0 for c, pi in zip(counts, p, strict=True)):
            continue
        prob = math.exp(math.lgamma(k + 1) + sum(c * math.log(pi) - math.lgamma(c + 1)
                                                  for c, pi in zip(counts, p, strict=True) if c))
        # the y_i equal to y share their softmax mass: c_y exp(q_y / beta) / sum_j c_j exp(q_j / beta)
        present = [y for y in range(m) if counts[y]]
        weights = soft_pick_weights([q[y] for y in present], beta)
        mass = [counts[y] * w for y, w in zip(present, weights, strict=True)]
        total = sum(mass)
        for y, w in zip(present, mass, strict=True):
            law[y] += prob * w / total
    return law


def tilted_law(p: Sequence[float], q: Sequence[float], beta: float) -> list[float]:
    """p(y) exp(q(y)/beta) / Z: the KL-constrained maximiser the soft pick tends to as k grows."""
    logits = torch.tensor([math.log(pi) if pi > 0 else -math.inf for pi in p], dtype=torch.float64)
    return torch.softmax(logits + torch.tensor(list(q), dtype=torch.float64) / beta, dim=0).tolist()


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of ``parts`` non-negative integers summing to ``total`` (stars and bars)."""
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(parts))
