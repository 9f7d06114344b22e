"""Token selection shared by every text model: temperature, top-k, top-p.

``draw`` returns the chosen tokens with two log-probs each: under the base
distribution (the raw logits, temperature 1) and under the warped distribution
actually sampled from. Temperature 0 is greedy (its sample log-prob is 0).
"""

from __future__ import annotations

import torch

from engines.models.base import SamplingParams


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probs of the sampling distribution: temperature, then top-k, then top-p."""
    scores = logits.float() / max(params.temperature, 1e-8)
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.log_softmax(-1)


def draw(
    logits: torch.Tensor, params: SamplingParams, rng: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens [B], base log-probs [B], sample log-probs [B]) for logits [B, V]."""
    base = logits.float().log_softmax(-1)
    if params.temperature == 0:
        tokens = base.argmax(-1)
        sample_lp = torch.zeros(tokens.shape, dtype=torch.float32)
    else:
        warped = warp(logits, params)
        probs = warped.exp()
        gen_device = rng.device if rng is not None else probs.device
        tokens = torch.multinomial(probs.to(gen_device), 1, generator=rng).squeeze(-1).to(probs.device)
        sample_lp = warped.gather(-1, tokens[:, None]).squeeze(-1)
    base_lp = base.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, base_lp, sample_lp


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the base next-token distribution of each row."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


def token_confidence(logits: torch.Tensor, k: int) -> torch.Tensor:
    """DeepConf's token confidence of each row (Fu et al. 2025, arXiv:2508.15260, eq. 2):
    C = -(1/k) Σ_{j≤k} log P(j), the k most likely tokens under the base distribution
    (temperature 1). Tokens of probability 0 (masked vocabularies) are left out, so
    k is at most the number of possible tokens."""
    logp = logits.float().log_softmax(-1)
    top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1).values
    finite = torch.isfinite(top)
    return -(top.nan_to_num(neginf=0.0) * finite).sum(-1) / finite.sum(-1).clamp(min=1)


def confidence_stops(confidences: list[float], params: SamplingParams) -> bool:
    """Whether DeepConf's online rule ends a row now: its window of the last
    ``confidence_window`` token confidences is full and their mean is below ``stop_confidence``."""
    window = params.confidence_window
    if params.stop_confidence is None or len(confidences) < window:
        return False
    return sum(confidences[-window:]) / window < params.stop_confidence
