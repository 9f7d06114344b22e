import torch

from engines.models.base import SamplingParams
from engines.models.sampling import draw, warp


def test_top_k_and_top_p_truncate_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(warp(logits, SamplingParams(top_k=2))).sum() == 2
    # top-p 0.8: 0.5 + 0.3 reaches it, so two tokens stay
    assert torch.isfinite(warp(logits, SamplingParams(top_p=0.8))).sum() == 2
    assert torch.isfinite(warp(logits, SamplingParams(top_p=0.81))).sum() == 3
    assert torch.isfinite(warp(logits, SamplingParams(top_p=0.01))).sum() == 1


def test_temperature_zero_is_greedy_and_base_logprobs_ignore_warping():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    tokens, base, sample = draw(logits, SamplingParams(temperature=0), None)
    assert tokens.item() == 1 and sample.item() == 0.0
    assert base.item() == logits.log_softmax(-1)[0, 1].item()


def test_sampling_frequencies_follow_the_warped_law():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(20000, 1)
    tokens, _, _ = draw(logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.015)
