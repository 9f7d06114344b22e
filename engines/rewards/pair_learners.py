"""Rewards learned from pairs beyond the plain Bradley-Terry head: West-of-N, GAN-RM, ODIN, PAR.

All four work on frozen features (``engines.rewards.learned``'s featurisers) and end in a
:class:`~engines.rewards.learned.BTHead` saved like any learned head (``card.kind = "head"``,
``card.method`` names the method), so ``learned:NAME`` serves them to every sampler and to the
rollout lab without a new loader. PAR wraps another reward (``card.kind = "par"``).

- **West-of-N** (Pace et al. 2024, "West-of-N: Synthetic Preferences for Self-Improving Reward
  Models", arXiv:2401.12086): fit a head on the human pairs; for every prompt score a pool of N
  unlabelled candidates and take the best and the worst as a synthetic pair (best preferred);
  refit on human + synthetic pairs; repeat. :func:`west_of_n` with ``pick="random"`` is the
  control the paper measures against: the same number of synthetic pairs, two random
  candidates of the pool labelled by the same current head.
- **GAN-RM** (Liu et al. 2025, "Fake it till You Make it: Reward Modeling as Discriminative
  Prediction", arXiv:2506.13846): a discriminator between a few hundred unpaired *target*
  samples (what good looks like) and the model's own outputs; the reward is its logit,
  log P(target | x) / P(model | x). :func:`fit_gan_rm`.
- **ODIN** (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF", ICML,
  arXiv:2402.07319): two linear heads on shared (standardised) features, r = r_Q + r_L fitted
  by Bradley-Terry, with r_L pushed to correlate with length and r_Q to decorrelate from it
  (Pearson correlation over the batch) and their weights kept orthogonal; r_Q, the content
  head, is the reward. :func:`fit_odin`.
- **PAR** (Fu et al. 2025, "Reward Shaping to Mitigate Reward Hacking in RLHF", arXiv:2502.18770,
  "Preference As Reward"): r_PAR(x) = mean_m sigmoid(r(x) - r(ref_m)), the reward model's own
  preference for x over reference answers to the same prompt: bounded in [0, 1], 1/2 for a
  candidate as good as the references (centred). :class:`PreferenceAsReward`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from engines.errors import ConfigError
from engines.rewards.base import Reward, sigmoid
from engines.rewards.bt_fit import FitConfig, PairData, fit_head, init_head
from engines.rewards.learned import BTHead
from engines.task import Task

# -- West-of-N --------------------------------------------------------------------------------------------------


def synthetic_pairs(head: BTHead, pools: Sequence[torch.Tensor], pick: str, rng: np.random.Generator) -> PairData:
    """One synthetic pair per pool (the features of one prompt's N candidates), labelled by ``head``:
    ``west`` takes the best and the worst under it; ``random`` two random candidates."""
    xa, xb = [], []
    with torch.no_grad():
        for pool in pools:
            if len(pool) < 2:
                continue
            r = head(pool)
            if pick == "west":
                i, j = int(r.argmax()), int(r.argmin())
            elif pick == "random":
                i, j = (int(v) for v in rng.choice(len(pool), size=2, replace=False))
                if r[i] < r[j]:
                    i, j = j, i
            else:
                raise ConfigError(f"synthetic pairs are picked 'west' (best and worst) or 'random', not {pick!r}")
            if r[i] == r[j]:
                continue  # the head cannot tell them apart: no preference to learn
            xa.append(pool[i])
            xb.append(pool[j])
    if not xa:
        empty = torch.zeros(0, pools[0].shape[1]) if pools else torch.zeros(0, 1)
        return PairData(empty, empty, torch.zeros(0), np.array([], dtype=object))
    return PairData(torch.stack(xa), torch.stack(xb), torch.ones(len(xa)), np.array(["synthetic"] * len(xa), dtype=object))


def concat(a: PairData, b: PairData) -> PairData:
    if not len(b.y):
        return a
    return PairData(torch.cat([a.xa, b.xa]), torch.cat([a.xb, b.xb]), torch.cat([a.y, b.y]), np.concatenate([a.groups, b.groups]))


def west_of_n(human: PairData, pools: Sequence[torch.Tensor], *, rounds: int = 2, pick: str = "west",
              config: FitConfig = FitConfig(), seed: int = 0) -> tuple[BTHead, list[int]]:
    """Self-training from a head fitted on ``human`` pairs; returns the last head and the synthetic
    pairs used in each round. Each round labels the pools afresh with the current head."""
    if rounds < 1:
        raise ConfigError(f"West-of-N needs at least one round, got {rounds}")
    if len(human.y) < 2:
        raise ConfigError("West-of-N starts from a head fitted on human pairs: give at least 2")
    rng = np.random.default_rng(seed)
    head = fit_head(human, config, seed=seed)
    counts = []
    for r in range(rounds):
        synthetic = synthetic_pairs(head, pools, pick, rng)
        counts.append(len(synthetic.y))
        head = fit_head(concat(human, synthetic), config, seed=seed + r + 1)
    return head, counts


# -- GAN-RM -----------------------------------------------------------------------------------------------------


def fit_gan_rm(target: torch.Tensor, generated: torch.Tensor, *, hidden: int = 0, epochs: int = 200, lr: float = 0.05,
               l2: float = 1e-2, seed: int = 0) -> BTHead:
    """A discriminator head: logit of "target" against "model output", classes weighted equally."""
    if len(target) < 2 or len(generated) < 2:
        raise ConfigError(f"GAN-RM needs target samples and model outputs (>= 2 each), got {len(target)} and {len(generated)}")
    x = torch.cat([target, generated]).float()
    y = torch.cat([torch.ones(len(target)), torch.zeros(len(generated))])
    weight = torch.where(y == 1, 0.5 / len(target), 0.5 / len(generated))  # balanced: the prior odds are 1
    head = _init(x, hidden, seed)
    optimiser = torch.optim.Adam(head.net.parameters(), lr=lr)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(head(x), y, reduction="none") * weight).sum() + 0.5 * l2 * head.penalty()
        loss.backward()
        optimiser.step()
    return head.eval().requires_grad_(False)


def _init(x: torch.Tensor, hidden: int, seed: int) -> BTHead:
    """bt_fit's fresh head (small seeded weights), standardised on the features ``x``."""
    return init_head(PairData(x, x, torch.zeros(len(x)), np.zeros(len(x), dtype=object)), FitConfig(hidden=hidden), seed)


# -- ODIN -------------------------------------------------------------------------------------------------------


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x - x.mean(), y - y.mean()
    return (x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-8)


def fit_odin(data: PairData, length_a: torch.Tensor, length_b: torch.Tensor, *, epochs: int = 300, lr: float = 0.05,
             l2: float = 1e-3, length_weight: float = 1.0, orthogonal_weight: float = 1.0, seed: int = 0
             ) -> tuple[BTHead, BTHead]:
    """(content head r_Q, length head r_L): Bradley-Terry on r_Q + r_L plus
    ``length_weight`` * (|rho(r_Q, L)| - rho(r_L, L)) + ``orthogonal_weight`` * |w_Q . w_L|."""
    if len(data.y) < 2:
        raise ConfigError("ODIN needs at least 2 pairs")
    x = torch.cat([data.xa, data.xb]).float()
    length = torch.cat([length_a, length_b]).float()
    if float(length.std()) == 0:
        raise ConfigError("ODIN needs candidates of different lengths: every one has the same length")
    content, size = _init(x, 0, seed), _init(x, 0, seed + 1)
    optimiser = torch.optim.Adam([*content.net.parameters(), *size.net.parameters()], lr=lr)
    y = data.y.float()
    for _ in range(epochs):
        optimiser.zero_grad()
        d = content(data.xa) + size(data.xa) - content(data.xb) - size(data.xb)
        bt = -(y * F.logsigmoid(d) + (1 - y) * F.logsigmoid(-d)).mean()
        decorrelate = pearson(content(x), length).abs() - pearson(size(x), length)
        orthogonal = (content.net.weight * size.net.weight).sum().abs()
        loss = bt + length_weight * decorrelate + orthogonal_weight * orthogonal + 0.5 * l2 * (content.penalty() + size.penalty())
        loss.backward()
        optimiser.step()
    return content.eval().requires_grad_(False), size.eval().requires_grad_(False)


# -- PAR --------------------------------------------------------------------------------------------------------


class PreferenceAsReward(Reward):
    """r_PAR(x) = mean over references of sigmoid(r(x) - r(ref)) (Fu et al. 2025), for any outcome reward r.

    ``references`` maps a prompt to its reference answers (the paper uses the reference policy's
    responses; one suffices); prompts without any take ``default`` (a callable of the task,
    e.g. its reference answer) or are refused with a one-line error.
    """

    kind = "outcome"

    def __init__(self, reward: Reward, references: Mapping[str, Sequence[str]], *, name: str | None = None,
                 default: Callable[[Task], Sequence[str]] | None = None) -> None:
        if reward.modality != "text":
            raise ConfigError("PAR wraps text rewards (references are texts)")
        self.reward, self.references, self.default = reward, dict(references), default
        self.name = name or f"par({reward.name})"
        self.requires_answer = reward.requires_answer  # type: ignore[misc]

    def refs(self, task: Task) -> list[str]:
        refs = list(self.references.get(task.prompt) or (self.default(task) if self.default else []) or [])
        if not refs:
            raise ConfigError(f"{self.name} has no reference answer for this prompt ({task.prompt[:60]!r})")
        return refs

    def score(self, task: Task, candidates: Sequence[str], *, usage: Any = None) -> list[float]:
        if not candidates:
            return []
        refs = self.refs(task)
        values = self.reward.score(task, [*candidates, *refs], usage=usage)
        mine, theirs = values[: len(candidates)], values[len(candidates):]
        return [sum(sigmoid(r - q) for q in theirs) / len(theirs) for r in mine]

    def check_task(self, task: Task) -> None:
        self.reward.check_task(task)
        self.refs(task)


def load_par(card: Mapping[str, Any], name: str, env: Any) -> PreferenceAsReward:
    """The PAR reward a ``kind: par`` card describes: ``of`` (a reward spec), ``references``
    (prompt -> answers) and ``answer_as_reference`` (use the task's reference answer where none is stored)."""
    from engines.rewards import build_reward

    of = str(card.get("of") or "")
    if not of or of == name or of.startswith(name + "+"):
        raise ConfigError(f"{name}: a PAR card needs another reward in 'of', got {of!r}")
    inner = build_reward(of, env)
    if not isinstance(inner, Reward):
        raise ConfigError(f"{name}: PAR wraps an outcome reward; {of!r} is {inner.kind}")
    default = (lambda task: [task.answer] if task.answer else []) if card.get("answer_as_reference") else None
    return PreferenceAsReward(inner, card.get("references") or {}, name=name, default=default)
