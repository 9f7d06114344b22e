"""Run a registered rollout strategy inside TRL's ``GRPOTrainer`` (TRL 1.16), for scale.

The lab's loop (engines.training.loop) trains one in-process policy on one machine. A user
who outgrows it keeps the same strategy and hands the rest to TRL: accelerate / DeepSpeed
for the update, vLLM (``use_vllm=True``) or TRL's transformers path for generation::

    bridge = StrategyBridge("reinforce_rej", {"group_size": 8}, tasks=load_prompts("arith-train"),
                            reward=training_reward("math"))
    args = bridge.grpo_config("out", learning_rate=1e-4, max_steps=100)
    trainer = StrategyGRPOTrainer(model, bridge, args=args, processing_class=tokenizer)
    trainer.train()

(``samplescope train --trainer trl ...`` does this on the lab's policies.)

How it plugs in. TRL 1.16 offers one generation hook, ``rollout_func(prompts, trainer)``
(experimental in TRL): it receives the process's generation batch (B prompts, each repeated
G = ``num_generations`` times) and returns ``prompt_ids`` / ``completion_ids`` / ``logprobs``
rows plus extra fields for the reward functions. TRL then *recomputes* advantages from the
rewards of G consecutive rows (group mean, optional std); there is no advantage hook. So:

1. :meth:`StrategyBridge.rollout_func` runs ``strategy.collect`` on the batch's B prompts
   (first draw: exactly TRL's prompts; further draws, e.g. DAPO's extra generation batches,
   come from the whole prompt set with the bridge's generator), and lays the kept samples
   out as TRL's R = B x G rows. Rows left over (dropped samples) become padding rows: a
   one-token completion with ``env_mask`` 0, so TRL's loss mask removes them entirely
   (policy term, KL term and token count).
2. :func:`strategy_reward` hands TRL the strategy's own rewards (so TRL logs what the
   strategy saw; padding rows return None and are left out).
3. :class:`StrategyGRPOTrainer` overrides ``_generate_and_score_completions`` by a few lines:
   after TRL's own pass it replaces TRL's advantages with the strategy's.

What maps exactly (on-policy: ``num_iterations=1``, one optimiser step per generation batch,
``steps_per_generation == gradient_accumulation_steps``, as :meth:`grpo_config` sets):

- which samples are drawn, kept and dropped, and every sample's advantage (TRL's
  group-mean/std recomputation is discarded);
- per-sample weights, folded into the advantage (TRL's clipped surrogate is linear in A);
- the loss aggregation, with the advantage rescaled per batch: ``token_mean`` -> TRL
  ``loss_type="dapo"`` (1 / kept tokens, scale 1); ``sequence_mean`` -> ``"grpo"`` (TRL
  averages over all R rows, padding included: scale R / kept); ``sample_sum`` ->
  ``"dr_grpo"`` (TRL divides by R x ``max_completion_length``: scale R x L / kept);
- RAFT's SFT step: A = 1 on kept samples gives -grad log pi at ratio 1, the SFT gradient.

So the first update's policy gradient equals the lab's ``batch_loss`` gradient on the same
batch, in float32 (``bf16=False``; TRL's default bf16 autocast rounds it, about 1.5% on arith);
tests/training/test_trl_bridge.py checks it on the arith policy.

What does not map:

- KL (``beta``): TRL's k3 term is not weighted by the strategy's per-sample weights, and
  under ``grpo`` / ``dr_grpo`` it is averaged over R rows, not over the kept ones;
- off-policy passes (``num_iterations > 1`` or several optimiser steps per generation)
  clip and importance-weight as TRL does; the lab's update is a single on-policy step;
- TRL's own ``top_entropy_quantile``, off-policy masks and vLLM importance correction
  multiply the loss as in TRL, unknown to the strategy;
- a strategy whose batch has more than R rows cannot fit TRL's fixed rows and is refused in
  one line (the tree strategies' segment rows; ``bcpg_nsa``, which splits samples in two and
  needs the lab's tokenizer to find step lines, is refused before it draws);
- temperatures other than 1: TRL differentiates log-probs of the tempered policy, the lab
  records and trains the untempered one (refused in one line);
- with several processes each runs the strategy on its own slice (groups never straddle
  processes: the per-process generation batch must be a multiple of G); with
  ``generation="trl"`` and vLLM in server / colocate mode, strategies whose number of draws
  depends on the data (``dynamic_sampling``, ``reinforce_ada``) can make processes call
  vLLM a different number of times, which TRL's collective generate does not allow: run
  those with one process per vLLM client, or use ``generation="lab"``.

Generation backends: ``generation="lab"`` draws with the lab's own KV-cached sampler on the
trainer's (unwrapped) model from the bridge's seeded generator; ``generation="trl"`` draws
through TRL's ``_generate_single_turn`` (vLLM when ``use_vllm``, else ``generate``) and
recomputes each token's log-prob with the training model (one no-grad forward pass), since
TRL's transformers path returns none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.errors import BudgetExhausted, ConfigError
from engines.task import Task
from engines.trace import Event, GroupEvent
from engines.training import build_strategy
from engines.training.base import Allowance, PromptPool, Rollout, RolloutStrategy, TrainingBatch
from engines.training.policy import HFPolicy
from engines.training.rewards import TrainingReward

#: the lab's loss aggregation -> TRL's ``loss_type`` with the same per-token weights
LOSS_TYPES = {"token_mean": "dapo", "sequence_mean": "grpo", "sample_sum": "dr_grpo"}
GENERATIONS = ("lab", "trl")


@dataclass(frozen=True)
class _QueuedPool(PromptPool):
    """A prompt pool whose draws first return ``queue`` (TRL's batch), then uniform ones."""

    queue: list[int] = field(default_factory=list)

    def draw(self, k: int, rng: torch.Generator) -> list[int]:
        head = self.queue[:k]
        del self.queue[: len(head)]
        return head + (super().draw(k - len(head), rng) if k > len(head) else [])


class _LabGeneration:
    """The lab's sampler on the trainer's model, unwrapped as TRL does for generation."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.name, self.trainable = "trl-policy", False

    @contextlib.contextmanager
    def policy(self):
        from trl.models import unwrap_model_for_generation

        trainer = self.trainer
        with unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=trainer.args.ds3_gather_for_generation
        ) as model:
            training = model.training
            try:
                yield HFPolicy(model, trainer.processing_class, name=self.name)
            finally:
                model.train(training)  # HFPolicy puts the model in eval mode; TRL reads .training for its loss

    def rollout(self, prompts, *, temperature, max_new_tokens, rng):
        with self.policy() as policy:
            return policy.rollout(prompts, temperature=temperature, max_new_tokens=max_new_tokens, rng=rng)


class _TRLGeneration(_LabGeneration):
    """TRL's own generation path (vLLM or transformers ``generate``), log-probs recomputed."""

    def rollout(self, prompts, *, temperature, max_new_tokens, rng):
        n = _run_length(prompts)
        with self.policy() as policy:
            prompt_ids = [policy.encode(p) for p in prompts]
        completions, _ = self.trainer._generate_single_turn(prompt_ids, None, {}, n)
        eos = self.trainer.processing_class.eos_token_id
        rollouts = []
        with self.policy() as policy, torch.no_grad():
            for ids, completion in zip(prompt_ids, completions, strict=True):
                completion = [int(t) for t in completion]
                finished = bool(completion) and completion[-1] == eos
                text = policy.tokenizer.decode(completion[:-1] if finished else completion, skip_special_tokens=True)
                rollouts.append(Rollout(tuple(ids), tuple(completion), (), text, finished))
            logps, _, mask = policy.token_logprobs(rollouts)
        return [
            Rollout(r.prompt_ids, r.completion_ids, tuple(logps[i, : r.tokens].tolist()), r.text, r.finished)
            for i, r in enumerate(rollouts)
        ]


def _run_length(prompts: Sequence[str]) -> int:
    """n when ``prompts`` is each prompt repeated n times in a row (TRL's vLLM path needs it), else 1."""
    n = 1
    while n < len(prompts) and prompts[n] == prompts[0]:
        n += 1
    ok = len(prompts) % n == 0 and all(prompts[i] == prompts[i - i % n] for i in range(len(prompts)))
    return n if ok else 1


def strategy_reward(completions: list, strategy_reward: list | None = None, **_: Any) -> list[float | None]:
    """TRL reward function: the strategy's reward of each row (None on padding rows)."""
    return list(strategy_reward) if strategy_reward is not None else [None] * len(completions)


class StrategyBridge:
    """A registered strategy, its prompt set and reward, as the parts ``GRPOTrainer`` takes."""

    def __init__(
        self,
        strategy: str | RolloutStrategy,
        params: dict[str, Any] | None = None,
        *,
        tasks: Sequence[Task],
        reward: TrainingReward,
        seed: int = 0,
        generation: str = "lab",
    ) -> None:
        if generation not in GENERATIONS:
            raise ConfigError(f"generation must be one of {', '.join(GENERATIONS)}, got {generation!r}")
        self.strategy = strategy if isinstance(strategy, RolloutStrategy) else build_strategy(strategy, params)
        if self.strategy.config.aggregation not in LOSS_TYPES:
            raise ConfigError(f"aggregation {self.strategy.config.aggregation!r} has no TRL loss type")
        self.tasks = tuple(tasks)
        self.pool_tasks = PromptPool(self.tasks).tasks  # the one-line error on an empty set
        self.index = {}
        for i, task in enumerate(self.tasks):
            self.index.setdefault(task.prompt, i)
        self.reward = reward
        self.seed = seed
        self.generation = generation
        self.rng: torch.Generator | None = None
        self.budget = Allowance()  # no caps: TRL's max_steps bounds the run; this counts the spend
        self.events: list[Event] = []
        self.batches: list[TrainingBatch] = []
        self._pending: list[float] | None = None

    # -- what GRPOTrainer is given --------------------------------------------------

    @property
    def group_size(self) -> int:
        return self.strategy.config.group_size

    def dataset(self):
        """The prompt set as a ``datasets.Dataset`` with TRL's ``prompt`` column."""
        from datasets import Dataset

        return Dataset.from_dict({"prompt": [t.prompt for t in self.tasks]})

    def grpo_config(self, output_dir: str, **overrides: Any):
        """A ``GRPOConfig`` matching the strategy: G, one batch of ``prompts_per_batch`` groups per
        optimiser step, on-policy, its temperature, length and loss aggregation; ``overrides`` win."""
        from trl import GRPOConfig

        cfg = self.strategy.config
        values: dict[str, Any] = {
            "num_generations": cfg.group_size,
            "per_device_train_batch_size": cfg.prompts_per_batch * cfg.group_size,
            "gradient_accumulation_steps": 1,
            "num_iterations": 1,
            "temperature": cfg.temperature,
            "max_completion_length": cfg.max_new_tokens,
            "loss_type": LOSS_TYPES[cfg.aggregation],
            "scale_rewards": "none",  # TRL's recomputed advantages are replaced anyway
            "beta": 0.0,
            "report_to": "none",
            "seed": self.seed,
        }
        values.update(overrides)
        return GRPOConfig(output_dir=output_dir, **values)

    def check(self, args: Any) -> None:
        """One-line errors where the trainer's settings would not run this strategy as it is."""
        cfg = self.strategy.config
        if args.num_generations != cfg.group_size:
            raise ConfigError(f"num_generations {args.num_generations} must equal the strategy's group_size {cfg.group_size}")
        if abs(args.temperature - cfg.temperature) > 1e-9 or args.max_completion_length != cfg.max_new_tokens:
            raise ConfigError("the trainer's temperature and max_completion_length must equal the strategy's")
        if abs(cfg.temperature - 1.0) > 1e-9:
            raise ConfigError(
                f"the TRL bridge needs temperature 1 (got {cfg.temperature:g}): TRL differentiates the tempered policy, "
                "the strategy's samples carry the untempered log-probs"
            )
        if args.loss_type != LOSS_TYPES[cfg.aggregation]:
            raise ConfigError(f"aggregation {cfg.aggregation} needs loss_type={LOSS_TYPES[cfg.aggregation]!r}, got {args.loss_type!r}")
        if args.num_iterations != 1 or args.steps_per_generation != args.gradient_accumulation_steps:
            raise ConfigError("the strategy's batch is one on-policy update: num_iterations=1, steps_per_generation=gradient_accumulation_steps")

    # -- the hooks -------------------------------------------------------------------

    def rollout_func(self, prompts: list, trainer: Any) -> dict[str, list]:
        """TRL's ``rollout_func``: the strategy's kept samples as ``len(prompts)`` rows."""
        if any(not isinstance(p, str) for p in prompts):
            raise ConfigError("the TRL bridge takes plain-text prompts (no chat messages)")
        backend = (_TRLGeneration if self.generation == "trl" else _LabGeneration)(trainer)
        if not trainer.model.training:  # evaluation: one plain draw per row, no strategy
            return self._plain_rows(prompts, backend, trainer)
        size = self.group_size
        if len(prompts) % size:
            raise ConfigError(f"TRL's batch of {len(prompts)} rows is not whole groups of {size}")
        if self.rng is None:
            self.rng = torch.Generator().manual_seed(self.seed * 1009 + trainer.accelerator.process_index)
        unique = prompts[::size]
        cfg = self.strategy.config
        if cfg.prompts_per_batch != len(unique):
            self.strategy.config = cfg.replace(prompts_per_batch=len(unique))
        pool = _QueuedPool(self.tasks, queue=[self._task_index(p) for p in unique])
        self.strategy.step = trainer.state.global_step
        collect = self.strategy.collect(backend, pool, self.reward, self.budget, self.rng)
        while True:
            try:
                self.events.append(next(collect))
            except StopIteration as stop:
                batch: TrainingBatch = stop.value
                break
        if not batch.samples_drawn:
            raise BudgetExhausted("budget exhausted: samples (the next batch does not fit)")
        self.batches.append(batch)
        return self._rows(batch, prompts, trainer)

    def _rows(self, batch: TrainingBatch, prompts: list[str], trainer: Any) -> dict[str, list]:
        rows = len(prompts)
        if len(batch) > rows:
            raise ConfigError(f"{self.strategy.name} kept {len(batch)} samples; TRL's batch has {rows} rows")
        eos = trainer.processing_class.eos_token_id
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [], "strategy_reward": []}
        for r, reward in zip(batch.rollouts, batch.rewards, strict=True):
            out["prompt_ids"].append(list(r.prompt_ids))
            out["completion_ids"].append(list(r.completion_ids))
            out["logprobs"].append(list(r.logprobs))
            out["env_mask"].append([1] * r.tokens)
            out["strategy_reward"].append(float(reward))
        for prompt in prompts[len(batch) :]:  # padding rows: masked out of TRL's loss
            out["prompt_ids"].append(trainer.processing_class(prompt, add_special_tokens=False)["input_ids"])
            out["completion_ids"].append([eos])
            out["logprobs"].append([0.0])
            out["env_mask"].append([0])
            out["strategy_reward"].append(None)
        self._pending = [a * w for a, w in zip(batch.advantages, batch.sample_weights, strict=True)]
        self._pending += [0.0] * (rows - len(batch))
        mode = trainer._metrics["train"]
        mode["strategy/samples_drawn"].append(float(batch.samples_drawn))
        mode["strategy/groups_kept"].append(float(batch.groups_kept))
        mode["strategy/groups_drawn"].append(float(batch.groups_drawn))
        mode["strategy/kept_samples"].append(float(batch.kept_samples))
        return out

    def _plain_rows(self, prompts: list[str], backend: Any, trainer: Any) -> dict[str, list]:
        cfg = self.strategy.config
        rng = torch.Generator().manual_seed(self.seed + 1_000_003)
        rollouts = backend.rollout(prompts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, rng=rng)
        rewards = []
        for prompt, rollout in zip(prompts, rollouts, strict=True):
            rewards += self.reward(self.tasks[self._task_index(prompt)], [rollout.text], rng)
        return {
            "prompt_ids": [list(r.prompt_ids) for r in rollouts],
            "completion_ids": [list(r.completion_ids) for r in rollouts],
            "logprobs": [list(r.logprobs) for r in rollouts],
            "strategy_reward": [float(v) for v in rewards],
        }

    def _task_index(self, prompt: str) -> int:
        try:
            return self.index[prompt]
        except KeyError:
            raise ConfigError("TRL's dataset holds a prompt that is not in the bridge's prompt set") from None

    def advantages(self, trainer: Any, device: torch.device) -> torch.Tensor:
        """The last batch's advantages, rescaled so TRL's ``loss_type`` weighs tokens as the strategy's aggregation."""
        values = torch.tensor(self._pending or [], dtype=torch.float32, device=device)
        self._pending = None
        rows = torch.tensor([float(len(values)), float(len(self.batches[-1]))], device=device)
        total_rows, total_kept = trainer.accelerator.gather(rows).view(-1, 2).sum(0).tolist()
        aggregation = self.strategy.config.aggregation
        if total_kept == 0 or aggregation == "token_mean":
            return values
        scale = total_rows / total_kept
        if aggregation == "sample_sum":
            scale *= trainer.max_completion_length
        return values * scale

    def group_events(self) -> list[GroupEvent]:
        return [e for e in self.events if isinstance(e, GroupEvent)]


