"""Steer or train? Inference-time steering of the base diffusion model against fine-tuned models,
on one quality-against-compute plot, compute counted the same way for both.

A :class:`SteerOrTrainPlan` names an image reward (``digit:3``), the steering samplers run on the
base model (best-of-N, FK steering, SVDD, DTS: any registered image sampler with a size knob), the
diffusion rollout schemes to fine-tune with (from :data:`engines.training.diffusion.SCHEMES`), a
training budget in samples, the sizes of each curve, and ``amortize_images``: how many images a
fine-tuned model is taken to generate in its life, over which its training compute is spread.

:func:`run_steer_or_train` first trains each scheme (:func:`engines.training.diffusion.loop.train_diffusion`,
its run folder under ``runs_folder``; a scheme that ends with no update is an error, and
``curated_retraining`` needs ``train_samples`` of at least one round's pool, round_size·choices), then runs two kinds of sweep cells through
:func:`engines.sweep.run_sweep` on ``prompts`` copies of the reward's task (each copy its own seed,
the unit the bootstrap resamples): the steering samplers on the base model at every size, and
best-of-N at every ``finetuned_sizes`` size on each fine-tuned model (N = 1 is plain sampling from
it), on the chain the scheme trained on and its training run evaluates with (its steps and its
per-step η: :meth:`~engines.training.diffusion.base.SchemeConfig.eta_schedule`, e.g. one SDE step
and ODE elsewhere for ``single_sde``, the noise floor's deterministic last steps). Each cell is one delivered image, judged by the evaluation reward (``evaluate``, default the
steering reward) and by the held-out k-NN check (:class:`engines.models.digits.HeldoutCheck`:
still a digit, read as the target), which tells a rising reward from a hacked one.

Compute per delivered image, the same counters for both kinds (``engines.trace.COST_FIELDS``):

- ``nfe``: the cell's denoiser evaluations, plus for a fine-tuned model its training NFE / ``amortize_images``;
- ``backward_nfe`` and ``backward_passes``: evaluations back-propagated through and reward backward
  passes (steering samplers that use gradients count theirs; training's are amortised alike);
- ``reward_calls``: the cell's reward evaluations plus the training's (every image it scored) / ``amortize_images``;
- ``wall_seconds``: the cell's wall time plus the training's wall seconds / ``amortize_images``.

The sampling-only parts stay in each row (``sampling_nfe``, ``sampling_seconds``) and the training
totals in :attr:`SteerOrTrainResult.training`. Statistics: :func:`engines.sweep_stats.points`
(a 95% percentile bootstrap over the prompt copies).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from engines.models.diffusion import Schedule, image_from_data_uri
from engines.sweep import Arm, SweepPlan, run_sweep
from engines.sweep_stats import points
from engines.task import Task
from engines.trace import Trace

BASE_MODEL = "embedded:digits"
AMORTISED = ("nfe", "backward_nfe", "backward_passes", "reward_calls")
CHECKS = ("heldout_digit", "heldout_target")


@dataclass(frozen=True)
class SteerOrTrainPlan:
    name: str = "steer-or-train"
    reward: str = "digit:3"
    evaluate: str | None = None
    samplers: tuple[str, ...] = ("best_of_n", "fk_steering", "svdd", "dts")
    sizes: tuple[int, ...] = (1, 4, 16)
    schemes: tuple[str, ...] = ("dpok",)
    scheme_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_samples: int = 256
    learning_rate: float = 1e-4
    finetuned_sizes: tuple[int, ...] = (1, 4)
    amortize_images: int = 1000
    prompts: int = 16
    steps: int | None = None  # denoising steps for every sampler and scheme (None: the model's default)
    seed: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        from engines.rewards import check_reward_names
        from engines.samplers import SAMPLERS
        from engines.training.diffusion import SCHEMES

        if not self.samplers and not self.schemes:
            raise ConfigError("choose at least one steering sampler or one training scheme")
        for name in self.samplers:
            cls = SAMPLERS.get(name)
            if "image" not in getattr(cls, "modalities", ()):
                raise ConfigError(f"sampler {name!r} does not steer an image model")
        for name in self.schemes:
            SCHEMES.get(name)
        for label, values in (("sizes", self.sizes), ("finetuned sizes", self.finetuned_sizes)):
            if not values or any(int(v) != v or v < 1 for v in values):
                raise ConfigError(f"{label} must be whole numbers >= 1")
        for label, value in (("train_samples", self.train_samples), ("amortize_images", self.amortize_images),
                             ("prompts", self.prompts)):
            if int(value) < 1:
                raise ConfigError(f"{label} must be at least 1, got {value}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        for spec in (self.reward, self.evaluate):  # names checked before any training (each is built after it)
            if spec is not None:
                check_reward_names(spec)
        for name in self.schemes:
            config = self.scheme_config(name)
            if name == "curated_retraining" and self.train_samples < config.round_size * config.choices:
                raise ConfigError(f"curated_retraining draws round_size·choices = {config.round_size * config.choices} "
                                  f"samples before its first update; train_samples is {self.train_samples}")

    def task(self) -> Task:
        return Task(prompt=f"an image for {self.reward}", name=self.reward, chat=False,
                    meta={"reward": self.reward, "modality": "image"})

    def sampler_params(self) -> dict[str, Any]:
        return {} if self.steps is None else {"steps": self.steps}

    def scheme_settings(self, scheme: str) -> dict[str, Any]:
        """The parameters ``scheme`` trains with: the plan's steps, then the scheme's own."""
        return {**self.sampler_params(), **self.scheme_params.get(scheme, {})}

    def scheme_config(self, scheme: str) -> Any:
        from engines.training.diffusion import build_scheme

        return build_scheme(scheme, self.scheme_settings(scheme)).config

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SteerOrTrainResult:
    plan: SteerOrTrainPlan
    training: dict[str, dict[str, Any]] = field(default_factory=dict)  # scheme -> totals, model spec, evals
    cells: list[dict[str, Any]] = field(default_factory=list)

    def points(self) -> list[dict[str, Any]]:
        """One point per (arm, size): quality with its bootstrap interval, every compute counter's mean,
        and the held-out check's shares with their intervals (``heldout_*``, ``heldout_*_low/high``)."""
        out = points(self.cells)
        for check in CHECKS:
            rows = [{**c, "quality": c.get(check)} for c in self.cells if c.get(check) is not None]
            by_key = {(p["arm"], p["level"]): p for p in points(rows)}
            for p in out:
                q = by_key.get((p["arm"], p["level"]))
                p[check], p[f"{check}_low"], p[f"{check}_high"] = (q["quality"], q["ci_low"], q["ci_high"]) if q else (None,) * 3
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.as_dict(), "training": self.training, "cells": self.cells, "points": self.points()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SteerOrTrainResult:
        plan = dict(data["plan"])
        for key in ("samplers", "sizes", "schemes", "finetuned_sizes"):
            plan[key] = tuple(plan[key])
        return cls(plan=SteerOrTrainPlan(**plan), training=data.get("training", {}), cells=list(data.get("cells", [])))


