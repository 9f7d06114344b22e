"""The update: a policy-gradient or SFT loss on a :class:`TrainingBatch`, and one optimiser step.

Policy gradient (``batch.objective == "pg"``), per completion token t of sample i::

    ratio_it = exp(log pi(y_it) - log pi_old(y_it))
    surr_it  = ratio_it * A_i                                   (no clipping)
             = min(ratio_it * A_i, clip(ratio_it, 1-eps, 1+eps) * A_i)   (PPO clip, eps given)
    k3_it    = exp(d) - d - 1,  d = log pi_ref(y_it) - log pi(y_it)      (GRPO's KL estimator)
    loss     = sum_it w_it * (-surr_it + beta * k3_it)

with ``w_it`` the strategy's token weights (aggregation and per-sample weight folded in).
On-policy (ratio 1) the surrogate's gradient is ``sum_it w_it A_i grad log pi(y_it)``, the
REINFORCE estimate. The k3 term's expected gradient under pi is
``E_s[grad KL(pi_ref(.|s) || pi(.|s))]`` over the visited prefixes s (Tang & Munos 2025,
"On a few pitfalls in KL divergence gradient estimation for RL"): it pulls pi back toward
the reference, as DeepSeekMath's GRPO uses it.

SFT (``"sft"``, RAFT): ``loss = -sum_it w_it log pi(y_it)``, no ratio, no advantage.
"""

from __future__ import annotations

from typing import Any

import torch

from engines.training.base import Policy, TrainingBatch


def batch_loss(
    policy: Policy,
    batch: TrainingBatch,
    *,
    reference: Policy | None = None,
    kl_coef: float = 0.0,
    clip_eps: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch's loss (with grad) and its metrics: loss, kl (mean k3 per token), entropy, ratio."""
    logps, entropies, mask = policy.token_logprobs(batch.rollouts)
    width = logps.shape[1]
    device = logps.device
    weights = torch.zeros_like(logps)
    old = torch.zeros_like(logps)
    for i, rollout in enumerate(batch.rollouts):
        n = rollout.tokens
        weights[i, :n] = torch.tensor(batch.token_weights[i], dtype=logps.dtype, device=device)
        old[i, :n] = torch.tensor(rollout.logprobs, dtype=logps.dtype, device=device)
    mask = mask.to(device)
    tokens = mask.sum().clamp(min=1)
    metrics: dict[str, float] = {"entropy": float((entropies.to(device) * mask).sum() / tokens)}
    if batch.objective == "sft":
        loss = -(weights * logps * mask).sum()
    else:
        advantages = torch.tensor(batch.advantages, dtype=logps.dtype, device=device)[:, None].expand(-1, width)
        ratio = torch.exp(logps - old) * mask + (1 - mask)  # padding: ratio 1, weight 0
        surrogate = ratio * advantages
        if clip_eps is not None:
            clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
            surrogate = torch.minimum(surrogate, clipped)
            metrics["clip_fraction"] = float(((surrogate != ratio * advantages).float() * mask).sum() / tokens)
        loss = -(weights * surrogate * mask).sum()
        metrics["ratio_mean"] = float((ratio.detach() * mask).sum() / tokens)
    if reference is not None:
        with torch.no_grad():
            ref_logps, _, _ = reference.token_logprobs(batch.rollouts)
        d = (ref_logps.to(device) - logps) * mask
        k3 = (torch.exp(d) - d - 1) * mask
        metrics["kl"] = float(k3.detach().sum() / tokens)
        if kl_coef:
            loss = loss + kl_coef * (weights * k3).sum()
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def apply_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: TrainingBatch,
    *,
    reference: Policy | None = None,
    kl_coef: float = 0.0,
    clip_eps: float | None = None,
    max_grad_norm: float | None = 1.0,
) -> dict[str, Any]:
    """One optimiser step on ``batch``; returns loss, kl, entropy and the gradient norm (before clipping)."""
    optimizer.zero_grad(set_to_none=True)
    if len(batch) == 0:
        return {"loss": 0.0, "grad_norm": 0.0, "skipped": True}
    loss, metrics = batch_loss(policy, batch, reference=reference, kl_coef=kl_coef, clip_eps=clip_eps)
    loss.backward()
    params = [p for p in policy.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    optimizer.step()
    metrics["grad_norm"] = float(norm)
    return metrics
