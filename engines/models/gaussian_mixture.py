"""A toy diffusion model with an exact score: a Gaussian mixture in d dimensions.

The data distribution is p0 = Σ_k w_k N(μ_k, s_k² I). Noised to level ᾱ it
stays a mixture, p_t = Σ_k w_k N(√ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I), so the score
∇ log p_t and hence the exact noise prediction ε* = −√(1−ᾱ) ∇ log p_t(x) and
Tweedie's x̂0 = E[x0 | x_t] are closed-form. It speaks the
:class:`DiffusionModel` protocol (particles are vectors of shape ``(d,)``;
there are no images), so samplers run on it unchanged and tests can compare
what they produce with exact answers.

:meth:`GaussianMixture.tilt_linear` gives the reward-tilted density
p0(x)·exp(λ·aᵀx)/Z in closed form: each component shifts its mean by λ·s_k²·a
and its weight is multiplied by exp(λ·aᵀμ_k + λ²·s_k²·|a|²/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engines.errors import ConfigError
from engines.models.diffusion import (
    DiffusionModel,
    Schedule,
    ddim_scheduler_from_config,
    schedule_from_scheduler,
)
from engines.task import Task


@dataclass(frozen=True)
class GaussianMixture:
    weights: tuple[float, ...]
    means: tuple[tuple[float, ...], ...]
    stds: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.weights) == len(self.means) == len(self.stds)) or not self.weights:
            raise ConfigError("a mixture needs one weight, mean and std per component")
        if any(w <= 0 for w in self.weights) or any(s <= 0 for s in self.stds):
            raise ConfigError("mixture weights and stds must be positive")
        if len({len(m) for m in self.means}) != 1:
            raise ConfigError("all mixture means must have the same dimension")
        total = sum(self.weights)
        object.__setattr__(self, "weights", tuple(w / total for w in self.weights))

    @property
    def dim(self) -> int:
        return len(self.means[0])

    def tilt_linear(self, direction: Sequence[float], lam: float) -> GaussianMixture:
        """The mixture proportional to p0(x)·exp(λ·aᵀx), exactly."""
        a = list(direction)
        if len(a) != self.dim:
            raise ConfigError(f"direction has {len(a)} entries for a {self.dim}-d mixture")
        a2 = sum(v * v for v in a)
        logw = [
            math.log(w) + lam * sum(ai * mi for ai, mi in zip(a, m, strict=True)) + 0.5 * lam**2 * s**2 * a2
            for w, m, s in zip(self.weights, self.means, self.stds, strict=True)
        ]
        top = max(logw)
        weights = tuple(math.exp(v - top) for v in logw)
        means = tuple(
            tuple(mi + lam * s**2 * ai for mi, ai in zip(m, a, strict=True))
            for m, s in zip(self.means, self.stds, strict=True)
        )
        return GaussianMixture(weights, means, self.stds)

    def log_partition(self, direction: Sequence[float], lam: float) -> float:
        """log Z = log E_{p0}[exp(λ·aᵀx)], the normaliser of the tilted density."""
        a = list(direction)
        a2 = sum(v * v for v in a)
        return math.log(
            sum(
                w * math.exp(lam * sum(ai * mi for ai, mi in zip(a, m, strict=True)) + 0.5 * lam**2 * s**2 * a2)
                for w, m, s in zip(self.weights, self.means, self.stds, strict=True)
            )
        )

    def mass_above(self, threshold: float, axis: int = 0) -> float:
        """P(x[axis] > threshold) under the mixture."""
        return sum(
            w * 0.5 * math.erfc((threshold - m[axis]) / (s * math.sqrt(2)))
            for w, m, s in zip(self.weights, self.means, self.stds, strict=True)
        )

    def mean(self, axis: int = 0) -> float:
        return sum(w * m[axis] for w, m in zip(self.weights, self.means, strict=True))

    def sample(self, n: int, rng: torch.Generator | None = None) -> torch.Tensor:
        comp = torch.multinomial(torch.tensor(self.weights), n, replacement=True, generator=rng)
        means = torch.tensor(self.means)[comp]
        stds = torch.tensor(self.stds)[comp].unsqueeze(1)
        return means + stds * torch.randn((n, self.dim), generator=rng)


class GaussianMixtureDiffusion(DiffusionModel):
    """The exact denoiser of a Gaussian mixture under a diffusers noise schedule."""

    def __init__(
        self,
        mixture: GaussianMixture,
        *,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        default_steps: int = 100,
        name: str = "toy:gaussian-mixture",
    ) -> None:
        self.mixture = mixture
        self.name = name
        self.default_steps = default_steps
        self.sample_shape = (mixture.dim,)
        self.image_shape = (mixture.dim,)
        self.prediction_type = "epsilon"
        self.clip_sample = False
        self.device = torch.device("cpu")
        self.dtype = torch.float64
        self.scheduler = ddim_scheduler_from_config(
            {"num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule, "clip_sample": False}
        )
        self._weights = torch.tensor(mixture.weights, dtype=torch.float64)
        self._means = torch.tensor(mixture.means, dtype=torch.float64)  # [K, d]
        self._vars = torch.tensor(mixture.stds, dtype=torch.float64) ** 2  # [K]
        self._schedules: dict[int, Schedule] = {}

    def schedule(self, steps: int | None = None) -> Schedule:
        steps = steps or self.default_steps
        if steps not in self._schedules:
            self._schedules[steps] = schedule_from_scheduler(self.scheduler, steps)
        return self._schedules[steps]

    def alpha_bar(self, t: int) -> float:
        return float(self.scheduler.alphas_cumprod[t])

    def score(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """∇ log p_t(x) of the noised mixture at level ᾱ."""
        a = alpha_bar
        var = a * self._vars + (1 - a)  # [K]
        diff = x.unsqueeze(1) - math.sqrt(a) * self._means.unsqueeze(0)  # [B, K, d]
        d = x.shape[1]
        log_comp = (
            self._weights.log()
            - 0.5 * (diff**2).sum(-1) / var
            - 0.5 * d * torch.log(2 * math.pi * var)
        )  # [B, K]
        resp = log_comp.softmax(dim=1)
        return -(resp.unsqueeze(-1) * diff / var.view(1, -1, 1)).sum(1)

    def _model_output(self, x: torch.Tensor, t: int, task: Task | None) -> torch.Tensor:
        a = self.alpha_bar(t)
        return -math.sqrt(1 - a) * self.score(x, a)

    #: score evaluations one :meth:`flow_map` call costs per particle (RK4: four per substep)
    flow_map_substeps: int = 48

    @property
    def flow_map_nfe(self) -> int:
        return 4 * self.flow_map_substeps

    def flow_map(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """X_{t,1}(x): where the probability-flow ODE carries x from level ᾱ to the data (ᾱ = 1).

        The ODE in DDIM's variables (Song et al. 2021, eq. 14), y = x/√ᾱ and σ = √((1−ᾱ)/ᾱ):
        dy/dσ = ε*(√ᾱ·y, ᾱ) with ᾱ = 1/(1+σ²), integrated by classical RK4 from σ down to 0 on a
        grid σ_j = σ·(1 − j/M)^7 (dense near the data, where the mixture's components separate),
        with the exact noise prediction ε* = −√(1−ᾱ)·∇log p_t. Differentiable in ``x``."""

        def velocity(y: torch.Tensor, sigma: float) -> torch.Tensor:
            a = 1.0 / (1.0 + sigma * sigma)
            return -math.sqrt(1 - a) * self.score(math.sqrt(a) * y, a)

        m = self.flow_map_substeps
        start = math.sqrt((1 - alpha_bar) / alpha_bar)
        grid = [start * (1 - j / m) ** 7 for j in range(m + 1)]
        y = x / math.sqrt(alpha_bar)
        for s0, s1 in zip(grid[:-1], grid[1:], strict=True):
            h = s1 - s0
            k1 = velocity(y, s0)
            k2 = velocity(y + 0.5 * h * k1, s0 + 0.5 * h)
            k3 = velocity(y + 0.5 * h * k2, s0 + 0.5 * h)
            k4 = velocity(y + h * k3, s1)
            y = y + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        return y

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return x0

    def to_data_uris(self, images: torch.Tensor) -> list[str | None]:
        return [None] * int(images.shape[0])
