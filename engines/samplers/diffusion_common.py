"""What the diffusion samplers share (not a sampler itself).

- :class:`DiffusionConfig`: the chain's fields (``steps``, ``eta``);
- :class:`DiffusionSampler`: ``modalities = ("image",)`` and the input checks
  (the reward must read the model's images; gradient methods need a
  differentiable reward);
- trace helpers: particle states become :class:`NodeEvent`s whose ``image`` is
  a PNG data URI of the state's predicted x̂0 (a preview) or, for final nodes,
  of the decoded sample; ``depth`` is the number of denoising steps taken
  (0: the initial noise x_T, K: the final sample); ``meta`` carries the
  timestep and the particle index;
- metered work the run context does not cover: :func:`decode` (latent
  decodes, counted as ``decodes`` when the model has a decoder network) and
  :func:`reward_gradient` (a reward's gradient with respect to a batch of
  clean samples: one ``backward_passes`` per particle);
- :func:`fit_particles`: how many particles a plan can afford within the
  run's nfe, reward-call, decode and backward budgets, so that samplers
  shrink a plan up front instead of stopping half way down the chain;
- :func:`draw_images`: N independent chains, scored (best-of-N's image branch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engines.config import Config, param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.diffusion import Eta
from engines.samplers.base import RunContext, Sampler
from engines.task import Task
from engines.trace import Event, NodeEvent, PruneEvent, ScoreEvent


class DiffusionConfig(Config):
    """Fields every diffusion sampler carries."""

    steps: int | None = param(
        None, label="Denoising steps", min=1, max=1000, help="Steps of the reverse chain; empty means the model's default."
    )
    eta: float = param(
        1.0,
        label="η (step noise)",
        min=0.0,
        max=1.0,
        step=0.05,
        help="1: stochastic DDPM steps; 0: deterministic DDIM steps.",
        advanced=True,
    )


def check_diffusion_inputs(model: Any, reward: Any, *, differentiable: bool = False) -> None:
    """Raise a one-line ConfigError when the reward cannot read the model's samples."""
    for name in ("schedule", "predict", "step", "decode"):
        if not callable(getattr(model, name, None)):
            raise ConfigError(f"model {getattr(model, 'name', model)!r} does not speak the diffusion protocol")
    check = getattr(reward, "check_image_shape", None)
    if check is not None and len(model.image_shape) == 3:
        check(model.image_shape)
    if differentiable and not getattr(reward, "differentiable", False):
        raise ConfigError(f"this sampler back-propagates through the reward; {reward.name!r} is not differentiable")


class DiffusionSampler(Sampler):
    """Base of the samplers that walk a diffusion model's reverse chain."""

    modalities = ("image",)

    def needs_gradient(self) -> bool:
        """Whether this configuration back-propagates through the reward."""
        return False

    def check_inputs(self, task: Task, model: Any, reward: Any) -> None:
        super().check_inputs(task, model, reward)
        check_diffusion_inputs(model, reward, differentiable=self.needs_gradient())


def steps_for(ctx: RunContext, config: Any) -> Any:
    """The model's schedule for the config's number of steps."""
    return ctx.model.schedule(config.steps)


