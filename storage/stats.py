"""Statistics of the current votes (skips excluded).

* Reward-model agreement: on decisive votes (``a``/``b``) between candidates
  scored by the same reward with different finite values, the share where the
  higher-reward candidate won; Wilson 95% interval (scipy ``binomtest``).
* Annotator agreement: Cohen's kappa for each pair of annotators on the
  comparisons both voted on (scikit-learn ``cohen_kappa_score``), and
  Krippendorff's alpha, nominal, over every annotator and comparison (the
  ``krippendorff`` package). Labels: ``a``, ``b``, ``tie``, ``both_bad``
  (``a``/``b`` name candidates, so the side shown does not matter).
* Bradley-Terry ranking of samplers (or models), as in LMSYS Chatbot Arena
  (Chiang et al., "Chatbot Arena: An Open Platform for Evaluating LLMs by
  Human Preference", 2024; FastChat ``elo_analysis.py``): P(i beats j) =
  sigmoid(theta_i - theta_j), ties (and both-bad) count half a win each,
  battles of a player against itself are left out. Fitted by maximum
  likelihood with a weak Gaussian prior (ridge ``BT_RIDGE``) so that an
  undefeated player gets a finite rating; reported on FastChat's Elo scale
  (1000 + 400 * theta / ln 10) with 95% percentile intervals from a bootstrap
  over battles.
* Position bias: the rate at which the candidate shown on the left wins a
  decisive vote; Wilson 95% interval and a two-sided binomial test against 1/2.

:func:`summary` counts the labels of :func:`storage.records.training_records`
(one per original comparison and annotator: a side-swapped repeat does not
weigh a pair double in the ranking, the agreement figures or the counts); the
position bias counts every vote, repeats included, since repeats exist to
measure it.

Quantities that the data cannot define (no shared comparisons, one label
only, ...) are ``None`` rather than a made-up number.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import krippendorff
import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score
from sqlalchemy.orm import Session

from storage.errors import InvalidInput
from storage.records import VoteRecord, training_records, vote_records

LABELS = ("a", "b", "tie", "both_bad")
BT_RIDGE = 0.01
ELO_SCALE = 400 / math.log(10)
ELO_BASE = 1000.0


@dataclass(frozen=True)
class Proportion:
    successes: int
    n: int
    rate: float | None
    low: float | None
    high: float | None
    p_value: float | None  # two-sided binomial test against 1/2

    @classmethod
    def of(cls, successes: int, n: int) -> Proportion:
        if n == 0:
            return cls(successes, n, None, None, None, None)
        test = binomtest(successes, n, 0.5)
        ci = test.proportion_ci(confidence_level=0.95, method="wilson")
        return cls(successes, n, successes / n, float(ci.low), float(ci.high), float(test.pvalue))


def reward_agreement(records: Sequence[VoteRecord]) -> dict[str, Any]:
    """How often the higher-reward candidate is the one people chose."""
    by_reward: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    equal = 0
    for rec in records:
        if not rec.decisive or rec.a.reward_name != rec.b.reward_name:
            continue
        ra, rb = rec.a.reward, rec.b.reward
        if ra is None or rb is None:
            continue
        if ra == rb:
            equal += 1
            continue
        higher = "a" if ra > rb else "b"
        counts = by_reward[rec.a.reward_name]
        counts[0] += rec.outcome == higher
        counts[1] += 1
    agree = sum(c[0] for c in by_reward.values())
    total = sum(c[1] for c in by_reward.values())
    return {
        "overall": asdict(Proportion.of(agree, total)),
        "by_reward": {name: asdict(Proportion.of(*c)) for name, c in sorted(by_reward.items())},
        "equal_rewards_skipped": equal,
    }


def _kappa(x: Sequence[str], y: Sequence[str]) -> float | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(x, y, labels=list(LABELS))
    return None if not np.isfinite(value) else float(value)


def annotator_agreement(records: Sequence[VoteRecord]) -> dict[str, Any]:
    """Cohen's kappa per annotator pair and Krippendorff's alpha (nominal) over all."""
    labels: dict[str, dict[int, str]] = defaultdict(dict)
    for rec in records:
        if rec.outcome in LABELS:
            labels[rec.annotator][rec.comparison_id] = rec.outcome
    annotators = sorted(labels)
    pairs = []
    for first, second in itertools.combinations(annotators, 2):
        shared = sorted(set(labels[first]) & set(labels[second]))
        if not shared:
            continue
        x = [labels[first][c] for c in shared]
        y = [labels[second][c] for c in shared]
        pairs.append(
            {
                "annotators": [first, second],
                "n": len(shared),
                "agreement": sum(a == b for a, b in zip(x, y, strict=True)) / len(shared),
                "kappa": _kappa(x, y),
            }
        )
    units = sorted({c for votes in labels.values() for c in votes})
    code = {label: float(i) for i, label in enumerate(LABELS)}
    matrix = np.full((len(annotators), len(units)), np.nan)
    column = {c: j for j, c in enumerate(units)}
    for i, name in enumerate(annotators):
        for comparison_id, label in labels[name].items():
            matrix[i, column[comparison_id]] = code[label]
    pairable = int(np.sum(np.sum(~np.isnan(matrix), axis=0) >= 2)) if units else 0
    alpha = None
    if pairable and len(annotators) >= 2:
        try:
            with np.errstate(invalid="ignore", divide="ignore"):
                value = krippendorff.alpha(
                    reliability_data=matrix, level_of_measurement="nominal", value_domain=list(code.values())
                )
            alpha = float(value) if np.isfinite(value) else None
        except (ValueError, ZeroDivisionError):  # e.g. every pairable rating is the same label
            alpha = None
    return {
        "annotators": len(annotators),
        "pairs": pairs,
        "krippendorff_alpha": alpha,
        "comparisons_with_two_or_more": pairable,
    }


def _battles(records: Sequence[VoteRecord], by: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rows = []
    for rec in records:
        a, b = rec.a.player(by), rec.b.player(by)
        if a == b or rec.outcome not in LABELS:
            continue
        score = {"a": 1.0, "b": 0.0}.get(rec.outcome, 0.5)
        rows.append((a, b, score))
    players = sorted({p for a, b, _ in rows for p in (a, b)})
    index = {p: i for i, p in enumerate(players)}
    ia = np.array([index[a] for a, _, _ in rows], dtype=int)
    ib = np.array([index[b] for _, b, _ in rows], dtype=int)
    y = np.array([s for _, _, s in rows], dtype=float)
    return players, ia, ib, y


def fit_bradley_terry(
    n_players: int,
    ia: np.ndarray,
    ib: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Strengths theta (natural-log odds scale) maximising the ridge-penalised BT likelihood."""
    w = np.ones_like(y) if weights is None else weights

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[ia] - theta[ib]
        nll = -np.sum(w * (y * log_expit(d) + (1 - y) * log_expit(-d)))
        residual = w * (expit(d) - y)  # d nll / d d
        grad = np.bincount(ia, residual, n_players) - np.bincount(ib, residual, n_players)
        return nll + 0.5 * BT_RIDGE * theta @ theta, grad + BT_RIDGE * theta

    x0 = np.zeros(n_players) if start is None else start
    result = minimize(objective, x0, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-9})
    return result.x


