"""Fitting and honestly evaluating a Bradley-Terry head on pairs of feature vectors.

Data: for vote i, features x_a[i], x_b[i] of the two candidates and an outcome
y[i] in {1 (a won), 0 (b won), 1/2 (tie)}; d_i = r(x_a[i]) - r(x_b[i]). The head
r(.) maximises one of two likelihoods (``FitConfig.ties``):

- ``half`` (default): Bradley-Terry with ties as half-wins (the convention of
  Chatbot Arena's BT fit and of ``storage.stats``):
  loss_i = -[ y_i log s(d_i) + (1 - y_i) log s(-d_i) ],  s = logistic sigmoid;
- ``davidson``: Davidson's tie model (Davidson, "On Extending the Bradley-Terry
  Model to Accommodate Ties in Paired Comparison Experiments", JASA 1970):
  with pi = exp(r), P(a wins) = pi_a / (pi_a + pi_b + nu sqrt(pi_a pi_b)),
  P(tie) = nu sqrt(pi_a pi_b) / (same), i.e. softmax over (d/2, -d/2, log nu);
  log nu is fitted with the head and reported.

The loss is the mean over votes plus l2/2 * ||W||^2 (weights, not biases).

Optimised full-batch with Adam (Kingma & Ba 2015); inputs are standardised
with the training fold's mean and standard deviation.

Evaluation never lets a group (a prompt, or an annotator) be in both the
training and the test folds (scikit-learn ``GroupKFold``). Accuracy is on
held-out *decisive* votes: the head is right when it gives the winner the
higher reward (equal rewards count as wrong); a Wilson 95% interval comes
from scipy's ``binomtest``. The learning curve refits on seeded subsets of
each training fold and scores the same held-out folds.

Everything here is a pure function of tensors: no database, no model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from engines.errors import ConfigError
from engines.rewards.learned import BTHead

MIN_VOTES = 10


@dataclass(frozen=True)
class PairData:
    xa: torch.Tensor  # [N, D]
    xb: torch.Tensor  # [N, D]
    y: torch.Tensor  # [N]: 1 a won, 0 b won, 0.5 tie
    groups: np.ndarray  # [N]: the cross-validation group of each vote

    def __post_init__(self) -> None:
        n = len(self.y)
        if self.xa.shape != self.xb.shape or len(self.xa) != n or len(self.groups) != n:
            raise ConfigError("pair data: x_a, x_b, y and groups must have one row per vote")

    def subset(self, index: np.ndarray) -> PairData:
        t = torch.as_tensor(index, dtype=torch.long)
        return PairData(self.xa[t], self.xb[t], self.y[t], self.groups[index])

    @property
    def decisive(self) -> int:
        return int(((self.y == 0) | (self.y == 1)).sum())


@dataclass(frozen=True)
class FitConfig:
    hidden: int = 0  # 0: linear head; else the MLP's hidden width
    epochs: int = 100
    lr: float = 0.1
    l2: float = 1e-2
    folds: int = 5
    seed: int = 0
    eval_every: int = 10
    curve: tuple[float, ...] = (0.25, 0.5, 1.0)
    ties: str = "half"  # "half" (half-wins) or "davidson"

    def __post_init__(self) -> None:
        if self.ties not in ("half", "davidson"):
            raise ConfigError(f"ties are counted as half wins (half) or by Davidson's model (davidson), not {self.ties!r}")
        if self.hidden < 0 or self.epochs < 1 or self.lr <= 0 or self.l2 < 0 or self.folds < 2 or self.eval_every < 1:
            raise ConfigError("fit config: hidden >= 0, epochs >= 1, lr > 0, l2 >= 0, folds >= 2, eval_every >= 1")
        if not self.curve or any(not 0 < f <= 1 for f in self.curve):
            raise ConfigError("fit config: learning-curve fractions must be in (0, 1]")


@dataclass(frozen=True)
class Progress:
    """One point of a training run: which stage, how far, held-out accuracy so far."""

    stage: str  # "cv", "curve" or "final"
    fold: int
    folds: int
    epoch: int
    loss: float
    heldout_accuracy: float | None
    fraction_done: float


@dataclass(frozen=True)
class Accuracy:
    correct: int
    n: int
    rate: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, correct: int, n: int) -> Accuracy:
        if n == 0:
            return cls(correct, n, None, None, None)
        from scipy.stats import binomtest

        ci = binomtest(correct, n, 0.5).proportion_ci(confidence_level=0.95, method="wilson")
        return cls(correct, n, correct / n, float(ci.low), float(ci.high))


@dataclass
class TrainResult:
    head: BTHead
    heldout: Accuracy
    log_loss: float | None
    folds: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    group_count: int = 0
    tie_nu: float | None = None  # Davidson's nu, fitted on every vote

    def metrics(self) -> dict[str, Any]:
        return {
            "davidson_nu": self.tie_nu,
            "heldout": asdict(self.heldout),
            "heldout_log_loss": self.log_loss,
            "folds": self.folds,
            "learning_curve": self.curve,
            "groups": self.group_count,
        }


def bt_loss(head: BTHead, data: PairData, l2: float, log_nu: torch.Tensor | None = None) -> torch.Tensor:
    d = head(data.xa) - head(data.xb)
    nll = bt_nll(d, data.y) if log_nu is None else davidson_nll(d, data.y, log_nu)
    return nll.mean() + 0.5 * l2 * head.penalty()


def davidson_nll(d: torch.Tensor, y: torch.Tensor, log_nu: torch.Tensor) -> torch.Tensor:
    """-log P(outcome) under Davidson's model: softmax over (d/2, -d/2, log nu) for (a, b, tie)."""
    logits = torch.stack([d / 2, -d / 2, log_nu.expand_as(d)], dim=-1)
    index = torch.where(y == 1, 0, torch.where(y == 0, 1, 2)).long()
    return -(logits.log_softmax(-1).gather(-1, index[:, None]).squeeze(-1))