def fit_particles(
    ctx: RunContext,
    wanted: int,
    nfe_each: int,
    reward_calls_each: int,
    *,
    decodes_each: int = 0,
    backward_each: int = 0,
    backward_nfe_each: int = 0,
) -> int:
    """How many of ``wanted`` particles fit the budgets, each particle costing ``nfe_each``
    network evaluations (times the model's evaluations per prediction), ``reward_calls_each``
    reward calls, ``decodes_each`` decodes (times the model's decoder passes per image),
    ``backward_each`` reward backward passes and ``backward_nfe_each`` denoiser evaluations
    back-propagated through."""
    fit = wanted
    unit = ctx.model.nfe_for(ctx.task)
    plan = (
        ("nfe", nfe_each * unit),
        ("reward_calls", reward_calls_each),
        ("decodes", decodes_each * decoder_passes(ctx.model)),
        ("backward_passes", backward_each),
        ("backward_nfe", backward_nfe_each * unit),
    )
    for counter, each in plan:
        left = ctx.remaining(counter)
        if each > 0 and left != math.inf:
            fit = min(fit, int(left // each))
    return max(fit, 0)


def decoder_passes(model: Any) -> int:
    """Decoder network passes per decoded image (0 for pixel-space models, whose decode is a clamp)."""
    return int(getattr(model, "decoder_passes", 0))


def _spend(ctx: RunContext, counter: str, amount: int) -> None:
    if amount <= 0:
        return
    ctx.check(counter)
    if amount > ctx.remaining(counter):
        raise BudgetExhausted(f"budget exhausted: {counter}")
    ctx.cost.add(**{counter: amount})


def decode(ctx: RunContext, x0: torch.Tensor) -> torch.Tensor:
    """The model's images of ``x0``, metered as ``decodes`` (refused past the decode budget);
    keeps the autograd graph when the caller has gradients enabled."""
    _spend(ctx, "decodes", x0.shape[0] * decoder_passes(ctx.model))
    return ctx.model.decode(x0)


def reward_gradient(ctx: RunContext, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(decode(x0)), ∇_{x0} r) for a batch: one decode, one reward call and one reward
    backward pass per particle. The gradient is taken with respect to ``x0`` itself (the
    denoiser is not differentiated through)."""
    ctx.check("backward_passes")
    if x0.shape[0] > ctx.remaining("backward_passes"):
        raise BudgetExhausted("budget exhausted: backward_passes")
    x0 = x0.detach().requires_grad_(True)
    with torch.enable_grad():
        values = ctx.score_tensor(decode(ctx, x0))
        (grad,) = torch.autograd.grad(values.sum(), x0)
    ctx.cost.add(backward_passes=x0.shape[0])
    return values.detach(), grad


def count_backward(ctx: RunContext, particles: int, denoiser_evaluations: int = 0) -> None:
    """Meter (and refuse past the budget) a backward pass through the reward for ``particles``
    particles and through ``denoiser_evaluations`` network evaluations per particle."""
    unit = ctx.model.nfe_for(ctx.task)
    if particles > ctx.remaining("backward_passes"):
        raise BudgetExhausted("budget exhausted: backward_passes")
    if particles * denoiser_evaluations * unit > ctx.remaining("backward_nfe"):
        raise BudgetExhausted("budget exhausted: backward_nfe")
    ctx.cost.add(backward_passes=particles, backward_nfe=particles * denoiser_evaluations * unit)


def preview_uris(ctx: RunContext, x0: torch.Tensor) -> list[str | None]:
    """Thumbnails of intermediate x̂0 (free for models with a cheap preview; metered as decodes otherwise)."""
    passes = getattr(ctx.model, "preview_decoder_passes", decoder_passes(ctx.model))
    _spend(ctx, "decodes", x0.shape[0] * int(passes))
    with torch.no_grad():
        return ctx.model.to_data_uris(ctx.model.preview(x0))


def image_uris(ctx: RunContext, images: torch.Tensor) -> list[str | None]:
    return ctx.model.to_data_uris(images)


def state_nodes(
    ctx: RunContext,
    *,
    depth: int,
    parents: Sequence[str | None],
    images: Sequence[str | None],
    timestep: int | None,
    particles: Sequence[int] | None = None,
    final: bool | Sequence[bool] = False,
    prefix: str = "x",
    meta: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
) -> tuple[list[str], list[NodeEvent]]:
    """One NodeEvent per particle state (see the module docstring for the fields);
    ``meta`` is added to every node's meta (one dict for all, or one per node)."""
    ids = [ctx.new_id(prefix) for _ in parents]
    finals = [final] * len(ids) if isinstance(final, bool) else list(final)
    metas = [meta or {}] * len(ids) if meta is None or isinstance(meta, dict) else list(meta)
    events = []
    for i, (node_id, parent, image) in enumerate(zip(ids, parents, images, strict=True)):
        node_meta = {"t": timestep, "particle": particles[i] if particles is not None else i}
        node_meta.update(metas[i])
        events.append(
            NodeEvent(id=node_id, parent=parent, depth=depth, image=image, final=finals[i], meta=node_meta)
        )
    return ids, events


def scores(node_ids: Sequence[str], values: Sequence[float], reward: str, partial: bool) -> list[ScoreEvent]:
    return [
        ScoreEvent(node=i, reward=reward, value=float(v), partial=partial) for i, v in zip(node_ids, values, strict=True)
    ]


def prunes(node_ids: Sequence[str], reason: str) -> list[PruneEvent]:
    return [PruneEvent(node=i, reason=reason) for i in node_ids]


def reward_name(ctx: RunContext) -> str:
    return str(getattr(ctx.reward, "name", "reward"))


def take(pred: Any, index: torch.Tensor) -> Any:
    """The rows ``index`` of a Prediction (for resampling and selection)."""
    return type(pred)(eps=pred.eps[index], x0=pred.x0[index])


def cat_predictions(preds: Sequence[Any]) -> Any:
    return type(preds[0])(eps=torch.cat([p.eps for p in preds]), x0=torch.cat([p.x0 for p in preds]))


@dataclass
class ImageCandidate:
    """A finished diffusion sample: its final node and reward (what flat samplers rank)."""

    id: str
    reward: float | None = None


def draw_images(
    ctx: RunContext, count: int, steps: int | None, eta: Eta, out: list[ImageCandidate]
) -> Iterator[Event]:
    """Run ``count`` independent chains (as many as the budget allows, else BudgetExhausted):
    yield every state as a node, then the final images, their scores and a cost snapshot;
    append the finished samples to ``out``. The image counterpart of the text samplers'
    ``draw_scored``."""
    model = ctx.model
    sched = model.schedule(steps)
    total = len(sched)
    n = fit_particles(ctx, count, nfe_each=total, reward_calls_each=1, decodes_each=1)
    if n < 1:
        raise BudgetExhausted("budget exhausted: no room for another chain")
    offset = len(out)
    particles = list(range(offset, offset + n))
    x = model.initial_noise(n, ctx.rng)
    parents: list[str | None] = [None] * n
    for i in range(total):
        pred = ctx.denoise(x, i, sched)
        parents, events = state_nodes(
            ctx,
            depth=i,
            parents=parents,
            images=preview_uris(ctx, pred.x0),
            timestep=sched.timesteps[i],
            particles=particles,
        )
        yield from events
        x = model.step(x, i, sched, pred, eta=eta, rng=ctx.rng).sample
    images = decode(ctx, x)
    ids, events = state_nodes(
        ctx, depth=total, parents=parents, images=image_uris(ctx, images), timestep=None, particles=particles, final=True
    )
    yield from events
    values = ctx.score(images)
    yield from scores(ids, values, reward_name(ctx), partial=False)
    out.extend(ImageCandidate(node_id, value) for node_id, value in zip(ids, values, strict=True))
    yield ctx.cost_event()
