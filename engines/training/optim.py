"""The training loop's optimiser: AdamW on everything, or SGD with momentum on the weights.

``adamw`` (the default): AdamW without weight decay on every parameter group, constant rates.
Adam's early steps move every weight by about its learning rate whatever the gradient's size
(sign-like), which on the arith policy, sharp along its gradient, is why the weights need a rate
near 1e-5 (README, "RL on the arith policy").

``sgd``: SGD with heavy-ball momentum on the weights, so a step is proportional to the (clipped)
gradient, small where the policy-gradient signal is small; the output normalisation's gain (the
logit scale, :meth:`HFPolicy.logit_scale_parameters`) keeps AdamW at its own rate, since its
gradient is tiny against its size (≈ 1) and an SGD step would not move it.
"""

from __future__ import annotations

from typing import Any

import torch

OPTIMIZERS = ("adamw", "sgd")


class SplitOptimizer:
    """Two optimisers stepped together, one per parameter group kind (``torch.optim``'s
    ``zero_grad`` / ``step`` / ``state_dict`` / ``load_state_dict`` surface, what the loop uses)."""

    def __init__(self, weights: torch.optim.Optimizer, gains: torch.optim.Optimizer) -> None:
        self.parts = {"weights": weights, "gains": gains}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for part in self.parts.values() for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts.values():
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


def build_optimizer(
    policy: Any, *, kind: str, learning_rate: float, gain_learning_rate: float | None, momentum: float = 0.9
) -> torch.optim.Optimizer | SplitOptimizer:
    """The optimiser for ``policy`` (see the module docstring). ``policy.parameter_groups`` gives the
    weights (first group) and, when ``gain_learning_rate`` is set, the output gain (second group);
    a policy without it trains ``policy.parameters()`` at ``learning_rate``."""
    if hasattr(policy, "parameter_groups"):
        groups = policy.parameter_groups(learning_rate, gain_learning_rate)
    else:
        groups = [{"params": list(policy.parameters()), "lr": learning_rate}]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, weight_decay=0.0)
    if kind != "sgd":
        raise ValueError(f"unknown optimiser {kind!r}; one of {', '.join(OPTIMIZERS)}")
    weights = torch.optim.SGD(groups[:1], lr=learning_rate, momentum=momentum)
    if len(groups) == 1:
        return weights
    return SplitOptimizer(weights, torch.optim.AdamW(groups[1:], lr=gain_learning_rate, weight_decay=0.0))
