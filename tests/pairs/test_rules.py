"""The pair rules: the sweet-spot grid, MC-PO's kernel law, temporal and pass-rate pairs."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest
import torch

from engines.models import load_model
from engines.pairs import PairError
from engines.pairs.grid import (
    CELLS,
    POINT_NAMES,
    SWEET_SPOT,
    grid_pair,
    grid_pairs,
    parse_cell,
    point_indices,
    point_values,
)
from engines.pairs.mcpo import cd_kernel_step, kernel_weights, mcpo_pair
from engines.pairs.rules import arith_checks, arith_pass_rate, pass_rate_pairs, temporal_pair
from tests.engines.test_exactness import ALPHA, TASK, chi_square_p, tilted
from tests.engines.toys import CountA

REWARDS = [0.1, 2.0, -1.5, 0.4, 0.9, -0.2, 1.1, 0.0, -0.7, 0.6, 3.0, 0.3]


def test_the_seven_points_are_min_max_and_mu_plus_k_sigma():
    values = point_values(REWARDS)
    mu, sigma = statistics.fmean(REWARDS), statistics.pstdev(REWARDS)
    assert list(values) == list(POINT_NAMES)
    assert values["min"] == -1.5 and values["max"] == 3.0
    for name, k in (("mu-2sigma", -2), ("mu-sigma", -1), ("mu", 0), ("mu+sigma", 1), ("mu+2sigma", 2)):
        assert values[name] == pytest.approx(mu + k * sigma)
    at = point_indices(REWARDS)
    for name, index in at.items():  # the nearest candidate to each point
        assert abs(REWARDS[index] - values[name]) == min(abs(r - values[name]) for r in REWARDS)


def test_the_grid_has_21_cells_each_with_the_higher_point_chosen():
    assert len(CELLS) == 21 == len(set(CELLS))
    cells = grid_pairs(REWARDS)
    made = [pair for pair in cells.values() if pair is not None]
    assert len(made) >= 15  # 12 distinct rewards: most cells hold two different candidates
    for (hi, lo), pair in cells.items():
        assert POINT_NAMES.index(hi) > POINT_NAMES.index(lo)
        if pair is not None:
            assert REWARDS[pair.chosen] > REWARDS[pair.rejected]
            assert pair.rule == f"grid:{hi}/{lo}"
    sweet = cells[SWEET_SPOT]
    assert REWARDS[sweet.chosen] == 3.0
    # the same cell as the labelling strategy in storage: best vs nearest mu - 2 sigma
    from storage.pairs import PairCandidate, sweet_spot_pair

    cands = [PairCandidate(i, str(i), r, (str(i), None)) for i, r in enumerate(REWARDS)]
    assert sweet_spot_pair(cands) == [(sweet.chosen, sweet.rejected)]


def test_grid_cells_that_collapse_are_empty_and_bad_cells_are_refused():
    assert grid_pair([1.0, 1.0, 1.0]) is None  # all equal: no preference
    assert grid_pair([0.0, 1.0], "mu+2sigma", "mu+sigma") is None  # both points are the better candidate
    assert (grid_pair([0.0, 1.0], "max", "min").chosen, grid_pair([0.0, 1.0], "max", "min").rejected) == (1, 0)
    with pytest.raises(PairError, match="above"):
        parse_cell("min/max")
    with pytest.raises(PairError, match="CHOSEN/REJECTED"):
        parse_cell("best/worst")
    with pytest.raises(PairError, match="N >= 2"):
        grid_pair([1.0])


# -- MC-PO ------------------------------------------------------------------------------------


def _mcpo_chain_law(include_current: bool, draws: int = 30_000, proposals: int = 2, beta: float = 1.0) -> tuple[Counter, dict]:
    """y_0 ~ p (the tilted law), y_1..L ~ q (the toy model), one kernel step: the law of y'."""
    model, reward = load_model("toy:ab2"), CountA()
    q = model.distribution()
    target = tilted(model, reward, beta)
    seqs = list(q)
    r = dict(zip(seqs, reward.score(TASK, seqs), strict=True))
    gen = torch.Generator().manual_seed(11)
    start = torch.multinomial(torch.tensor([target[s] for s in seqs]), draws, replacement=True, generator=gen)
    props = torch.multinomial(torch.tensor([q[s] for s in seqs]), draws * proposals, replacement=True, generator=gen)
    out: Counter = Counter()
    for t in range(draws):
        current = seqs[int(start[t])]
        cands = [seqs[int(i)] for i in props[t * proposals:(t + 1) * proposals]]
        z = cd_kernel_step(r[current], [r[c] for c in cands], gen, beta, include_current=include_current)
        out[current if z == 0 else cands[z - 1]] += 1
    return out, target


