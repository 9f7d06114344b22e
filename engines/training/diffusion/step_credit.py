"""Step credit "for free": each denoising step's share of the final reward from how far it moves x̂0 towards the final image.

Liao, Wei, Qu & Cheng, "Step-level Reward for Free in RL-based T2I Diffusion Model Fine-tuning"
(CoCA, arXiv:2505.19196; code github.com/Lil-Shake/CoCA). With x̂0_t the network's prediction of
the clean image at step t (from x_t, before step t acts) and x_0 the final image,

    s_t = cos(x̂0_t, x_0),  t = 0 … K−1,   s_K = cos(x_0, x_0) = 1,
    c_t = s_{t+1} − s_t    (step t's action makes x̂0_{t+1}),

so Σ_t c_t = s_K − s_0 = 1 − s_0 telescopically: the credits split the whole approach from the
first prediction to the final image. The step reward is the terminal reward split by those
shares, ``r_t = r · c_t / Σ_s c_s``, which sums back to r.

What is and is not followed: the cosine contribution and the proportional split are the paper's;
its fixed-window smoothing and two-stage normalisation are not implemented (DPOK's baseline
then acts per step column). The step rewards are reward *shaping*: the resulting gradient is
not the unbiased gradient of E[r] that DPOK's plain credit gives.
"""

from __future__ import annotations

import torch

STEP_CREDITS = ("none", "cosine")


def cosine_similarities(x0_hats: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """s_t = cos(x̂0_t, x_0) per sample: ``x0_hats`` [N, K, ...], ``final`` [N, ...] → [N, K + 1] (last column 1)."""
    n, k = x0_hats.shape[:2]
    preds = x0_hats.reshape(n, k, -1).to(torch.float64)
    target = final.reshape(n, 1, -1).to(torch.float64)
    sims = torch.nn.functional.cosine_similarity(preds, target.expand_as(preds), dim=2, eps=1e-12)
    return torch.cat([sims, torch.ones(n, 1, dtype=torch.float64)], dim=1)


def cosine_step_credits(x0_hats: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """c_t = s_{t+1} − s_t per sample and step, [N, K]; each row sums to 1 − s_0."""
    sims = cosine_similarities(x0_hats, final)
    return sims[:, 1:] - sims[:, :-1]


def credited_rewards(rewards: torch.Tensor, credits: torch.Tensor) -> torch.Tensor:
    """r_t = r · c_t / Σ_s c_s per sample, [N, K] (rows sum to r; a chain whose credits sum to ~0,
    its first prediction already the final image, splits r evenly)."""
    total = credits.sum(1, keepdim=True)
    even = torch.full_like(credits, 1.0 / credits.shape[1])
    shares = torch.where(total.abs() > 1e-9, credits / torch.where(total.abs() > 1e-9, total, 1.0), even)
    return rewards.to(credits.dtype)[:, None] * shares
