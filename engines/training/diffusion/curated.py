"""Curated retraining: fine-tune a diffusion model on its own reward-curated samples, with real data mixed in.

Ferbach, Bertrand, Bose & Gidel, "Self-Consuming Generative Models with Curated Data Provably
Optimize Human Preferences" (NeurIPS 2024, arXiv:2407.09499). One *round* of their loop:

1. draw ``round_size`` K-tuples of samples from the current model p_t;
2. curate: from each K-tuple keep one sample, sample j with probability
   softmax(α·r(x_1..x_K))_j (the K-wise generalised Bradley–Terry choice model they assume;
   :func:`curate`). As K → ∞ the curated law is p_t(x)·exp(α r(x)) / E_{p_t}[exp(α r)], the
   KL-regularised RLHF optimum. Their result: when retraining fits the curated law, the expected
   reward rises round by round towards the highest reward level;
3. retrain on a mix of the curated samples and real data (with real data mixed in, they prove
   the loop stable, near the data law, while the reward still rises): each fine-tuning minibatch holds a
   share ``real_fraction`` of real training images (their λ-mix, with synthetic weight
   λ = (1 − real_fraction)/real_fraction);
4. fine-tune the denoiser for ``round_updates`` optimiser steps with the DDPM ε-loss
   E‖ε_θ(√ᾱ x0 + √(1−ᾱ) ε, t) − ε‖², t drawn uniformly from the inference schedule's timesteps
   (the only ones the sampler queries at this ``steps``).

The model is never told the reward or shown negatives: the reward acts only through which
samples are kept, so reward should rise and diversity fall round by round; each round's ``update``
event reports the pool's mean reward, the curated share's mean reward, the mean pairwise
distance of the pool's images and, for 8x8 digits, the held-out k-NN check's pass share and
the entropy (bits) of the digits it reads (an independent classifier, so a collapse onto one
digit shows as falling entropy).

How it sits in the loop (:func:`~engines.training.diffusion.loop.train_diffusion`): one update is
one fine-tuning step of ``batch_size`` rows; the first update of every round draws and curates
that round's pool (``samples`` counts the round_size·K images drawn, ``nfe`` their chains plus
one evaluation per fine-tuning row, ``backward_nfe`` the fine-tuning rows). Not implemented:
the pool is not checkpointed, so a resumed run redraws the pool of the round it resumes in
from the current weights; the loop sizes each minibatch by the ``samples`` budget left, so give
this scheme an ``updates``, ``nfe`` or ``seconds`` budget (a ``samples`` budget ends the run when
the last round's pool is drawn).

Real data: the embedded digits model's own training split (scikit-learn's digits, the split
``scripts/train_digits.py`` makes) for 8x8 digit models, the mixture itself for the
Gaussian-mixture toy; ``real_fraction = 0`` (pure self-consumption) needs none.

| code | paper | meaning |
|---|---|---|
| ``choices`` | K | samples the curator chooses one from |
| ``reward_weight`` | the reward's scale in the BT model | inverse temperature of the pick |
| ``real_fraction`` | 1/(1+λ) | share of real data in each fine-tuning minibatch |
| ``round_size`` | n (curated samples per retraining) | pool size per round |
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.models.diffusion import Schedule
from engines.training.diffusion import SCHEMES
from engines.training.diffusion.base import (
    DiffusionPolicy,
    DiffusionScheme,
    SchemeConfig,
    SchemeContext,
    batch_events,
)

DIGITS_SHAPE = (1, 8, 8)


def curate(rewards: torch.Tensor, weight: float, rng: torch.Generator) -> torch.Tensor:
    """The index kept from each row of ``rewards`` [M, K]: j with probability softmax(weight·r)_j
    (the K-wise Bradley–Terry choice of Ferbach et al.)."""
    if rewards.dim() != 2 or rewards.shape[1] < 1:
        raise ConfigError(f"curation needs rewards of shape [M, K], got {tuple(rewards.shape)}")
    probs = torch.softmax(weight * rewards.double(), dim=1)
    return torch.multinomial(probs, 1, generator=rng).squeeze(1)


_digits_train: list[torch.Tensor] = []


def digits_training_images() -> torch.Tensor:
    """The embedded digits DDPM's training split: scikit-learn's digits in [-1, 1], the stratified
    75% split with seed 0 that ``scripts/train_digits.py`` trains on ([N, 1, 8, 8])."""
    if not _digits_train:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = digits.images.astype("float32") / 8.0 - 1.0
        train, _, _, _ = train_test_split(images, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
        _digits_train.append(torch.from_numpy(train).unsqueeze(1))
    return _digits_train[0]


def real_samples(policy: DiffusionPolicy, n: int, rng: torch.Generator) -> torch.Tensor:
    """``n`` real training samples for ``policy`` (digits' training split, or the toy mixture)."""
    mixture = getattr(policy, "mixture", None)
    if mixture is not None:
        return mixture.sample(n, rng).to(torch.float64)
    if tuple(policy.sample_shape) == DIGITS_SHAPE:
        data = digits_training_images()
        return data[torch.randint(0, data.shape[0], (n,), generator=rng)]
    raise ConfigError(f"curated_retraining has no real data for {policy.name}; set real_fraction=0")


def pairwise_distance(images: torch.Tensor) -> float:
    """Mean Euclidean distance over distinct pairs of images (a diversity measure)."""
    flat = images.detach().double().reshape(images.shape[0], -1)
    n = flat.shape[0]
    if n < 2:
        return 0.0
    return float(torch.cdist(flat, flat).sum() / (n * (n - 1)))


def label_entropy(labels: list[int | None]) -> float:
    """Entropy in bits of the labels that are not None (0 when none are)."""
    seen = [x for x in labels if x is not None]
    if not seen:
        return 0.0
    counts = torch.bincount(torch.tensor(seen)).double()
    p = counts[counts > 0] / len(seen)
    return float(-(p * p.log2()).sum())


class CuratedRetrainingConfig(SchemeConfig):
    label = "Curated retraining (self-consuming loop)"
    paper = "Ferbach, Bertrand, Bose & Gidel 2024, Self-Consuming Generative Models with Curated Data Provably Optimize Human Preferences"
    summary = "Rounds of: sample, keep one of K by softmax(reward), fine-tune with the DDPM loss on curated + real data."

    batch_size: int = param(32, label="Rows per update", min=1, max=4096, help="Training images per fine-tuning step.")
    round_size: int = param(64, label="Curated samples per round", min=1, max=100_000, help="Each is kept from K fresh samples.")
    choices: int = param(4, label="Choices (K)", min=1, max=64, help="Samples the curator picks one from (1: no curation).")
    real_fraction: float = param(0.5, label="Real data share", min=0.0, max=1.0, step=0.05,
                                 help="Share of real training images in each fine-tuning minibatch (0: pure self-consumption).")
    round_updates: int = param(10, label="Updates per round", min=1, max=100_000, help="Fine-tuning steps on one round's pool.")


@SCHEMES.register("curated_retraining")
class CuratedRetraining(DiffusionScheme):
    """A round's pool is drawn at its first update and kept on the instance (not checkpointed)."""

    name = "curated_retraining"
    Config = CuratedRetrainingConfig

    def __init__(self, config: CuratedRetrainingConfig | None = None) -> None:
        super().__init__(config)
        self._round = -1
        self._pool: torch.Tensor | None = None

    def check_inputs(self, policy: DiffusionPolicy, reward: Any) -> None:
        super().check_inputs(policy, reward)
        if getattr(policy, "prediction_type", "epsilon") != "epsilon":
            raise ConfigError(f"curated_retraining fine-tunes with the ε-loss; {policy.name} predicts {policy.prediction_type}")
        if self.config.real_fraction > 0:
            real_samples(policy, 1, torch.Generator().manual_seed(0))  # one line when there is no real data

    def plan(self, sched: Schedule) -> dict[str, int]:
        return {"nfe": 1, "backward_nfe": 1, "backward_passes": 0}  # per fine-tuning row; a round's pool is spent apart

    def _draw_round(self, ctx: SchemeContext, sched: Schedule) -> tuple[list, dict[str, Any]]:
        cfg = self.config
        policy = ctx.policy
        eta = cfg.eta_schedule(sched)
        total = cfg.round_size * cfg.choices
        ctx.budget.spend(samples=total, nfe=total * len(sched))
        with torch.no_grad():
            x = policy.initial_noise(total, ctx.rng)
            for i in range(len(sched)):
                x = policy.step(x, i, sched, policy.predict(x, i, sched, ctx.task), eta=eta, rng=ctx.rng).sample
        images = policy.decode(x)
        rewards = ctx.score(images).reshape(cfg.round_size, cfg.choices)
        kept = curate(rewards, cfg.reward_weight, ctx.rng)
        rows = torch.arange(cfg.round_size)
        flat = rows * cfg.choices + kept
        self._pool = x.detach()[flat]
        probs = torch.softmax(cfg.reward_weight * rewards, dim=1).reshape(-1)
        stats: dict[str, Any] = {
            "pool_reward_mean": float(rewards.mean()),
            "curated_reward_mean": float(rewards[rows, kept].mean()),
            "pool_pairwise_distance": pairwise_distance(images),
            "curated_pairwise_distance": pairwise_distance(images[flat]),
        }
        if tuple(images.shape[1:]) == DIGITS_SHAPE:
            from engines.models.digits import load_heldout_check

            seen = load_heldout_check().recognise(images)
            stats["pool_heldout_digit"] = sum(s is not None for s in seen) / len(seen)
            stats["pool_label_entropy_bits"] = label_entropy(seen)
        events = batch_events(ctx, images, rewards.reshape(-1).tolist(), probs.tolist(),
                              stochastic=sched.stochastic(eta), meta={"kept": flat.tolist(), "choices": cfg.choices})
        return events, stats

    def loss(self, ctx: SchemeContext, n: int):
        cfg = self.config
        policy = ctx.policy
        sched = policy.schedule(cfg.steps)
        round_index = ctx.step // cfg.round_updates
        metrics: dict[str, Any] = {"round": round_index}
        if self._pool is None or self._round != round_index:
            events, stats = self._draw_round(ctx, sched)
            self._round = round_index
            metrics.update(stats)
            yield from events
        n_real = int(round(cfg.real_fraction * n))
        picks = torch.randint(0, self._pool.shape[0], (n - n_real,), generator=ctx.rng)
        parts = [self._pool[picks]]
        if n_real:
            parts.append(real_samples(policy, n_real, ctx.rng).to(self._pool.dtype))
        x0 = torch.cat(parts)
        loss = denoising_loss(ctx, x0, sched)
        metrics.update(loss=float(loss.detach()), real_rows=n_real)
        return loss, metrics


def denoising_loss(ctx: SchemeContext, x0: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """The DDPM ε-loss (Ho et al. 2020) of ``x0``, one timestep of ``sched`` per row drawn
    uniformly; metered as one back-propagated evaluation per row."""
    n = x0.shape[0]
    ctx.budget.spend(nfe=n, backward_nfe=n)
    steps = torch.randint(0, len(sched), (n,), generator=ctx.rng)
    noise = torch.randn(x0.shape, generator=ctx.rng, dtype=x0.dtype)
    total = x0.new_zeros(())
    with torch.enable_grad():
        for i in steps.unique().tolist():  # the network takes one timestep per call
            rows = steps == i
            a = sched.alpha_bars[i]
            xt = math.sqrt(a) * x0[rows] + math.sqrt(1 - a) * noise[rows]
            out = ctx.policy._model_output(xt, sched.timesteps[i], ctx.task)
            total = total + ((out - noise[rows]) ** 2).flatten(1).mean(1).sum()
    return total / n