def test_mcpo_kernel_leaves_the_reward_tilted_law_invariant():
    observed, target = _mcpo_chain_law(include_current=True)
    assert chi_square_p(observed, target, sum(observed.values())) > ALPHA


def test_resampling_the_proposals_alone_is_the_wrong_law():
    observed, target = _mcpo_chain_law(include_current=False)
    assert chi_square_p(observed, target, sum(observed.values())) < ALPHA


def test_mcpo_negatives_are_hard_and_follow_exp_reward():
    rewards = [2.0, 1.8, -3.0, 0.0]
    w = kernel_weights(rewards[0], rewards[1:], beta=1.0)
    assert w.tolist() == pytest.approx((torch.softmax(torch.tensor(rewards, dtype=torch.float64), 0)).tolist())
    gen = torch.Generator().manual_seed(0)
    picks = Counter()
    for _ in range(2000):
        pair = mcpo_pair(rewards, gen, beta=1.0)
        picks[None if pair is None else pair.rejected] += 1
    assert picks[1] > picks[3] > picks[2]  # the near-best candidate is the usual negative
    with pytest.raises(PairError, match="beta"):
        mcpo_pair(rewards, gen, beta=0.0)
    with pytest.raises(PairError, match="N >= 2"):
        mcpo_pair([1.0], gen)


# -- temporal and pass-rate pairs ----------------------------------------------------------------


def test_temporal_pairs_take_the_rejected_from_the_earlier_model():
    pair = temporal_pair([0.3, -1.0, 0.5], [0.2, 1.4, 0.9])
    assert (pair.chosen, pair.rejected) == (1, 1)
    assert temporal_pair([2.0, 3.0], [1.0, 2.0]) is None  # the later model never beats the earlier's worst
    with pytest.raises(PairError):
        temporal_pair([], [])


def test_pass_rate_pairs_follow_acecoders_three_conditions():
    rates = [1.0, 0.8, 0.5, 0.4, 0.0, 0.75]
    pairs = {(p.chosen, p.rejected) for p in pass_rate_pairs(rates)}
    expected = {(i, j) for i in range(6) for j in range(6)
                if rates[i] >= 0.8 and rates[i] - rates[j] >= 0.4 - 1e-12 and rates[j] > 0}
    assert pairs == expected == {(0, 2), (0, 3), (1, 3)}
    with pytest.raises(PairError, match="\\[0, 1\\]"):
        pass_rate_pairs([1.5, 0.2])


def test_arith_pass_rate_uses_the_exact_checks():
    from engines.tasks.arith import parse_expression

    problem = parse_expression("Q: 3+4*5-2")
    assert arith_checks(problem.prompt, problem.solution()) == [True, True, True, True]
    assert arith_pass_rate(problem.prompt, "4*5=20\n3+20=23\n23-2=20\n#### 20") == pytest.approx(2 / 4)
    assert arith_pass_rate(problem.prompt, "#### 21") == pytest.approx(1 / 4)  # right answer, no steps
    assert arith_pass_rate(problem.prompt, "") == 0.0
    with pytest.raises(PairError, match="arithmetic prompt"):
        arith_checks("Describe a cat.", "meow")


def test_rules_are_reproducible_for_a_seed():
    rng = random.Random(3)
    rewards = [rng.gauss(0, 1) for _ in range(16)]
    a = [mcpo_pair(rewards, gen) for gen in [torch.Generator().manual_seed(5)] for _ in range(20)]
    b = [mcpo_pair(rewards, gen) for gen in [torch.Generator().manual_seed(5)] for _ in range(20)]
    assert a == b


def test_the_preference_pairs_sampler_offers_grid_cells_and_mcpo():
    from engines.errors import ConfigError
    from engines.samplers import build_sampler
    from engines.trace import Budget, collect
    from tests.engines.toys import CountA as Graded

    model = load_model("toy:abc")
    for params, strategy in (({"strategy": "grid", "chosen_point": "mu+sigma", "rejected_point": "mu-sigma"}, "grid:mu+sigma/mu-sigma"),
                             ({"strategy": "mcpo", "beta": 0.5}, "mcpo")):
        sampler = build_sampler("preference_pairs", {"n": 16, "temperature": 1.5, **params})
        trace = collect(sampler.run(TASK, model, Graded(), Budget(), torch.Generator().manual_seed(4)))
        assert trace.done.metrics["strategy"] == strategy
        if trace.selected:
            chosen, rejected = trace.selected
            assert trace.reward(chosen) > trace.reward(rejected)
    with pytest.raises(ConfigError, match="above"):
        build_sampler("preference_pairs", {"strategy": "grid", "chosen_point": "min", "rejected_point": "max"})
