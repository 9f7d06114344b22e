"""A training run: a generator of events, like a sampler run.

``train(config, strategy_params)`` yields, per update step: the strategy's rollout events
(sample ``node``s, their ``score``s, a ``group`` per prompt, kept or dropped with the
rule), an ``update`` event (loss, KL, entropy, gradient norm, kept groups, samples /
tokens / seconds spent) and, every ``eval_every`` updates, an ``eval`` event (held-out
accuracy greedy and at T=1, pass@k with ``eval_samples`` > 1, measured with the *exact* reward
whatever the control);
then one ``done`` event whose metrics name the trained policy's model spec
(``hf:<run folder>/policy``), so best-of-N on it is one command.

Determinism: every draw comes from one ``torch.Generator`` seeded from ``config.seed``
(evaluation has its own, fixed, generator); nothing is seeded globally. Checkpoints:
the run folder (``<runs folder>/<name>``; the app hands engines the folder, ``app.workflows.store.training_home()``;
:class:`~engines.training.run_folder.RunFolder`) holds ``state.pt`` (weights, optimiser,
generator state, spend) and ``events.jsonl`` (the events up to that checkpoint), written
after every ``checkpoint_every`` updates; ``resume=True``
replays the stored events and continues from the checkpoint, exactly as the
uninterrupted run would. Budgets: samples, tokens and wall seconds (``Allowance``); a
cancel ``threading.Event`` stops the run at the next draw.
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
from engines.sweep_stats import pass_at_k
from engines.task import Task
from engines.trace import DoneEvent, EvalEvent, Event, UpdateEvent, event_from_dict
from engines.training import STRATEGIES, build_strategy
from engines.training.base import Allowance, Policy, PromptPool
from engines.training.rewards import CONTROLS, TrainingReward
from engines.training.run_folder import RunFolder, recorded
from engines.training.update import apply_update

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
EVAL_SEED_OFFSET = 1_000_003


class TrainConfig(Config):
    """What a training run needs besides the strategy's own parameters."""

    label = "Training run"
    size_field = None

    name: str = param("run", label="Run name", help="The run folder under the data folder's training/ (e.g. $SAMPLESCOPE_HOME/training).")
    policy: str = param("embedded:arith", label="Policy", help="embedded:arith or hf:FOLDER")
    prompts: str = param("arith-train", label="Training prompts")
    eval_prompts: str = param("arith-fresh", label="Held-out prompts")
    reward: str = param("math", label="Reward")
    reward_control: str = param("exact", label="Reward control", choices=CONTROLS)
    strategy: str = param("grpo", label="Strategy")
    learning_rate: float = param(1e-5, label="Learning rate", min=0.0, max=1.0)
    gain_learning_rate: float | None = param(
        2e-1, label="Learning rate of the output norm's gain", min=0.0, max=1.0, advanced=True,
        help="The gain of the last RMSNorm/LayerNorm, the logit scale (inverse temperature); empty: the learning rate. "
        "See HFPolicy.parameter_groups.",
    )
    kl_coef: float = param(0.0, label="KL coefficient (k3)", min=0.0, max=100.0)
    clip_eps: float | None = param(None, label="Ratio clip epsilon", min=0.0, max=10.0, advanced=True)
    max_grad_norm: float = param(1.0, label="Max gradient norm", min=0.0, max=1e6, advanced=True)
    samples: int | None = param(None, label="Budget: samples", min=1)
    tokens: int | None = param(None, label="Budget: generated tokens", min=1)
    seconds: float | None = param(None, label="Budget: wall seconds", min=0.001)
    max_updates: int | None = param(None, label="Max updates", min=1)
    eval_every: int = param(5, label="Evaluate every (updates)", min=0, help="0: no held-out evaluation.")
    eval_size: int = param(200, label="Held-out prompts used", min=1)
    eval_samples: int = param(
        1, label="Held-out samples per prompt (T=1)", min=1, max=1024,
        help="n samples per held-out prompt at T=1: accuracy is their mean, pass@k (k = 1, 2, 4, ... <= n) the unbiased estimate.",
    )
    eval_greedy: bool = param(True, label="Also evaluate greedy")
    checkpoint_every: int = param(1, label="Checkpoint every (updates)", min=1)
    seed: int = param(0, label="Seed", min=0)

    def validate(self) -> None:
        if not self.name or not set(self.name) <= NAME_CHARS:
            raise ConfigError(f"run name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if self.strategy not in STRATEGIES:
            STRATEGIES.get(self.strategy)  # the one-line unknown-name error
        if self.samples is None and self.tokens is None and self.seconds is None and self.max_updates is None:
            raise ConfigError("give a budget: samples, tokens, seconds or max_updates")


def accuracy(policy: Policy, tasks: list[Task], reward: TrainingReward, *, temperature: float, max_new_tokens: int, seed: int) -> float:
    """Share of ``tasks`` whose one completion the exact outcome reward scores above 0.5."""
    return held_out(policy, tasks, reward, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)["accuracy"]


def held_out(
    policy: Policy, tasks: list[Task], reward: TrainingReward, *, temperature: float, max_new_tokens: int, seed: int, samples: int = 1
) -> dict[str, float]:
    """``samples`` completions of every task (one batched draw from a generator seeded with ``seed``),
    judged right when the *exact* outcome reward scores them above 0.5 (whatever the run's control):
    ``accuracy`` is the share of right completions; with ``samples`` = n > 1, ``pass@k`` for k = 1, 2,
    4, ... <= n is the mean over tasks of the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al.
    2021) from the task's c right completions."""
    rng = torch.Generator().manual_seed(seed)
    prompts = [t.prompt for t in tasks for _ in range(samples)]
    rollouts = policy.rollout(prompts, temperature=temperature, max_new_tokens=max_new_tokens, rng=rng)
    right = [
        sum(score > 0.5 for score in reward.outcome.score(task, [r.text for r in rollouts[i * samples : (i + 1) * samples]]))
        for i, task in enumerate(tasks)
    ]
    out = {"accuracy": sum(right) / (len(tasks) * samples)}
    if samples > 1:
        k = 1
        while k <= samples:
            out[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in right) / len(tasks)
            k *= 2
    return out


def train(
    config: TrainConfig,
    strategy_params: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    cancel: threading.Event | None = None,
    policy: Policy | None = None,
    reward: TrainingReward | None = None,
    prompts: list[Task] | None = None,
    eval_tasks: list[Task] | None = None,
    runs_folder: Path | None = None,
    run_dir: Path | None = None,
) -> Iterator[Event]:
    """Run (or resume) a training run; see the module docstring. Bad input raises before any event."""
    strategy = build_strategy(config.strategy, strategy_params)
    folder = RunFolder.locate(config.name, runs_folder=runs_folder, run_dir=run_dir, resume=resume)
    run_dir = folder.run_dir
    if policy is None:
        from engines.training.policy import load_policy

        policy = load_policy(config.policy)
    if not getattr(policy, "trainable", False):
        raise ConfigError(f"policy {config.policy!r} cannot be trained here")
    if reward is None:
        from engines.training.rewards import training_reward

        reward = training_reward(config.reward, config.reward_control)
    if prompts is None:
        from engines.training.prompts import load_prompts

        prompts = load_prompts(config.prompts)
    pool = PromptPool(tuple(prompts))
    if eval_tasks is None and config.eval_every:
        from engines.training.prompts import load_prompts

        eval_tasks = load_prompts(config.eval_prompts)
    eval_tasks = (eval_tasks or [])[: config.eval_size]
    reference = policy.frozen_copy() if config.kl_coef else None
    groups = (policy.parameter_groups(config.learning_rate, config.gain_learning_rate) if hasattr(policy, "parameter_groups")
              else policy.parameters())
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=0.0)
    rng = torch.Generator().manual_seed(config.seed)
    step, spent = 0, {"samples": 0, "tokens": 0, "seconds": 0.0}
    state, stored = folder.open(resume=resume, settings={"config": config.as_dict(), "strategy_params": strategy_params or {}})
    if state is not None:
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        if reference is not None:
            reference.load_state_dict(state["reference"])
        step, spent = state["step"], state["spent"]
    budget = Allowance(
        config.samples, config.tokens, config.seconds, cancel=cancel,
        spent_samples=spent["samples"], spent_tokens=spent["tokens"], spent_seconds=spent["seconds"],
    )
    pending: list[Event] = []

    def emit(event: Event) -> Event:
        pending.append(event)
        return event

    def evaluate(at: int) -> EvalEvent:
        cfg = strategy.config
        seed = config.seed + EVAL_SEED_OFFSET
        metrics: dict[str, Any] = {"n": len(eval_tasks), "samples": budget.spent_samples}
        sampled = held_out(policy, eval_tasks, reward, temperature=1.0, max_new_tokens=cfg.max_new_tokens, seed=seed,
                           samples=config.eval_samples)
        metrics["accuracy_t1"] = sampled.pop("accuracy")
        if config.eval_samples > 1:
            metrics["samples_per_prompt"] = config.eval_samples
            metrics.update(sampled)
        if config.eval_greedy:
            metrics["accuracy_greedy"] = accuracy(policy, eval_tasks, reward, temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=seed)
        return EvalEvent(step=at, metrics=metrics)

    def checkpoint() -> None:
        state = {
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng.get_state(),
            "step": step,
            "spent": budget.as_dict(),
            "reference": reference.state_dict() if reference is not None else None,
        }
        folder.checkpoint(state, pending)
        pending.clear()

    for data in stored:
        yield event_from_dict(data)
    if not resume and eval_tasks:
        yield emit(evaluate(0))
    evals_so_far = [d["step"] for d in stored if d.get("kind") == "eval"]
    status, message, last_eval = "ok", "", evals_so_far[-1] if evals_so_far else None
    try:
        while config.max_updates is None or step < config.max_updates:
            strategy.step = step
            batch = yield from recorded(strategy.collect(policy, pool, reward, budget, rng), emit)
            if not batch.samples_drawn:
                raise BudgetExhausted("budget exhausted before a batch could be drawn")
            t0 = time.perf_counter()
            metrics = apply_update(
                policy, optimizer, batch, reference=reference, kl_coef=config.kl_coef,
                clip_eps=config.clip_eps, max_grad_norm=config.max_grad_norm,
            )
            step += 1
            metrics.update(
                update_seconds=round(time.perf_counter() - t0, 3),
                groups_drawn=batch.groups_drawn, groups_kept=batch.groups_kept, batch_samples=batch.kept_samples, batch_rows=len(batch),
                batch_samples_drawn=batch.samples_drawn, reward_mean=sum(batch.rewards) / len(batch) if len(batch) else None,
                **{f"spent_{k}": v for k, v in budget.as_dict().items()},
            )
            yield emit(UpdateEvent(step=step, metrics=metrics))
            if eval_tasks and config.eval_every and step % config.eval_every == 0:
                last_eval = step
                yield emit(evaluate(step))
            if step % config.checkpoint_every == 0:
                checkpoint()
    except BudgetExhausted as exc:
        status, message = "budget", str(exc)
    except Cancelled as exc:
        status, message = "cancelled", str(exc)
    if status != "cancelled" and eval_tasks and last_eval != step and step > 0:
        yield emit(evaluate(step))
    if status != "cancelled":  # a cancelled run resumes from its last checkpoint and redraws what followed
        checkpoint()
    metrics: dict[str, Any] = {"updates": step, **budget.as_dict(), "run_dir": str(run_dir)}
    if hasattr(policy, "save"):
        policy.save(run_dir / "policy")
        metrics["policy_spec"] = f"hf:{run_dir / 'policy'}"
    yield DoneEvent(
        picks=[], candidates=[], status=status, message=message, metrics=metrics,
        cost={"generated_tokens": budget.spent_tokens, "reward_calls": budget.spent_samples, "wall_seconds": budget.spent_seconds},
    )