def heldout_extra(target: int | None):
    """The sweep ``extra`` callback: the held-out k-NN check of a cell's pick (1/0 per check)."""

    def extra(task: Task, trace: Trace) -> dict[str, Any]:
        from engines.models.digits import load_heldout_check

        picks = trace.done.picks if trace.done else []
        node = trace.nodes.get(picks[0]) if picks else None
        if node is None or not node.image:
            return {}
        image = image_from_data_uri(node.image)[None]
        if tuple(image.shape[1:]) != (1, 8, 8):
            return {}
        seen = load_heldout_check().recognise(image)[0]
        row = {"heldout_digit": float(seen is not None)}
        if target is not None:
            row["heldout_target"] = float(seen == target)
        return row

    return extra


def finetuned_params(plan: SteerOrTrainPlan, scheme: str, sched: Schedule) -> dict[str, Any]:
    """best_of_n's parameters for a model fine-tuned with ``scheme``: the chain the scheme trained on and
    its run evaluates with (:func:`engines.training.diffusion.loop.evaluate`), ``sched`` being the
    model's schedule at the scheme's steps: those steps and the scheme's η of every step."""
    config = plan.scheme_config(scheme)
    params = dict(plan.sampler_params())
    if config.steps is not None:
        params["steps"] = config.steps
    eta = config.eta_schedule(sched)
    if isinstance(eta, (int, float)):
        params["eta"] = float(eta)
    else:
        params["eta_steps"] = ",".join(str(float(e)) for e in eta)
    return params


