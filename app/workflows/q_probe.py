"""Train a Q-probe (engines.rewards.q_probe) on a policy's own samples and store it as ``learned:NAME``.

For each training prompt: k completions of the policy at the sampling temperature, their rewards from
any outcome reward (on arith, the exact ``math`` verifier), their embeddings by the same policy. The probe
is fitted on those (loss ``pg``, ``mse`` or ``ce``), then measured on held-out prompts with fresh samples:
the mean reward of one sample (what k = 1 gets), of the probe's soft pick (beta = 1) and argmax pick
among k, and of the oracle pick (the best of k by the reward itself, the ceiling of any selector). The
folder's card says all of that; ``learned:NAME`` scores with the probe and the ``q_probe`` sampler
selects with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from app.workflows.reward_training import write_folder
from app.workflows.store import rewards_home
from engines.errors import ConfigError
from engines.models.base import SamplingParams
from engines.rewards import RewardEnv, build_reward
from engines.rewards.base import Reward
from engines.rewards.learned import BTHead, TextFeatures, check_name, save_head
from engines.rewards.q_probe import ProbeFit, fit_probe, soft_pick_weights
from engines.task import Task
from engines.training.prompts import load_prompts


@dataclass(frozen=True)
class ProbeProgress:
    stage: str  # "sampling train", "fitting", "sampling held-out"
    fraction_done: float
    loss: float | None = None


@dataclass
class ProbeTrained:
    name: str
    folder: Path
    card: dict[str, Any]


@dataclass(frozen=True)
class ProbeData:
    features: torch.Tensor  # [P, k, d]
    rewards: torch.Tensor  # [P, k]


def draw_probe_data(
    model: Any, features: TextFeatures, reward: Reward, tasks: Sequence[Task], k: int, params: SamplingParams,
    rng: torch.Generator, stage: str,
) -> Iterator[ProbeProgress | ProbeData]:
    """k samples of each task, their rewards and their embeddings by the policy."""
    feats, rewards = [], []
    for i, task in enumerate(tasks):
        generations = model.sample([model.encode_task(task)], params, n=k, rng=rng)[0]
        texts = [g.text for g in generations]
        rewards.append(torch.tensor(reward.score(task, texts), dtype=torch.float32))
        feats.append(features([task.prompt] * k, texts))
        yield ProbeProgress(stage, (i + 1) / len(tasks))
    yield ProbeData(torch.stack(feats), torch.stack(rewards))


def selection_metrics(head: BTHead, data: ProbeData) -> dict[str, float]:
    """Mean reward of one sample, of the probe's soft (beta = 1) and argmax picks, and of the oracle pick."""
    with torch.no_grad():
        q = head(data.features)
    soft = sum(sum(w * r for w, r in zip(soft_pick_weights(qs.tolist(), 1.0), rs.tolist(), strict=True))
               for qs, rs in zip(q, data.rewards, strict=True))
    argmax = sum(sum(w * r for w, r in zip(soft_pick_weights(qs.tolist(), 0.0), rs.tolist(), strict=True))
                 for qs, rs in zip(q, data.rewards, strict=True))
    prompts = len(data.rewards)
    return {
        "prompts": prompts,
        "k": int(data.rewards.shape[1]),
        "one_sample": float(data.rewards.mean()),
        "probe_soft_pick": soft / prompts,
        "probe_argmax_pick": argmax / prompts,
        "oracle_pick": float(data.rewards.max(dim=1).values.mean()),
    }


def train_probe(
    name: str,
    *,
    model: str,
    prompts: str,
    reward: str,
    heldout: str | None = None,
    k: int = 8,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    fit: ProbeFit = ProbeFit(),
    load_model: Callable[..., Any] | None = None,
) -> Iterator[ProbeProgress | ProbeTrained]:
    """Train ``learned:NAME``, a Q-probe on ``model``'s embeddings (see the module docstring)."""
    check_name(name)
    folder = rewards_home() / name
    if folder.exists():
        raise ConfigError(f"a learned reward named {name!r} exists already ({folder}); pick another name")
    if k < 2:
        raise ConfigError(f"a Q-probe compares k >= 2 samples per prompt, got k={k}")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    train_tasks = load_prompts(prompts)
    heldout_tasks = load_prompts(heldout) if heldout else []
    if load_model is None:
        from engines.models import load_model
    policy = load_model(model)
    if getattr(policy, "modality", "text") != "text":
        raise ConfigError(f"a Q-probe needs a text model; {model!r} makes {policy.modality}")
    scorer = build_reward(reward, RewardEnv(model=policy, load_model=load_model, rewards_folder=rewards_home()))
    if not isinstance(scorer, Reward) or scorer.modality != "text":
        raise ConfigError(f"{reward!r} is not a text outcome reward; a Q-probe learns from one score per sample")
    features = TextFeatures(policy, model)
    rng = torch.Generator().manual_seed(fit.seed)
    train_data = yield from _collect(draw_probe_data(policy, features, scorer, train_tasks, k, params, rng, "sampling train"))
    head = None
    for item in fit_probe(train_data.features, train_data.rewards, fit):
        if isinstance(item, BTHead):
            head = item
        else:
            yield ProbeProgress("fitting", 0.0, loss=item)
    assert head is not None
    metrics = {"train": selection_metrics(head, train_data)}
    if heldout_tasks:
        data = yield from _collect(draw_probe_data(policy, features, scorer, heldout_tasks, k, params, rng,
                                                   "sampling held-out"))
        metrics["heldout"] = selection_metrics(head, data)
    card = {
        "name": name,
        "kind": "head",
        "modality": "text",
        "base": model,
        "featuriser": features.name,
        "head": {"input_dim": int(train_data.features.shape[-1]), "hidden": 0},
        "trained_by": "q_probe",
        "paper": "Li et al. 2024, Q-Probe (arXiv:2402.14688)",
        "probe": {"prompts": prompts, "heldout": heldout, "reward": reward, "k": k, "temperature": temperature,
                  "max_new_tokens": max_new_tokens, **asdict(fit)},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": metrics,
    }
    write_folder(folder, card, lambda tmp: save_head(head, tmp))
    yield ProbeTrained(name=name, folder=folder, card=card)


def _collect(items: Iterator[ProbeProgress | ProbeData]):
    """Pass progress on; return the data (``data = yield from _collect(...)``)."""
    for item in items:
        if isinstance(item, ProbeData):
            return item
        yield item
    raise AssertionError("draw_probe_data ended without data")
