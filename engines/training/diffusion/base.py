"""The diffusion rollout-scheme protocol: what every diffusion fine-tuning scheme shares.

A scheme subclasses :class:`DiffusionScheme`, declares a frozen ``Config`` (a
:class:`SchemeConfig` with UI metadata and its paper), says per sample what one update
costs (:meth:`DiffusionScheme.plan`) and implements :meth:`DiffusionScheme.loss`::

    loss, metrics = yield from scheme.loss(ctx, n)

``loss`` is a generator: it draws ``n`` chains from the policy through the step protocol
(:class:`~engines.models.diffusion.DiffusionModel`: ``predict`` and ``step``), yields the
trace events of the batch (a root node, one final node per sample with its image and
``score``, one ``group`` event with rewards and advantages and, in its meta, which steps
were stochastic) and *returns* the loss whose gradient is the scheme's estimate, with the
autograd graph into the policy's weights. The loop (:mod:`engines.training.diffusion.loop`)
does the backward pass and the optimiser step.

The step noise is a per-step schedule (``eta``, or ``eta_steps`` with one η per step): a step
with σ > 0 is stochastic and has a Gaussian transition density (:meth:`Transition.log_prob`,
from the model's own step code); a step with σ = 0 is deterministic and has none.

Every network evaluation, reward call, reward backward pass and denoiser evaluation back-propagated
through is metered by :class:`DiffusionAllowance` *before* it is done, so a cap is never
passed; the scheme's :meth:`~DiffusionScheme.plan` lets the loop shrink a batch to what fits.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from engines.config import Config, param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.diffusion import Eta, Prediction, Schedule, parse_etas
from engines.task import Task
from engines.trace import Event, GroupEvent, NodeEvent, ScoreEvent
from engines.training.base import Allowance
from engines.training.diffusion.decaying_noise import ETA_SHAPES, decaying_eta

# ---------------------------------------------------------------------------
# What a trainable diffusion policy offers


class DiffusionPolicy(Protocol):
    """A :class:`~engines.models.diffusion.DiffusionModel` whose network trains.

    ``predict`` under ``torch.enable_grad()`` keeps the graph into :meth:`parameters`;
    :meth:`frozen_copy` is the KL reference (the pretrained model)."""

    name: str
    sample_shape: tuple[int, ...]
    image_shape: tuple[int, ...]

    def schedule(self, steps: int | None = None) -> Schedule: ...
    def initial_noise(self, n: int, rng: torch.Generator | None = None) -> torch.Tensor: ...
    def predict(self, x: torch.Tensor, step: int, schedule: Schedule, task: Task | None = None, *, usage: Any = None) -> Prediction: ...
    def step(self, x: torch.Tensor, step: int, schedule: Schedule, pred: Prediction, **kwargs: Any) -> Any: ...
    def decode(self, x0: torch.Tensor) -> torch.Tensor: ...
    def to_data_uris(self, images: torch.Tensor) -> list[str | None]: ...
    def parameters(self) -> Any: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...
    def frozen_copy(self) -> DiffusionPolicy: ...


# ---------------------------------------------------------------------------
# Budget


class DiffusionAllowance(Allowance):
    """The caps of a diffusion training run: samples (final images drawn), network
    evaluations (``nfe``), denoiser evaluations back-propagated through (``backward_nfe``),
    reward backward passes (``backward_passes``, one per image differentiated) and wall
    seconds, with the cancel flag. Work is refused before it is done (:meth:`spend`);
    wall seconds are checked between pieces of work, so they may be passed by one.
    ``reward_calls`` (one per image scored, with or without its graph) is counted, not capped."""

    COUNTERS = ("samples", "nfe", "backward_nfe", "backward_passes", "reward_calls")

    def __init__(
        self,
        samples: int | None = None,
        nfe: int | None = None,
        backward_nfe: int | None = None,
        backward_passes: int | None = None,
        seconds: float | None = None,
        *,
        cancel: threading.Event | None = None,
        spent: dict[str, float] | None = None,
    ) -> None:
        spent = spent or {}
        super().__init__(samples, None, seconds, cancel=cancel, spent_samples=int(spent.get("samples", 0)),
                         spent_seconds=float(spent.get("seconds", 0.0)))
        self.caps = {"samples": samples, "nfe": nfe, "backward_nfe": backward_nfe, "backward_passes": backward_passes}
        for name, cap in self.caps.items():
            if cap is not None and cap <= 0:
                raise ConfigError(f"budget {name} must be positive, got {cap!r}")
        self.caps["reward_calls"] = None
        self.spent = {name: int(spent.get(name, 0)) for name in self.COUNTERS}

    def left(self, counter: str) -> float:
        cap = self.caps[counter]
        return math.inf if cap is None else cap - self.spent[counter]

    def fit_samples(self, n: int, per_sample: dict[str, int]) -> int:
        """How many of ``n`` samples fit every cap, each costing ``per_sample[counter]``."""
        fit = min(n, self.left("samples"))
        for counter, each in per_sample.items():
            if each > 0 and self.left(counter) != math.inf:
                fit = min(fit, int(self.left(counter) // each))
        return max(0, int(fit))

    def spend(self, **amounts: int) -> None:
        """Count work about to be done; raise Cancelled / BudgetExhausted (counting nothing) when it must not be."""
        self.check()
        for counter, amount in amounts.items():
            if amount > self.left(counter):
                raise BudgetExhausted(f"budget exhausted: {counter}")
        for counter, amount in amounts.items():
            self.spent[counter] += amount
        self.spent_samples = self.spent["samples"]

    def as_dict(self) -> dict[str, float]:
        return {**self.spent, "seconds": round(self.spent_seconds, 3)}


# ---------------------------------------------------------------------------
# The context a scheme works through


@dataclass
class SchemeContext:
    """One update's parts: the policy, its frozen reference, the reward, the budget, the rng."""

    policy: DiffusionPolicy
    reward: Any
    budget: DiffusionAllowance
    rng: torch.Generator
    reference: DiffusionPolicy | None = None
    task: Task = field(default_factory=lambda: Task(prompt=""))
    step: int = 0  # the update index (node ids)

    def denoise(self, model: DiffusionPolicy, x: torch.Tensor, i: int, sched: Schedule, *, grad: bool = False) -> Prediction:
        """One network evaluation per particle at inference step ``i``, metered as ``nfe``
        (and as ``backward_nfe`` when ``grad``: the caller will back-propagate through it)."""
        self.budget.spend(nfe=x.shape[0], backward_nfe=x.shape[0] if grad else 0)
        with torch.set_grad_enabled(grad):
            return model.predict(x, i, sched, self.task)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """The rewards of final images, no gradient: one reward call per image, metered."""
        self.budget.spend(reward_calls=images.shape[0])
        with torch.no_grad():
            return torch.as_tensor(self.reward.score(self.task, images), dtype=torch.float64)

    def score_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The rewards with their graph (a differentiable reward): one reward call and one backward pass per image, metered."""
        self.budget.spend(reward_calls=images.shape[0], backward_passes=images.shape[0])
        return self.reward.score_tensor(self.task, images)


# ---------------------------------------------------------------------------
# Configs and schemes


class SchemeConfig(Config):
    """Fields every diffusion rollout scheme carries."""

    size_field: ClassVar[str | None] = "batch_size"

    batch_size: int = param(16, label="Samples per update", min=1, max=4096, help="Chains drawn for one gradient step.")
    steps: int | None = param(
        None, label="Denoising steps", min=1, max=1000, help="Steps of the reverse chain; empty means the model's default."
    )
    eta: float = param(1.0, label="η (step noise)", min=0.0, max=1.0, step=0.05, help="1: stochastic DDPM steps; 0: deterministic DDIM steps.")
    eta_steps: str = param(
        "",
        label="η per step",
        help="Comma-separated η, one per step, noisiest first (e.g. 0,0,1,0: one stochastic step); overrides η.",
        advanced=True,
    )
    eta_shape: str = param(
        "constant",
        label="η over the chain",
        choices=ETA_SHAPES,
        help="constant: η on every step; decaying: η·(1 − i/K)^p, noise concentrated early (HiCoGen).",
        advanced=True,
    )
    eta_decay_power: float = param(
        2.0, label="η decay power (p)", min=0.0, max=100.0, help="Exponent of the decaying η schedule.", advanced=True
    )
    noise_floor: float = param(
        0.01,
        label="Noise floor",
        min=0.0,
        max=1.0,
        help="Steps whose σ at η would be below this run deterministically (η = 0): a step with tiny σ "
        "has log-prob gradients and KL of order 1/σ² that swamp the others (not applied to eta_steps).",
        advanced=True,
    )
    reward_weight: float = param(1.0, label="Reward weight (α)", min=0.0, max=1e6, help="Multiplies the reward in the objective.")

    def validate(self) -> None:
        if self.eta_steps.strip():
            parse_etas(self.eta_steps)

    def eta_schedule(self, sched: Schedule) -> Eta:
        """η of every step: ``eta_steps`` as given (its length checked against the schedule), or
        ``eta`` (decaying along the chain when ``eta_shape`` says so) on every step whose σ reaches
        ``noise_floor`` and 0 on the others."""
        if not self.eta_steps.strip():
            etas = decaying_eta(self.eta, len(sched), self.eta_decay_power) if self.eta_shape == "decaying" else None
            if self.noise_floor <= 0:
                return etas or self.eta
            etas = etas or (self.eta,) * len(sched)
            return tuple(e if sched.std(i, e) >= self.noise_floor else 0.0 for i, e in enumerate(etas))
        etas = parse_etas(self.eta_steps)
        if len(etas) != len(sched):
            raise ConfigError(f"eta_steps has {len(etas)} values for a {len(sched)}-step chain")
        return etas



class DiffusionScheme(ABC):
    """A diffusion fine-tuning scheme: which chains to draw and where the gradient comes from."""

    Config: ClassVar[type[SchemeConfig]] = SchemeConfig
    name: ClassVar[str] = "scheme"
    #: whether the loop must keep a frozen copy of the pretrained model (the KL reference)
    needs_reference: ClassVar[bool] = False
    #: whether the reward must be differentiable
    needs_gradient: ClassVar[bool] = False

    def __init__(self, config: SchemeConfig | None = None) -> None:
        config = config or self.Config()
        if not isinstance(config, self.Config):
            raise ConfigError(f"{self.name} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    def check_inputs(self, policy: DiffusionPolicy, reward: Any) -> None:
        """One-line errors when the reward cannot read the policy's samples (before any work)."""
        if getattr(reward, "modality", "image") != "image":
            raise ConfigError(f"reward {getattr(reward, 'name', reward)!r} scores {reward.modality}, but {policy.name} makes images")
        check = getattr(reward, "check_image_shape", None)
        if check is not None:
            check(tuple(policy.image_shape))
        if not callable(getattr(reward, "score", None)):
            raise ConfigError(f"{getattr(reward, 'name', reward)!r} is not an outcome reward")
        if self.needs_gradient and not getattr(reward, "differentiable", False):
            raise ConfigError(f"{self.name} back-propagates through the reward; {reward.name!r} is not differentiable")
        sched = policy.schedule(self.config.steps)
        self.config.eta_schedule(sched)  # eta_steps of the wrong length: one line now

    @abstractmethod
    def plan(self, sched: Schedule) -> dict[str, int]:
        """Per-sample cost of one update: ``nfe``, ``backward_nfe``, ``backward_passes``."""

    @abstractmethod
    def loss(self, ctx: SchemeContext, n: int) -> Generator[Event, None, tuple[torch.Tensor, dict[str, Any]]]:
        """Draw ``n`` chains, yield their events, return (loss with graph, metrics)."""