def train_schemes(plan: SteerOrTrainPlan, runs_folder: Path, cancel: threading.Event | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Fine-tune the base model with every scheme under the plan's samples budget; (scheme, totals) as each ends,
    the totals with ``sampling``: the fine-tuned model's best_of_n parameters (:func:`finetuned_params`)."""
    from engines.training.diffusion.loop import DiffusionTrainConfig, train_diffusion
    from engines.training.diffusion.policy import load_diffusion_policy

    for scheme in plan.schemes:  # before any training: a run left by an earlier comparison of this name is not overwritten
        if (Path(runs_folder) / f"{plan.name}-{scheme}").exists():
            raise ConfigError(f"a training run {plan.name}-{scheme!s} is left from an earlier steer-or-train named "
                              f"{plan.name!r} in {runs_folder}; choose another name")
    for scheme in plan.schemes:
        params = plan.scheme_settings(scheme)
        config = DiffusionTrainConfig(name=f"{plan.name}-{scheme}", policy=BASE_MODEL, reward=plan.reward, scheme=scheme,
                                      samples=plan.train_samples, learning_rate=plan.learning_rate, eval_every=0,
                                      eval_size=min(64, plan.prompts), seed=plan.seed)
        policy = load_diffusion_policy(BASE_MODEL)
        sampling = finetuned_params(plan, scheme, policy.schedule(plan.scheme_config(scheme).steps))
        done, evals = None, []
        for event in train_diffusion(config, params, cancel=cancel, policy=policy, runs_folder=runs_folder):
            if event.kind == "eval":
                evals.append({"step": event.step, **event.metrics})
            elif event.kind == "done":
                done = event
        if done.status == "cancelled":
            raise ConfigError(f"cancelled while training {scheme}")
        if done.metrics["updates"] == 0:  # the saved model is the base model: not a fine-tuned one
            raise ConfigError(f"{scheme} made no update within train_samples={plan.train_samples} ({done.message})")
        yield scheme, {"status": done.status, "updates": done.metrics["updates"], "model_spec": done.metrics["model_spec"],
                       "nfe": done.cost["nfe"], "backward_nfe": done.cost["backward_nfe"],
                       "backward_passes": done.cost["backward_passes"], "reward_calls": done.cost["reward_calls"],
                       "seconds": done.cost["wall_seconds"],
                       "samples": done.metrics["samples"], "evals": evals, "sampling": sampling}


def _sweep(plan: SteerOrTrainPlan, arms: tuple[Arm, ...], levels: tuple[int, ...], model: str,
           cancel: threading.Event | None) -> Iterator[dict[str, Any]]:
    reward = _target(plan.reward)
    sweep = SweepPlan(arms=arms, tasks=(plan.task(),) * plan.prompts, levels=tuple(float(v) for v in levels),
                      models=(model,), evaluate=plan.evaluate, seed=plan.seed, set_model=model, set_reward=plan.reward)
    for cell in run_sweep(sweep, workers=plan.workers, cancel=cancel, extra=heldout_extra(reward)):
        row = cell.row()
        row["sampling_nfe"], row["sampling_seconds"] = row.get("nfe", 0), row.get("wall_seconds", 0.0)
        yield row


def _target(reward: str) -> int | None:
    name, _, arg = reward.partition(":")
    return int(arg) if name == "digit" and arg.isdigit() else None


def run_steer_or_train(plan: SteerOrTrainPlan, runs_folder: Path, *, cancel: threading.Event | None = None,
                       progress: Any = None) -> SteerOrTrainResult:
    """Train, then sweep; see the module docstring. ``progress(message)`` is told each stage's end."""
    say = progress or (lambda message: None)
    result = SteerOrTrainResult(plan=plan)
    for scheme, totals in train_schemes(plan, Path(runs_folder), cancel):
        result.training[scheme] = totals
        say(f"trained {scheme}: {totals['updates']} updates, {totals['nfe']} NFE, {totals['seconds']:.1f} s")
    params = plan.sampler_params()
    if plan.samplers:
        arms = tuple(Arm(label=name, sampler=name, params=params) for name in plan.samplers)
        result.cells += list(_sweep(plan, arms, plan.sizes, BASE_MODEL, cancel))
        say(f"steered the base model: {len(result.cells)} cells")
    for scheme, totals in result.training.items():
        arm = Arm(label=f"{scheme} + best_of_n", sampler="best_of_n", params=totals["sampling"])
        for row in _sweep(plan, (arm,), plan.finetuned_sizes, totals["model_spec"], cancel):
            for counter in AMORTISED:
                row[counter] = row.get(counter, 0) + totals[counter] / plan.amortize_images
            row["wall_seconds"] = row.get("wall_seconds", 0.0) + totals["seconds"] / plan.amortize_images
            row["trained_with"] = scheme
            result.cells.append(row)
        say(f"sampled the {scheme} model")
    return result
