"""DRaFT: fine-tune by back-propagating a differentiable reward through the sampling chain.

Clark, Vicol, Swersky & Fleet, "Directly Fine-Tuning Diffusion Models on Differentiable
Rewards" (ICLR 2024, arXiv:2309.17400). Three registered variants, one algorithm:

- ``draft``: the loss −α·r(x_0) back-propagated through every step of the chain
  (``truncate = 0``);
- ``draft_k``: through the last K steps only (DRaFT-K): the chain runs without a graph
  until K steps are left, so the gradient is ∇_θ r with x_{T-K} held fixed — it is *not* the
  full-chain gradient, but the paper found it both cheaper and better (K = 1 is its default);
- ``draft_lv``: DRaFT-LV, the lower-variance K = 1 estimator: after the chain has made x_0
  (no graph), it is noised back to the last step's level n times,
  x_1^(j) = √ᾱ_1·x_0 + √(1−ᾱ_1)·ε^(j), each copy is denoised by the last step with the graph,
  and the n rewards' gradients are averaged.

Step noise (η, a per-step schedule allowed) is drawn once per chain and enters as a
constant; gradient checkpointing is not implemented (the graph of the differentiated steps
is kept in memory).

Cost per sample: ``steps`` network evaluations (+ n for LV), the differentiated ones
metered as ``backward_nfe`` (K, all steps, or n), one reward backward pass (n for LV).

| code | paper | meaning |
|---|---|---|
| ``truncate`` | K | steps the gradient flows through (0: all) |
| ``lv_copies`` | n | re-noised copies of x_0 in DRaFT-LV |
| ``reward_weight`` | (reward scale) | α in the loss −α·r |
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.models.diffusion import Schedule
from engines.training.diffusion import SCHEMES
from engines.training.diffusion.base import DiffusionScheme, SchemeConfig, SchemeContext, batch_events

PAPER = "Clark et al. 2023, Directly Fine-Tuning Diffusion Models on Differentiable Rewards"


class DRaFTConfig(SchemeConfig):
    label = "DRaFT (reward gradient through the chain)"
    paper = PAPER
    summary = "Back-propagate −α·r(x0) through the whole sampling chain."

    truncate: int = param(0, label="Steps differentiated (K)", min=0, max=1000, help="0: the whole chain.")


class DRaFTKConfig(DRaFTConfig):
    label = "DRaFT-K (last K steps)"
    summary = "Back-propagate the reward only through the last K denoising steps."

    truncate: int = param(1, label="Steps differentiated (K)", min=1, max=1000, help="The last K steps carry the gradient.")


class DRaFTLVConfig(SchemeConfig):
    label = "DRaFT-LV (K = 1, lower variance)"
    paper = PAPER
    summary = "Noise the final sample back n times, differentiate the last step on each copy, average."

    lv_copies: int = param(2, label="Re-noised copies (n)", min=1, max=64, help="Copies of x0 noised to the last step.")


def _rewards_and_loss(ctx: SchemeContext, images: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    values = ctx.score_tensor(images)
    return values.detach().double(), -weight * values.mean()


@SCHEMES.register("draft")
class DRaFT(DiffusionScheme):
    name = "draft"
    Config = DRaFTConfig
    needs_gradient = True

    def check_inputs(self, policy: Any, reward: Any) -> None:
        super().check_inputs(policy, reward)
        steps = len(policy.schedule(self.config.steps))
        if self.config.truncate > steps:
            raise ConfigError(f"truncate K = {self.config.truncate} is more than the chain's {steps} steps")

    def differentiated(self, sched: Schedule) -> int:
        return len(sched) if self.config.truncate == 0 else self.config.truncate

    def plan(self, sched: Schedule) -> dict[str, int]:
        return {"nfe": len(sched), "backward_nfe": self.differentiated(sched), "backward_passes": 1}

    def loss(self, ctx: SchemeContext, n: int):
        cfg = self.config
        policy = ctx.policy
        sched = policy.schedule(cfg.steps)
        eta = cfg.eta_schedule(sched)
        first_graph = len(sched) - self.differentiated(sched)
        x = policy.initial_noise(n, ctx.rng)
        for i in range(len(sched)):
            grad = i >= first_graph
            pred = ctx.denoise(policy, x, i, sched, grad=grad)
            with torch.set_grad_enabled(grad):
                x = policy.step(x, i, sched, pred, eta=eta, rng=ctx.rng).sample
            if not grad:
                x = x.detach()
        ctx.budget.spend(samples=n)
        with torch.enable_grad():
            images = policy.decode(x)
            rewards, loss = _rewards_and_loss(ctx, images, cfg.reward_weight)
        yield from batch_events(ctx, images, rewards.tolist(), [], stochastic=sched.stochastic(eta),
                                meta={"differentiated_steps": list(range(first_graph, len(sched)))})
        return loss, {"loss": float(loss.detach()), "reward_mean": float(rewards.mean())}


@SCHEMES.register("draft_k")
class DRaFTK(DRaFT):
    name = "draft_k"
    Config = DRaFTKConfig


@SCHEMES.register("draft_lv")
class DRaFTLV(DiffusionScheme):
    name = "draft_lv"
    Config = DRaFTLVConfig
    needs_gradient = True

    def plan(self, sched: Schedule) -> dict[str, int]:
        m = self.config.lv_copies
        return {"nfe": len(sched) + m, "backward_nfe": m, "backward_passes": m}

    def loss(self, ctx: SchemeContext, n: int):
        cfg = self.config
        policy = ctx.policy
        sched = policy.schedule(cfg.steps)
        eta = cfg.eta_schedule(sched)
        last = len(sched) - 1
        x = policy.initial_noise(n, ctx.rng)
        for i in range(len(sched)):
            pred = ctx.denoise(policy, x, i, sched)
            x = policy.step(x, i, sched, pred, eta=eta, rng=ctx.rng).sample
        ctx.budget.spend(samples=n)
        images = policy.decode(x)
        rewards = ctx.score(images)
        a = sched.alpha_bars[last]
        losses = []
        for _ in range(cfg.lv_copies):
            noisy = math.sqrt(a) * x + math.sqrt(1 - a) * torch.randn(x.shape, generator=ctx.rng, dtype=torch.float32).to(x)
            pred = ctx.denoise(policy, noisy, last, sched, grad=True)
            with torch.enable_grad():
                x0 = policy.step(noisy, last, sched, pred, eta=eta, rng=ctx.rng).sample
                _, copy_loss = _rewards_and_loss(ctx, policy.decode(x0), cfg.reward_weight)
            losses.append(copy_loss)
        loss = torch.stack(losses).mean()
        yield from batch_events(ctx, images, rewards.tolist(), [], stochastic=sched.stochastic(eta),
                                meta={"differentiated_steps": [last], "lv_copies": cfg.lv_copies})
        return loss, {"loss": float(loss.detach()), "reward_mean": float(rewards.mean())}