# ---------------------------------------------------------------------------
# Trace helpers and baselines


def batch_events(
    ctx: SchemeContext,
    images: torch.Tensor,
    rewards: Sequence[float],
    advantages: Sequence[float],
    *,
    stochastic: Sequence[bool],
    meta: dict[str, Any] | None = None,
) -> list[Event]:
    """The trace of one update's samples: a root, a final node with its image and score per
    sample, and one group event (rewards, advantages; the chain's length and its stochastic
    steps in its meta, so a view can mark which steps drew noise)."""
    root = f"u{ctx.step}"
    reward_name = str(getattr(ctx.reward, "name", "reward"))
    uris = ctx.policy.to_data_uris(images.detach())
    events: list[Event] = [NodeEvent(id=root, parent=None, meta={"update": ctx.step})]
    ids = []
    for i, (uri, value) in enumerate(zip(uris, rewards, strict=True)):
        node_id = f"{root}.s{i}"
        ids.append(node_id)
        events.append(NodeEvent(id=node_id, parent=root, depth=1, image=uri, final=True, meta={"sample": i}))
        events.append(ScoreEvent(node=node_id, reward=reward_name, value=float(value)))
    events.append(
        GroupEvent(
            step=ctx.step, prompt=root, nodes=ids, rewards=[float(r) for r in rewards],
            advantages=[float(a) for a in advantages],
            meta={"chain_steps": len(stochastic), "stochastic_steps": [i for i, s in enumerate(stochastic) if s],
                  **(meta or {})},
        )
    )
    return events


BASELINES = ("none", "loo", "mean_std")


def baseline_advantages(returns: torch.Tensor, baseline: str) -> torch.Tensor:
    """Advantages from per-sample returns ([N] or [N, S], one column per stochastic step):

    - ``none``: the return itself (REINFORCE);
    - ``loo``: minus the mean of the other samples' returns (RLOO: unbiased, N >= 2);
    - ``mean_std``: minus the batch mean, over the batch std (DDPO's normalisation: biased by
      O(1/N) and rescales the reward, so a KL coefficient's meaning changes with it).
    """
    n = returns.shape[0]
    if baseline == "none":
        return returns
    if n < 2:
        raise ConfigError(f"baseline {baseline!r} needs at least 2 samples per update")
    if baseline == "loo":
        return returns - (returns.sum(0, keepdim=True) - returns) / (n - 1)
    if baseline == "mean_std":
        return (returns - returns.mean(0, keepdim=True)) / (returns.std(0, keepdim=True) + 1e-6)
    raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
