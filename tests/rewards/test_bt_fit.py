"""The head's fit on pure tensors: half-win ties and Davidson's tie model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.rewards.bt_fit import FitConfig, PairData, run_to_end


def davidson_votes(n: int, nu: float, seed: int = 0) -> tuple[PairData, torch.Tensor]:
    """Votes drawn from Davidson's model with a linear hidden reward on 6 features."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=gen)
    xa, xb = torch.randn(n, 6, generator=gen), torch.randn(n, 6, generator=gen)
    d = (xa - xb) @ w
    probs = torch.stack([torch.exp(d / 2), torch.exp(-d / 2), torch.full_like(d, nu)], dim=1)
    outcome = torch.multinomial(probs / probs.sum(1, keepdim=True), 1, generator=gen).squeeze(1)
    y = torch.tensor([1.0, 0.0, 0.5])[outcome]
    return PairData(xa, xb, y, np.arange(n) // 4), w


def test_davidson_recovers_the_tie_parameter():
    data, _ = davidson_votes(1200, nu=1.0)
    result = run_to_end(data, FitConfig(ties="davidson", epochs=200, curve=(1.0,), l2=1e-3))
    assert 0.75 < result.tie_nu < 1.3, result.tie_nu
    half = run_to_end(data, FitConfig(ties="half", epochs=200, curve=(1.0,), l2=1e-3))
    assert half.tie_nu is None
    # both likelihoods order the candidates alike: held-out accuracy within a few points
    assert abs(result.heldout.rate - half.heldout.rate) < 0.03 and result.heldout.rate > 0.75


def test_without_ties_davidson_drives_nu_towards_zero():
    data, _ = davidson_votes(400, nu=1e-6, seed=1)
    assert (data.y == 0.5).sum() == 0
    result = run_to_end(data, FitConfig(ties="davidson", epochs=200, curve=(1.0,)))
    assert result.tie_nu < 0.05


def test_bad_tie_model_is_refused():
    with pytest.raises(ConfigError, match="Davidson"):
        FitConfig(ties="rao")