def bt_nll(d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-[y log s(d) + (1 - y) log s(-d)] per vote (written out: the fused op is slow on small CPU tensors)."""
    y = y.float()
    return -(y * F.logsigmoid(d) + (1 - y) * F.logsigmoid(-d))


def correct_count(head: BTHead, data: PairData) -> tuple[int, int]:
    """(held-out decisive votes where the winner got the higher reward, decisive votes)."""
    with torch.no_grad():
        d = head(data.xa) - head(data.xb)
    a_won, b_won = data.y == 1, data.y == 0
    return int(((d > 0) & a_won).sum() + ((d < 0) & b_won).sum()), int((a_won | b_won).sum())


def init_head(train: PairData, config: FitConfig, seed: int = 0) -> BTHead:
    """A fresh head: small seeded weights, inputs standardised on the training features."""
    gen = torch.Generator().manual_seed(seed)
    head = BTHead(train.xa.shape[1], config.hidden)
    with torch.no_grad():
        for p in head.net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.01 if p.dim() > 1 else 0.0))
    head.standardise_on(torch.cat([train.xa, train.xb]).float())
    return head


def fit_steps(
    head: BTHead, train: PairData, config: FitConfig, *, test: PairData | None = None
) -> Iterator[tuple[int, float, float | None]]:
    """Train ``head`` in place; yields (epoch, loss, held-out accuracy or None) every ``eval_every`` epochs."""
    log_nu = torch.zeros(1, requires_grad=True) if config.ties == "davidson" else None
    params = list(head.net.parameters()) + ([log_nu] if log_nu is not None else [])
    optimiser = torch.optim.Adam(params, lr=config.lr)
    head.train()
    for epoch in range(1, config.epochs + 1):
        optimiser.zero_grad()
        loss = bt_loss(head, train, config.l2, log_nu)
        loss.backward()
        optimiser.step()
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            accuracy = None
            if test is not None:
                correct, n = correct_count(head, test)
                accuracy = correct / n if n else None
            yield epoch, float(loss.detach()), accuracy
    head.tie_nu = float(log_nu.detach().exp()) if log_nu is not None else None
    head.eval()


def fit_head(train: PairData, config: FitConfig, seed: int = 0) -> BTHead:
    head = init_head(train, config, seed)
    for _ in fit_steps(head, train, config):
        pass
    return head.requires_grad_(False)


def split_folds(groups: np.ndarray, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    distinct = len(set(groups.tolist()))
    if distinct < 2:
        raise ConfigError("the votes come from one group only; cross-validation needs at least two prompts (or annotators)")
    k = min(folds, distinct)
    return list(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups))


def check_trainable(data: PairData, outcomes: Sequence[str]) -> None:
    """Refuse data a fit cannot learn from (raises ConfigError, one line)."""
    if data.decisive < MIN_VOTES:
        raise ConfigError(f"too few votes to train on: {data.decisive} decisive (a/b) votes, need at least {MIN_VOTES}")
    if len(set(outcomes)) < 2:
        raise ConfigError(f"every vote has the same outcome ({outcomes[0]!r}); a reward cannot be learned from one outcome")


def train(data: PairData, config: FitConfig = FitConfig()) -> Iterator[Progress | TrainResult]:
    """Cross-validate, draw the learning curve, fit on everything; yields progress, then the result."""
    splits = split_folds(data.groups, config.folds)
    k = len(splits)
    stages = k + k * sum(f < 1 for f in config.curve) + 1
    done = 0

    def tick(stage: str, fold: int, epoch: int, loss: float, acc: float | None) -> Progress:
        return Progress(stage, fold, k, epoch, loss, acc, (done + epoch / config.epochs) / stages)

    total_correct = total_n = 0
    log_loss_sum, log_loss_n = 0.0, 0
    per_fold = []
    for fold, (train_ix, test_ix) in enumerate(splits, start=1):
        tr, te = data.subset(train_ix), data.subset(test_ix)
        head = init_head(tr, config, seed=config.seed + fold)
        for epoch, loss, acc in fit_steps(head, tr, config, test=te):
            yield tick("cv", fold, epoch, loss, acc)
        done += 1
        correct, n = correct_count(head, te)
        total_correct, total_n = total_correct + correct, total_n + n
        with torch.no_grad():
            d = head(te.xa) - head(te.xb)
            if config.ties == "davidson":
                nll = davidson_nll(d, te.y, torch.tensor([math.log(max(head.tie_nu, 1e-12))]))
            else:
                nll = bt_nll(d, te.y)
            log_loss_sum += float(nll.sum())
        log_loss_n += len(te.y)
        per_fold.append({"fold": fold, "train_votes": len(train_ix), "test_votes": len(test_ix), **asdict(Accuracy.of(correct, n))})
    curve = []
    rng = np.random.default_rng(config.seed)
    for fraction in sorted(config.curve):
        if fraction >= 1:
            sizes = [len(tr) for tr, _ in splits]
            curve.append({"fraction": 1.0, "votes": float(np.mean(sizes)), **asdict(Accuracy.of(total_correct, total_n))})
            continue
        correct_f = n_f = 0
        sizes = []
        for fold, (train_ix, test_ix) in enumerate(splits, start=1):
            keep = max(2, int(round(fraction * len(train_ix))))
            sub = np.sort(rng.choice(train_ix, size=min(keep, len(train_ix)), replace=False))
            sizes.append(len(sub))
            head = init_head(data.subset(sub), config, seed=config.seed + 100 * fold)
            for epoch, loss, _ in fit_steps(head, data.subset(sub), config):
                yield tick("curve", fold, epoch, loss, None)
            done += 1
            c, n = correct_count(head, data.subset(test_ix))
            correct_f, n_f = correct_f + c, n_f + n
        curve.append({"fraction": fraction, "votes": float(np.mean(sizes)), **asdict(Accuracy.of(correct_f, n_f))})
    final = init_head(data, config, seed=config.seed)
    for epoch, loss, _ in fit_steps(final, data, config):
        yield tick("final", 0, epoch, loss, None)
    final.requires_grad_(False)
    yield TrainResult(
        head=final,
        heldout=Accuracy.of(total_correct, total_n),
        log_loss=log_loss_sum / log_loss_n if log_loss_n else None,
        folds=per_fold,
        curve=curve,
        group_count=len(set(data.groups.tolist())),
        tie_nu=getattr(final, "tie_nu", None),
    )


def run_to_end(data: PairData, config: FitConfig = FitConfig()) -> TrainResult:
    """:func:`train` without the progress."""
    result = None
    for item in train(data, config):
        if isinstance(item, TrainResult):
            result = item
    assert result is not None
    return result

