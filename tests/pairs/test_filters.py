"""The reliability filters against a simulated annotator (hidden reward, logistic noise).

The world is ``bench.pairs``'s: candidates x ~ N(0, I), hidden reward r* = w . x, an annotator
voting with probability sigmoid(r*(a) - r*(b)), and a reward model read M times with independent
noise (an ensemble). Each filter must raise the share of kept training pairs whose label agrees
with the hidden reward's order. The difference of two shares is asserted through its lower 99%
bound (normal approximation), on enough pairs (2,000) that the expected gain of the filters here
(about 0.05 to 0.1) is powered.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.pairs import labelled_pairs, make_world
from engines.pairs import PairError
from engines.pairs.reliability import apply_filter, strength_filter, upo_filter

Z99 = 2.576


def _gain_bounds(all_agree: np.ndarray, kept_agree: np.ndarray) -> tuple[float, float]:
    """(gain, its lower 99% bound) of the kept share over the whole set's share."""
    p1, n1 = kept_agree.mean(), len(kept_agree)
    p0, n0 = all_agree.mean(), len(all_agree)
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    return p1 - p0, p1 - p0 - Z99 * se


@pytest.fixture(scope="module")
def labelled():
    world = make_world(7, prompts=2000, scale=2.0, noise=1.0)
    return labelled_pairs("random", world, 2000, seed=7)


@pytest.mark.parametrize("name", ["upo", "strength"])
def test_each_filter_raises_agreement_with_the_hidden_reward(labelled, name):
    verdict = apply_filter(name, labelled["readings_win"], labelled["readings_lose"])
    kept = labelled["agrees"][verdict.keep]
    gain, low = _gain_bounds(labelled["agrees"], kept)
    assert 0.2 * len(labelled["agrees"]) < len(kept) < len(labelled["agrees"])
    assert low > 0, f"{name}: gain {gain:.3f}, lower 99% bound {low:.3f}"


def test_a_filter_that_keeps_the_most_uncertain_pairs_lowers_agreement(labelled):
    # the wrong variant: UPO's ranking turned around (keep the pairs the ensemble is least sure of)
    verdict = upo_filter(labelled["readings_win"], labelled["readings_lose"], keep=1.0)
    spread = verdict.statistic
    favoured = verdict.keep
    order = np.flatnonzero(favoured)[np.argsort(-spread[favoured], kind="stable")]
    kept = labelled["agrees"][order[: len(order) // 2]]
    right = labelled["agrees"][np.flatnonzero(upo_filter(labelled["readings_win"], labelled["readings_lose"], keep=0.5).keep)]
    assert right.mean() > kept.mean()


def test_strength_can_flip_instead_of_dropping(labelled):
    verdict = strength_filter(labelled["readings_win"], labelled["readings_lose"], flip=True)
    assert verdict.keep.sum() == (verdict.statistic != 0).sum() and verdict.flip.any()  # nothing dropped, some turned
    flipped = np.where(verdict.flip, ~labelled["agrees"], labelled["agrees"])
    gain, low = _gain_bounds(labelled["agrees"], flipped[verdict.keep])
    assert low > 0, f"flip: gain {gain:.3f}, lower bound {low:.3f}"


def test_filters_refuse_bad_input_in_one_line():
    with pytest.raises(PairError, match="two reward readings"):
        upo_filter([[1.0, 2.0]], [[0.0, 1.0]])
    with pytest.raises(PairError, match="unknown pair filter"):
        apply_filter("vibes", [[1.0]], [[0.0]])
    with pytest.raises(PairError, match="no pairs"):
        strength_filter(np.zeros((3, 0)), np.zeros((3, 0)))
    with pytest.raises(PairError, match="finite"):
        strength_filter([[float("nan")]], [[0.0]])


def test_with_the_projects_simulated_annotator_the_filters_keep_the_pairs_it_agrees_with():
    """tests/rewards/simulated.py's annotator (digit weights, logistic noise at T = 0.5) votes on grid (mu+sigma, mu)
    pairs built by a noisy reward model; each filter's kept labels agree more often with its hidden reward."""
    import random

    import torch

    from engines.pairs.grid import grid_pair
    from tests.rewards.simulated import hidden_reward, sigmoid

    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    readings_win, readings_lose, agrees = [], [], []
    for _ in range(1500):
        texts = ["".join(rng.choice("0123456789") for _ in range(6)) for _ in range(12)]
        truth = [hidden_reward(t) for t in texts]
        noisy = torch.tensor(truth)[None, :] + 1.0 * torch.randn(5, len(texts), generator=gen)  # 5 readings
        pair = grid_pair(noisy.mean(0).tolist(), "mu+sigma", "mu")  # a close cell: noisy labels
        if pair is None:
            continue
        a, b = pair.chosen, pair.rejected
        p = sigmoid((truth[a] - truth[b]) / 0.5)
        a_wins = rng.random() < p
        win, lose = (a, b) if a_wins else (b, a)
        readings_win.append(noisy[:, win].tolist())
        readings_lose.append(noisy[:, lose].tolist())
        agrees.append(truth[win] > truth[lose])
    agrees_all = np.array(agrees)
    chosen, rejected = np.array(readings_win).T, np.array(readings_lose).T
    assert len(agrees_all) > 1000 and 0.6 < agrees_all.mean() < 0.95  # noisy labels to filter
    for name in ("upo", "strength"):
        keep = apply_filter(name, chosen, rejected).keep
        gain, low = _gain_bounds(agrees_all, agrees_all[keep])
        assert low > 0, f"{name}: gain {gain:.3f}, lower 99% bound {low:.3f}"
