"""Trainable denoisers on the Gaussian-mixture toy, started from its exact score (for the training tests).

- :class:`StepShiftToy`: ε_θ(x, t) = ε*(x, t) + θ[t, 0] + θ[t, 1]·x, one (shift, slope) per
  timestep, zero at the start: every step has its own parameters, so which steps a
  gradient reaches is visible row by row.
- :class:`MLPToy`: ε_θ(x, t) = ε*(x, t) + g_θ(x, t/T), a small MLP whose last layer starts at
  zero: a denoiser that can learn a state-dependent correction.
"""

from __future__ import annotations

import copy

import torch

from engines.models.gaussian_mixture import GaussianMixture, GaussianMixtureDiffusion


class _Trainable(GaussianMixtureDiffusion):
    def __init__(self, mixture: GaussianMixture, *, spacing: str = "leading", **kwargs) -> None:
        super().__init__(mixture, **kwargs)
        if spacing != "leading":  # "trailing": the chain starts at t = T - 1 and its last noisy step is not near t = 0
            self.scheduler = type(self.scheduler).from_config(self.scheduler.config, timestep_spacing=spacing)
            self._schedules.clear()

    def parameters(self):
        return list(self.module.parameters())

    def state_dict(self):
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state):
        self.module.load_state_dict(state)

    def frozen_copy(self):
        other = copy.copy(self)
        other.module = copy.deepcopy(self.module).requires_grad_(False)
        return other

    def correction(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The trainable part added to the exact denoiser output; each toy below defines its own."""
        raise NotImplementedError("a trainable toy defines its correction")

    def _model_output(self, x, t, task):
        return super()._model_output(x, t, task) + self.correction(x, t)


class _Table(torch.nn.Module):
    def __init__(self, rows: int) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(rows, 2, dtype=torch.float64))


class StepShiftToy(_Trainable):
    def __init__(self, mixture: GaussianMixture, **kwargs) -> None:
        super().__init__(mixture, **kwargs)
        self.module = _Table(int(self.scheduler.config.num_train_timesteps))

    @property
    def theta(self) -> torch.Tensor:
        return self.module.theta

    def correction(self, x, t):
        return self.module.theta[t, 0] + self.module.theta[t, 1] * x


class MLPToy(_Trainable):
    def __init__(self, mixture: GaussianMixture, width: int = 32, seed: int = 0, **kwargs) -> None:
        super().__init__(mixture, **kwargs)
        torch.manual_seed(seed)  # the test's weights; engines never seed globally
        d = mixture.dim
        self.module = torch.nn.Sequential(
            torch.nn.Linear(d + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(), torch.nn.Linear(width, d)
        ).double()
        torch.nn.init.zeros_(self.module[-1].weight)
        torch.nn.init.zeros_(self.module[-1].bias)
        self.total = float(self.scheduler.config.num_train_timesteps)

    def correction(self, x, t):
        time = torch.full((x.shape[0], 1), t / self.total, dtype=x.dtype)
        return self.module(torch.cat([x, time], dim=1))
