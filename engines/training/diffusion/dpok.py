"""DPOK: policy gradient over the denoising MDP with KL regularisation to the pretrained model.

Fan, Watkins, Du, Liu, Ryu, Boutilier, Abbeel, Ghavamzadeh, Lee & Lee, "DPOK: Reinforcement
Learning for Fine-tuning Text-to-Image Diffusion Models" (NeurIPS 2023, arXiv:2305.16381);
its KL-free case (``kl_coef = 0``) is DDPO's score-function estimator, DDPO_SF (Black,
Janner, Du, Kostrikov & Levine, "Training Diffusion Models with Reinforcement Learning",
ICLR 2024, arXiv:2305.13301).

The reverse chain is an MDP whose action at step t is x_{t-1} ~ p_θ(x_{t-1} | x_t) =
N(μ_θ(x_t), σ_t²I); the reward α·r(x_0) comes at the end. The objective is

    J(θ) = E_θ[α·r(x_0)] − β·Σ_t E_θ[KL(p_θ(·|x_t) ‖ p_pre(·|x_t))]

and the per-step KL of two Gaussians with the same σ_t is ‖μ_θ − μ_pre‖² / (2σ_t²). By the
chain rule of KL the sum is KL(p_θ ‖ p_pre) over whole chains (both start from N(0, I)), so
J's maximiser has the terminal law p_pre(x_0)·exp(α·r(x_0)/β)/Z when x_0 and x_T are
(nearly) independent under p_pre (a memoryless schedule: DDPM steps down from ᾱ_T ≈ 0).

The loss, per batch of N chains with stochastic steps S (the only steps with a
log-prob term; a deterministic step, σ = 0, has none and its θ-dependence is not credited)::

    loss = −(1/N) Σ_i Σ_{t∈S} A_{i,t} · log p_θ(x^i_{t-1} | x^i_t)  +  β·(1/N) Σ_i Σ_{t∈S} KL_{i,t}

with ``A`` the return minus a baseline (:func:`baseline_advantages`). The return at step t
depends on ``kl_credit``:

- ``path``: α·r_i − β·Σ_{s∈S after t} KL_{i,s} (detached). Then the loss's gradient is an
  unbiased estimate of ∇J: the KL term's gradient at the visited states plus the score-function
  term for how step t moves the states the later KL terms are taken at.
- ``dpok``: α·r_i, as DPOK's Algorithm 1 / eq. (8) writes it (the KL gradient taken at the
  visited states only; the states' own dependence on θ is dropped).

With ``step_credit='cosine'`` the return at step t is the step's share of α·r_i instead
(:mod:`~engines.training.diffusion.step_credit`, CoCA's step-level reward; reward shaping, so
not the unbiased gradient above).

DDPO's importance ratio and clipping (Black et al. 2023; its code github.com/kvablack/ddpo-pytorch,
``train.clip_range`` and ``train.num_inner_epochs``): one batch
of chains is used for ``inner_epochs`` updates (one loop update each: the first draws the chains,
the others re-evaluate the policy at the stored states); each stochastic step's term uses the
ratio ρ = p_θ(x_{t-1}|x_t) / p_old(x_{t-1}|x_t) against the policy that drew the batch, and PPO's
clipped surrogate (Schulman et al. 2017)::

    loss = (1/N) Σ_i Σ_{t∈S} max(−A_{i,t}·ρ_{i,t}, −A_{i,t}·clip(ρ_{i,t}, 1−ε, 1+ε))  +  β·(1/N) Σ_i Σ_{t∈S} KL_{i,t}

A term's gradient vanishes once the ratio has left the trust region on the side its advantage
pushes it (above 1+ε for A > 0, below 1−ε for A < 0). On the first epoch ρ = 1, so its gradient
is the plain estimator above, exactly; advantages (and the path KL credit in them) are fixed when
the batch is drawn, the KL term is re-taken at the current θ. Differences from DDPO's code: one
gradient step per epoch over the whole batch (DDPO splits an epoch into minibatches and shuffles
the steps), the steps' terms are summed rather than averaged, and no advantage clipping. The stored
batch is part of the run's checkpoint, so a run resumed between a batch's epochs continues them.

| code | paper (DPOK) | meaning |
|---|---|---|
| ``reward_weight`` | α | weight of the reward |
| ``kl_coef`` | β | weight of the KL to the pretrained model |
| ``log_prob`` | log p_θ(x_{t-1}|x_t) | the step's Gaussian density (the model's own step code) |
| ``clip_range`` | ε (DDPO's ``clip_range``) | half-width of the ratio's trust region |
| ``inner_epochs`` | DDPO's ``num_inner_epochs`` | updates per batch of chains |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from engines.config import param
from engines.errors import ConfigError
from engines.models.diffusion import Eta, Prediction, Schedule, Transition, transition_log_prob
from engines.training.diffusion import SCHEMES
from engines.training.diffusion.base import (
    BASELINES,
    DiffusionPolicy,
    DiffusionScheme,
    SchemeConfig,
    SchemeContext,
    baseline_advantages,
    batch_events,
)
from engines.training.diffusion.step_credit import STEP_CREDITS, cosine_step_credits, credited_rewards


class DPOKConfig(SchemeConfig):
    label = "DPOK (policy gradient + KL)"
    paper = "Fan et al. 2023, DPOK: Reinforcement Learning for Fine-tuning Text-to-Image Diffusion Models"
    summary = "Score-function gradient over the stochastic denoising steps, KL to the pretrained model; β = 0 is DDPO."

    kl_coef: float = param(0.01, label="KL coefficient (β)", min=0.0, max=1e6, help="0: DDPO's KL-free estimator.")
    kl_credit: str = param(
        "path",
        label="KL credit",
        choices=("path", "dpok"),
        help="path: exact gradient of E[αr] − β·KL (later steps' KL in each step's return); dpok: the paper's estimator.",
        advanced=True,
    )
    baseline: str = param("loo", label="Baseline", choices=BASELINES, help="none, leave-one-out (unbiased) or DDPO's mean/std.")
    step_credit: str = param(
        "none", label="Step credit", choices=STEP_CREDITS,
        help="none: the reward on every step; cosine: each step's share by how far it moves x̂0 to the final image (CoCA).",
        advanced=True,
    )
    clip_range: float = param(
        1e-4, label="Ratio clip (ε)", min=0.0, max=10.0,
        help="PPO clipping of the ratio to the policy that drew the batch (DDPO's default 1e-4); bites from the second inner epoch.",
        advanced=True,
    )
    inner_epochs: int = param(1, label="Inner epochs", min=1, max=64, help="Updates per batch of chains (DDPO).", advanced=True)


@dataclass
class DrawnBatch:
    """What the later inner epochs of one batch need: the stochastic steps' states and samples, the
    log-probs under the policy that drew them, the fixed advantages, the reference means, the rewards."""

    states: list[torch.Tensor]
    samples: list[torch.Tensor]
    stds: list[float]
    steps: list[int]
    old_logp: torch.Tensor  # [N, S]
    advantages: torch.Tensor  # [N, S]
    ref_means: list[torch.Tensor] | None
    rewards: torch.Tensor
    epoch: int = 1


def clipped_surrogate(advantages: torch.Tensor, logp: torch.Tensor, old_logp: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped objective as a loss, per sample summed over steps: Σ_t max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))."""
    ratio = torch.exp(logp - old_logp)
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).sum(1)


