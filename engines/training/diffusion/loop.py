"""A diffusion training run: a generator of events, like the text lab's (engines.training.loop).

``train_diffusion(config, scheme_params)`` yields, per update: the scheme's events (the
samples as ``node``s with their images, their ``score``s, one ``group`` with rewards,
advantages and the stochastic steps), an ``update`` event (loss, KL where the scheme has
one, gradient norm, reward mean, spend so far) and, every ``eval_every`` updates, an
``eval`` event: the mean reward of ``eval_size`` samples drawn with a fixed generator and,
for 8x8 digits, the held-out k-NN check (:class:`engines.models.digits.HeldoutCheck`: the
share of samples that are still digits, and the share read as the reward's digit) that
exposes reward hacking; then one ``done`` event whose metrics name the trained model's
spec (``diffusers:<run folder>/model``).

The run folder, checkpoints and resume are the text lab's
(:class:`~engines.training.run_folder.RunFolder`); the budgets are diffusion's counters
(:class:`~engines.training.diffusion.base.DiffusionAllowance`: samples, nfe, backward_nfe,
backward_passes, seconds; reward_calls counted, not capped) and updates. Determinism: one ``torch.Generator`` seeded from
``config.seed`` draws everything (evaluation has its own fixed one); nothing is seeded
globally. A cancel ``threading.Event`` stops the run at the next network evaluation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engines.config import Config, param
from engines.errors import BudgetExhausted, Cancelled, ConfigError
from engines.task import Task
from engines.trace import DoneEvent, EvalEvent, Event, UpdateEvent, event_from_dict
from engines.training.diffusion import SCHEMES, build_scheme
from engines.training.diffusion.base import (
    DiffusionAllowance,
    DiffusionPolicy,
    DiffusionScheme,
    SchemeContext,
)
from engines.training.loop import NAME_CHARS
from engines.training.run_folder import RunFolder, recorded

EVAL_SEED_OFFSET = 1_000_003
BUDGET_FIELDS = ("samples", "nfe", "backward_nfe", "backward_passes", "seconds", "max_updates")


class DiffusionTrainConfig(Config):
    """What a diffusion training run needs besides the scheme's own parameters."""

    label = "Diffusion training run"
    size_field = None

    name: str = param("run", label="Run name", help="The run folder under the data folder's training/.")
    policy: str = param("embedded:digits", label="Model", help="embedded:digits or diffusers:FOLDER")
    reward: str = param("digit:3", label="Reward")
    scheme: str = param("dpok", label="Rollout scheme")
    learning_rate: float = param(1e-4, label="Learning rate", min=0.0, max=1.0)
    max_grad_norm: float = param(1.0, label="Max gradient norm", min=0.0, max=1e6, advanced=True)
    samples: int | None = param(None, label="Budget: samples", min=1)
    nfe: int | None = param(None, label="Budget: network evaluations", min=1)
    backward_nfe: int | None = param(None, label="Budget: evaluations back-propagated", min=1)
    backward_passes: int | None = param(None, label="Budget: reward backward passes", min=1)
    seconds: float | None = param(None, label="Budget: wall seconds", min=0.001)
    max_updates: int | None = param(None, label="Max updates", min=1)
    eval_every: int = param(5, label="Evaluate every (updates)", min=0, help="0: evaluate only before and after.")
    eval_size: int = param(64, label="Evaluation samples", min=1, max=4096)
    checkpoint_every: int = param(1, label="Checkpoint every (updates)", min=1)
    seed: int = param(0, label="Seed", min=0)

    def validate(self) -> None:
        if not self.name or not set(self.name) <= NAME_CHARS:
            raise ConfigError(f"run name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if self.scheme not in SCHEMES:
            SCHEMES.get(self.scheme)  # the one-line unknown-name error
        if all(getattr(self, f) is None for f in BUDGET_FIELDS):
            raise ConfigError("give a budget: samples, nfe, backward_nfe, backward_passes, seconds or max_updates")


def evaluate(policy: DiffusionPolicy, scheme: DiffusionScheme, reward: Any, n: int, seed: int) -> dict[str, Any]:
    """Mean reward of ``n`` fresh samples (a fixed generator, the scheme's chain) and, for 8x8
    digits, the held-out check. Not metered: evaluation is not training compute."""
    rng = torch.Generator().manual_seed(seed)
    sched = policy.schedule(scheme.config.steps)
    eta = scheme.config.eta_schedule(sched)
    with torch.no_grad():
        x = policy.initial_noise(n, rng)
        for i in range(len(sched)):
            x = policy.step(x, i, sched, policy.predict(x, i, sched), eta=eta, rng=rng).sample
        images = policy.decode(x)
        values = reward.score(Task(prompt=""), images)
    metrics: dict[str, Any] = {"n": n, "reward_mean": float(sum(values) / n)}
    if tuple(images.shape[1:]) == (1, 8, 8):
        from engines.models.digits import load_heldout_check

        seen = load_heldout_check().recognise(images)
        metrics["heldout_digit"] = sum(s is not None for s in seen) / n
        target = getattr(reward, "target", None)
        if target is not None:
            metrics["heldout_target"] = sum(s == target for s in seen) / n
    return metrics


def train_diffusion(
    config: DiffusionTrainConfig,
    scheme_params: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    cancel: threading.Event | None = None,
    policy: DiffusionPolicy | None = None,
    reward: Any = None,
    runs_folder: Path | None = None,
    run_dir: Path | None = None,
) -> Iterator[Event]:
    """Run (or resume) a diffusion training run; see the module docstring. Bad input raises before any event."""
    scheme = build_scheme(config.scheme, scheme_params)
    folder = RunFolder.locate(config.name, runs_folder=runs_folder, run_dir=run_dir, resume=resume)
    run_dir = folder.run_dir
    if policy is None:
        from engines.training.diffusion.policy import load_diffusion_policy

        policy = load_diffusion_policy(config.policy)
    if reward is None:
        from engines.rewards import build_reward

        reward = build_reward(config.reward)
    scheme.check_inputs(policy, reward)
    reference = policy.frozen_copy() if scheme.needs_reference else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    rng = torch.Generator().manual_seed(config.seed)
    settings = {"config": config.as_dict(), "scheme_params": scheme.config.as_dict()}
    state, stored = folder.open(resume=resume, settings=settings)
    step, spent = 0, {}
    if state is not None:
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        step, spent = state["step"], state["spent"]
        if state.get("scheme") is not None:  # e.g. dpok's batch with inner epochs left
            scheme.restore_state(state["scheme"])
    budget = DiffusionAllowance(config.samples, config.nfe, config.backward_nfe, config.backward_passes, config.seconds,
                                cancel=cancel, spent=spent)
    sched = policy.schedule(scheme.config.steps)
    per_sample = scheme.plan(sched)
    pending: list[Event] = []

    def emit(event: Event) -> Event:
        pending.append(event)
        return event

    def eval_event(at: int) -> EvalEvent:
        metrics = evaluate(policy, scheme, reward, config.eval_size, config.seed + EVAL_SEED_OFFSET)
        return EvalEvent(step=at, metrics={**metrics, **budget.as_dict()})

    def checkpoint() -> None:
        scheme_state = scheme.checkpoint_state() if hasattr(scheme, "checkpoint_state") else None
        folder.checkpoint({"policy": policy.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.get_state(),
                           "step": step, "spent": budget.as_dict(), "scheme": scheme_state}, pending)
        pending.clear()

    for data in stored:
        yield event_from_dict(data)
    if not resume:
        yield emit(eval_event(0))
    evals = [d["step"] for d in stored if d.get("kind") == "eval"]
    status, message, last_eval = "ok", "", evals[-1] if evals else 0
    try:
        while config.max_updates is None or step < config.max_updates:
            n = budget.fit_samples(scheme.config.batch_size, per_sample)
            minimum = 2 if getattr(scheme.config, "baseline", "none") != "none" else 1
            replaying = getattr(scheme, "pending", None) is not None  # a later inner epoch draws no samples
            if n < minimum and not replaying:
                raise BudgetExhausted("budget exhausted: no room for another batch")
            budget.check()
            ctx = SchemeContext(policy=policy, reward=reward, budget=budget, rng=rng, reference=reference, step=step)
            loss, metrics = yield from recorded(scheme.loss(ctx, n), emit)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for p in policy.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf"))
            optimizer.step()
            step += 1
            metrics.update(grad_norm=float(norm), batch_samples=n, update_seconds=round(time.perf_counter() - t0, 3),
                           **{f"spent_{k}": v for k, v in budget.as_dict().items()})
            yield emit(UpdateEvent(step=step, metrics=metrics))
            if config.eval_every and step % config.eval_every == 0:
                last_eval = step
                yield emit(eval_event(step))
            if step % config.checkpoint_every == 0:
                checkpoint()
    except BudgetExhausted as exc:
        status, message = "budget", str(exc)
    except Cancelled as exc:
        status, message = "cancelled", str(exc)
    if status != "cancelled" and last_eval != step:
        yield emit(eval_event(step))
    if status != "cancelled":  # a cancelled run resumes from its last checkpoint and redraws what followed
        checkpoint()
    metrics: dict[str, Any] = {"updates": step, **budget.as_dict(), "run_dir": str(run_dir)}
    if hasattr(policy, "save"):
        policy.save(run_dir / "model")
        metrics["model_spec"] = f"diffusers:{run_dir / 'model'}"
    yield DoneEvent(picks=[], candidates=[], status=status, message=message, metrics=metrics,
                    cost={"nfe": budget.spent["nfe"], "backward_nfe": budget.spent["backward_nfe"],
                          "backward_passes": budget.spent["backward_passes"], "reward_calls": budget.spent["reward_calls"],
                          "wall_seconds": budget.spent_seconds})