def train_with_trl(config: Any, strategy_params: dict[str, Any] | None, *, run_dir: Any, generation: str = "lab") -> dict[str, Any]:
    """``samplescope train --trainer trl``: a lab training config run by ``GRPOTrainer`` through the bridge.

    The budget becomes ``max_steps``: ``max_updates``, else ``samples // (prompts_per_batch x G)``.
    A samples budget also caps the draws: strategies that over-sample (dynamic_sampling, reinforce_ada)
    stop the run, like the lab loop, when the next batch no longer fits (``status: budget``); tokens and
    seconds budgets are the lab loop's and are refused in one line. Held-out T=1 accuracy (the exact reward) before and after; the policy is saved
    in ``run_dir/policy`` and loads as ``hf:`` spec. No resume: TRL's checkpoints are its own.
    """
    from pathlib import Path

    from engines.training.loop import accuracy
    from engines.training.policy import load_policy
    from engines.training.prompts import load_prompts
    from engines.training.rewards import training_reward

    policy = load_policy(config.policy, device="cuda" if torch.cuda.is_available() else "cpu")
    reward = training_reward(config.reward, config.reward_control)
    bridge = StrategyBridge(config.strategy, strategy_params, tasks=load_prompts(config.prompts), reward=reward,
                            seed=config.seed, generation=generation)
    cfg = bridge.strategy.config
    if config.tokens is not None or config.seconds is not None:
        raise ConfigError("--trainer trl takes a budget of updates=N or samples=N; tokens= and seconds= are the lab loop's")
    steps = config.max_updates or (config.samples // (cfg.prompts_per_batch * cfg.group_size) if config.samples else 0)
    if not steps:
        raise ConfigError("--trainer trl needs a budget of updates=N or samples=N (at least one batch)")
    bridge.budget = Allowance(samples=config.samples)  # the draws never pass it; a batch that no longer fits ends the run
    eval_tasks = load_prompts(config.eval_prompts)[: config.eval_size] if config.eval_every else []

    def held_out() -> float | None:
        if not eval_tasks:
            return None
        policy.model.eval()
        return accuracy(policy, eval_tasks, reward, temperature=1.0, max_new_tokens=cfg.max_new_tokens, seed=config.seed + 1_000_003)

    before = held_out()
    run_dir = Path(run_dir)
    args = bridge.grpo_config(
        str(run_dir / "trl"), learning_rate=config.learning_rate, max_steps=steps, beta=config.kl_coef,
        epsilon=config.clip_eps if config.clip_eps is not None else 0.2, max_grad_norm=config.max_grad_norm,
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), save_strategy="no", logging_steps=1,
        disable_tqdm=True, lr_scheduler_type="constant",
    )
    # the lab loop's optimiser: AdamW without weight decay, constant rates, the output normalisation's
    # gain at its own rate (HFPolicy.parameter_groups); TRL's default would be one rate, linearly decayed
    groups = policy.parameter_groups(config.learning_rate, config.gain_learning_rate)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=0.0)
    StrategyGRPOTrainer = _trainer_class()  # noqa: N806
    trainer = StrategyGRPOTrainer(policy.model, bridge, args=args, processing_class=policy.tokenizer, optimizers=(optimizer, None))
    status = "ok"
    try:
        trainer.train()
    except BudgetExhausted:  # raised by rollout_func before the step's update: the updates so far stand
        status = "budget"
    after = held_out()
    policy.save(run_dir / "policy")
    return {
        "trainer": "trl", "status": status, "updates": trainer.state.global_step, **bridge.budget.as_dict(),
        "accuracy_t1_before": before, "accuracy_t1_after": after, "eval_n": len(eval_tasks),
        "groups_kept": sum(b.groups_kept for b in bridge.batches), "groups_drawn": sum(b.groups_drawn for b in bridge.batches),
        "policy_spec": f"hf:{run_dir / 'policy'}",
        "learning_rates": [group["lr"] for group in trainer.optimizer.param_groups],
    }


def _trainer_class():
    from trl import GRPOTrainer

    class StrategyGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` whose rollouts, kept samples and advantages come from a lab strategy."""

        def __init__(self, model: Any, bridge: StrategyBridge, *, args: Any, train_dataset: Any = None, **kwargs: Any) -> None:
            bridge.check(args)
            self.bridge = bridge
            super().__init__(
                model=model,
                reward_funcs=[strategy_reward],
                args=args,
                train_dataset=train_dataset if train_dataset is not None else bridge.dataset(),
                rollout_func=bridge.rollout_func,
                **kwargs,
            )

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if self.model.training:  # TRL's recomputed group advantages -> the strategy's
                output["advantages"] = self.bridge.advantages(self, output["advantages"].device)
            return output

    return StrategyGRPOTrainer


def __getattr__(name: str):
    # GRPOTrainer imports TRL (seconds); resolve the subclass only when asked for.
    if name == "StrategyGRPOTrainer":
        cls = _trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