@SCHEMES.register("dpok")
class DPOK(DiffusionScheme):
    name = "dpok"
    Config = DPOKConfig
    needs_reference = True

    def check_inputs(self, policy: DiffusionPolicy, reward: Any) -> None:
        super().check_inputs(policy, reward)
        sched = policy.schedule(self.config.steps)
        if not any(sched.stochastic(self.config.eta_schedule(sched))):
            raise ConfigError("dpok needs at least one stochastic step (η > 0 on a step with σ > 0)")
        if self.config.baseline != "none" and self.config.batch_size < 2:
            raise ConfigError(f"baseline {self.config.baseline!r} needs batch_size >= 2")

    def plan(self, sched: Schedule) -> dict[str, int]:
        stochastic = sum(sched.stochastic(self.config.eta_schedule(sched)))
        reference = stochastic if self.config.kl_coef > 0 else 0
        return {"nfe": len(sched) + reference, "backward_nfe": stochastic, "backward_passes": 0}

    def transition(
        self, policy: DiffusionPolicy, x: torch.Tensor, i: int, sched: Schedule, pred: Prediction, eta: Eta, rng: torch.Generator
    ) -> Transition:
        """The step's transition (drawn with ``rng``); its ``log_prob`` is the term the estimator credits."""
        return policy.step(x, i, sched, pred, eta=eta, rng=rng)

    def __init__(self, config: DPOKConfig | None = None) -> None:
        super().__init__(config)
        self.pending: DrawnBatch | None = None  # a batch with inner epochs left

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint must keep for a resumed run to continue a batch's inner epochs exactly."""
        return {"pending": asdict(self.pending) if self.pending is not None else None}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.pending = DrawnBatch(**state["pending"]) if state.get("pending") else None

    def loss(self, ctx: SchemeContext, n: int):
        cfg = self.config
        if self.pending is None:
            batch, logp, kl = yield from self.draw(ctx, n)
        else:
            batch = self.pending
            logp, kl = self.replay(ctx, batch)
        surrogate = clipped_surrogate(batch.advantages, logp, batch.old_logp, cfg.clip_range)
        loss = surrogate.mean() + cfg.kl_coef * kl.sum(1).mean()
        ratio = torch.exp(logp.detach() - batch.old_logp)
        metrics = {
            "loss": float(loss.detach()),
            "reward_mean": float(batch.rewards.mean()),
            "kl": float(kl.detach().sum(1).mean()),
            "logprob_terms": logp.shape[1],
        }
        if cfg.inner_epochs > 1:
            metrics.update(inner_epoch=batch.epoch, ratio_mean=float(ratio.mean()),
                           clip_fraction=float(((ratio - 1).abs() > cfg.clip_range).double().mean()))
        batch.epoch += 1
        self.pending = batch if batch.epoch <= cfg.inner_epochs else None
        return loss, metrics

    def draw(self, ctx: SchemeContext, n: int):
        """Draw ``n`` chains, yield their events; return the batch, its log-probs and KL terms (with graph)."""
        cfg = self.config
        policy = ctx.policy
        sched = policy.schedule(cfg.steps)
        eta = cfg.eta_schedule(sched)
        stochastic = sched.stochastic(eta)
        use_kl = cfg.kl_coef > 0
        x = policy.initial_noise(n, ctx.rng)
        log_probs, kls, x0_hats, states, samples, stds, ref_means = [], [], [], [], [], [], []
        for i in range(len(sched)):
            pred = ctx.denoise(policy, x, i, sched, grad=stochastic[i])
            x0_hats.append(pred.x0.detach())
            with torch.set_grad_enabled(stochastic[i]):
                trans = self.transition(policy, x, i, sched, pred, eta, ctx.rng)
                if stochastic[i]:
                    sample = trans.sample.detach()
                    states.append(x)
                    samples.append(sample)
                    stds.append(trans.std)
                    log_probs.append(trans.log_prob(sample))
                    if use_kl:
                        ref_pred = ctx.denoise(ctx.reference, x, i, sched)
                        ref_mean = ctx.reference.step(x, i, sched, ref_pred, eta=eta, noise=torch.zeros_like(x)).mean.detach()
                        ref_means.append(ref_mean)
                        kls.append(((trans.mean - ref_mean) ** 2).flatten(1).sum(1) / (2 * trans.std**2))
            x = trans.sample.detach()
        ctx.budget.spend(samples=n)
        images = policy.decode(x)
        rewards = ctx.score(images)
        logp = torch.stack(log_probs, dim=1)  # [N, S], stochastic steps in chain order
        kl = torch.stack(kls, dim=1) if kls else torch.zeros_like(logp)
        returns = cfg.reward_weight * rewards.to(logp.dtype)[:, None].expand_as(logp)
        if cfg.step_credit == "cosine":  # the stochastic steps' shares of the reward
            credits = cosine_step_credits(torch.stack(x0_hats, dim=1), x)
            returns = credited_rewards(cfg.reward_weight * rewards, credits)[:, torch.tensor(stochastic)].to(logp.dtype)
        if use_kl and cfg.kl_credit == "path":
            later = kl.detach().flip(1).cumsum(1).flip(1) - kl.detach()  # Σ over the stochastic steps after t
            returns = returns - cfg.kl_coef * later
        advantages = baseline_advantages(returns, cfg.baseline).detach()
        yield from batch_events(ctx, images, rewards.tolist(), advantages[:, 0].tolist(), stochastic=stochastic,
                                meta={"step_advantages": advantages.mean(0).tolist(),
                                      "sample_step_advantages": advantages.tolist()})
        batch = DrawnBatch(states=states, samples=samples, stds=stds, steps=[i for i, s in enumerate(stochastic) if s],
                           old_logp=logp.detach(), advantages=advantages, ref_means=ref_means if use_kl else None,
                           rewards=rewards)
        return batch, logp, kl

    def replay(self, ctx: SchemeContext, batch: DrawnBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-probs and KL terms of a stored batch under the current policy (a later inner epoch)."""
        policy = ctx.policy
        sched = policy.schedule(self.config.steps)
        eta = self.config.eta_schedule(sched)
        log_probs, kls = [], []
        for k, i in enumerate(batch.steps):
            x = batch.states[k]
            pred = ctx.denoise(policy, x, i, sched, grad=True)
            with torch.enable_grad():
                mean = policy.step(x, i, sched, pred, eta=eta, noise=torch.zeros_like(x)).mean
                log_probs.append(transition_log_prob(batch.samples[k], mean, batch.stds[k]))
                if batch.ref_means is not None:
                    kls.append(((mean - batch.ref_means[k]) ** 2).flatten(1).sum(1) / (2 * batch.stds[k] ** 2))
        logp = torch.stack(log_probs, dim=1)
        return logp, torch.stack(kls, dim=1) if kls else torch.zeros_like(logp)