def bradley_terry(
    records: Sequence[VoteRecord], *, by: str = "sampler", bootstrap: int = 200, seed: int = 0
) -> list[dict[str, Any]]:
    """Players ranked by Bradley-Terry rating, with bootstrap 95% intervals."""
    if by not in ("sampler", "model"):
        raise InvalidInput(f"rank samplers or models, not {by!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise InvalidInput("bootstrap must be a non-negative number of resamples")
    players, ia, ib, y = _battles(records, by)
    if len(players) < 2:
        return []
    # The likelihood depends only on how often each (a, b, score) occurs: fit on those counts,
    # and resample counts (multinomial), which is the same as resampling battles with replacement.
    groups, counts = np.unique(np.stack([ia, ib, y], axis=1), axis=0, return_counts=True)
    ga, gb, gy = groups[:, 0].astype(int), groups[:, 1].astype(int), groups[:, 2]
    theta = fit_bradley_terry(len(players), ga, gb, gy, counts.astype(float))
    rng = np.random.default_rng(seed)
    samples = np.empty((bootstrap, len(players)))
    for k in range(bootstrap):
        weights = rng.multinomial(len(y), counts / len(y)).astype(float)
        samples[k] = fit_bradley_terry(len(players), ga, gb, gy, weights, start=theta)
    battles = np.bincount(ia, minlength=len(players)) + np.bincount(ib, minlength=len(players))
    wins = np.bincount(ia, y, len(players)) + np.bincount(ib, 1 - y, len(players))
    table = []
    for i, name in enumerate(players):
        low, high = np.percentile(samples[:, i], [2.5, 97.5]) if bootstrap else (np.nan, np.nan)
        table.append(
            {
                "name": name,
                "rating": ELO_BASE + ELO_SCALE * float(theta[i]),
                "low": ELO_BASE + ELO_SCALE * float(low) if bootstrap else None,
                "high": ELO_BASE + ELO_SCALE * float(high) if bootstrap else None,
                "battles": int(battles[i]),
                "score": float(wins[i]),  # wins + half the ties
            }
        )
    table.sort(key=lambda row: -row["rating"])
    for rank, row in enumerate(table, start=1):
        row["rank"] = rank
    return table


def position_bias(records: Sequence[VoteRecord]) -> dict[str, Any]:
    decisive = [rec for rec in records if rec.decisive]
    left_wins = sum(rec.winner.candidate_id == rec.left.candidate_id for rec in decisive)
    return asdict(Proportion.of(left_wins, len(decisive)))


def summary(
    session: Session, *, by: str = "sampler", bootstrap: int = 200, seed: int = 0, repeats: str = "original"
) -> dict[str, Any]:
    """All statistics of the current votes, as a JSON-ready dict (``repeats``: see the module docstring)."""
    every = vote_records(session)
    records = training_records(every, repeats=repeats)
    outcomes = {label: sum(rec.outcome == label for rec in records) for label in LABELS}
    return {
        "votes": len(records),
        "outcomes": outcomes,
        "reward_agreement": reward_agreement(records),
        "annotator_agreement": annotator_agreement(records),
        "ranking": {
            "by": by,
            "bootstrap": bootstrap,
            "players": bradley_terry(records, by=by, bootstrap=bootstrap, seed=seed),
        },
        "position_bias": position_bias(every),
        "repeats": repeats,
        "repeat_votes_left_out": len(every) - len(records),
    }
