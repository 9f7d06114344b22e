"""Pair strategies: pure choices, then comparisons stored from runs."""

from __future__ import annotations

import random

import numpy as np
import pytest
from storage_helpers import store_run

from storage import Database, InvalidInput, compare_runs, load_run, make_comparisons
from storage.models import Comparison
from storage.pairs import PairCandidate, choose_pairs, sweet_spot_pair


def cands(rewards, texts=None):
    texts = texts or [f"t{i}" for i in range(len(rewards))]
    return [
        PairCandidate(id=i + 1, node_id=f"n{i}", reward=r, content=(t, None))
        for i, (r, t) in enumerate(zip(rewards, texts, strict=True))
    ]


def test_sweet_spot_picks_max_and_nearest_mu_minus_two_sigma():
    rewards = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, -3.0]
    target = np.mean(rewards) - 2 * np.std(rewards)  # 4.09 - 2*3.42 = -2.75
    pairs = sweet_spot_pair(cands(rewards))
    nearest = min(range(len(rewards)), key=lambda i: abs(rewards[i] - target)) + 1
    assert pairs == [(10, nearest)] and nearest == 11
    # unlike max_min, the sweet spot need not be the minimum
    rewards = [float(x) for x in range(20)] + [-100.0]
    [(best, rejected)] = sweet_spot_pair(cands(rewards))
    assert best == 20 and rewards[rejected - 1] != -100.0
    target = np.mean(rewards) - 2 * np.std(rewards)
    assert abs(rewards[rejected - 1] - target) == min(abs(r - target) for r in rewards[:-2])


def test_max_min_ignores_unscored_and_merges_identical_text():
    pool = cands([None, 1.0, 5.0, float("nan"), 0.5, 0.5], texts=["a", "b", "c", "d", "e", "c"])
    assert choose_pairs("max_min", pool, rng=random.Random(0)) == [(3, 5)]
    assert choose_pairs("max_min", cands([1.0]), rng=random.Random(0)) == []
    # identical texts never pair, whatever the strategy
    same = cands([1.0, 2.0, 3.0], texts=["x", "x", "x"])
    for strategy in ("random", "max_min", "sweet_spot", "all_pairs"):
        assert choose_pairs(strategy, same, rng=random.Random(0)) == []


def test_random_and_all_pairs_are_seeded_and_capped():
    pool = cands([float(i) for i in range(10)])
    a = choose_pairs("random", pool, rng=random.Random(7), count=5)
    assert a == choose_pairs("random", pool, rng=random.Random(7), count=5)
    assert len(set(a)) == 5 and all(x != y for x, y in a)
    assert len(choose_pairs("all_pairs", pool, rng=random.Random(0), max_pairs=100)) == 45
    capped = choose_pairs("all_pairs", pool, rng=random.Random(0), max_pairs=7)
    assert len(capped) == 7 and len(set(capped)) == 7
    assert len(choose_pairs("random", cands([1.0, 2.0]), rng=random.Random(0), count=9)) == 1


def test_knockout_pairs_follow_the_matches_and_skip_byes():
    pool = cands([1.0, 2.0, 3.0, 4.0, 5.0])
    matches = [("n0", "n1"), ("n2", "n3"), ("n4", None), ("n1", "n3"), ("n4", "n3")]
    assert choose_pairs("knockout", pool, rng=random.Random(0), matches=matches) == [
        (1, 2),
        (3, 4),
        (2, 4),
        (5, 4),
    ]
    with pytest.raises(InvalidInput, match="not a stored candidate"):
        choose_pairs("knockout", pool, rng=random.Random(0), matches=[("n0", "zz")])


def test_unknown_strategy():
    with pytest.raises(InvalidInput, match="unknown pair strategy"):
        choose_pairs("best", cands([1.0, 2.0]), rng=random.Random(0))


def test_make_comparisons_stores_pairs_with_seeded_sides(db):
    run = store_run(db, ["w", "x", "y", "z"], [0.1, 0.9, 0.5, 0.3], matches=[(0, 1, 1), (2, 3, 2), (1, 2, 1)])
    ids = db.write(lambda s: make_comparisons(s, run, "max_min"))
    [row] = db.read(lambda s: [s.get(Comparison, i) for i in ids])
    cand = {c.id: c.node_id for c in db.read(lambda s: load_run(s, run)).candidates}
    assert (cand[row.candidate_a_id], cand[row.candidate_b_id]) == ("n1", "n0")
    assert row.strategy == "max_min" and row.blind and row.left_side in ("a", "b")
    # the same pair again (another strategy reaching it, or a repeat) reuses the comparison
    assert db.write(lambda s: make_comparisons(s, run, "max_min")) == ids
    knock = db.write(lambda s: make_comparisons(s, run, "knockout"))
    assert len(knock) == 3
    everything = db.write(lambda s: make_comparisons(s, run, "all_pairs", seed=3))
    assert len(everything) == 6 and set(knock) | set(ids) <= set(everything)
    sides = db.read(lambda s: [s.get(Comparison, i).left_side for i in everything])
    assert set(sides) <= {"a", "b"}


def test_sides_depend_on_the_seed_only(db, tmp_path):
    texts = [f"c{i}" for i in range(12)]
    run = store_run(db, texts, [float(i) for i in range(12)])
    ids = db.write(lambda s: make_comparisons(s, run, "all_pairs", seed=11, max_pairs=40))
    sides = db.read(lambda s: [s.get(Comparison, i).left_side for i in ids])
    assert 5 < sides.count("a") < 35  # both sides occur

    with Database.open(f"sqlite:///{tmp_path / 'other.db'}") as other:
        run2 = store_run(other, texts, [float(i) for i in range(12)])
        assert run2 == run
        ids2 = other.write(lambda s: make_comparisons(s, run2, "all_pairs", seed=11, max_pairs=40))
        assert other.read(lambda s: [s.get(Comparison, i).left_side for i in ids2]) == sides


def test_make_comparisons_assigns_and_validates(db):
    run = store_run(db, ["a", "b", "c"], [1.0, 2.0, 3.0])
    ids = db.write(lambda s: make_comparisons(s, run, "random", count=2, assign_to=["ada", "bob"]))
    assert len(ids) == 2
    with pytest.raises(InvalidInput):
        db.write(lambda s: make_comparisons(s, run, "random", count=0))
    with pytest.raises(InvalidInput):
        db.write(lambda s: make_comparisons(s, run, "nope"))


def test_compare_runs_pairs_the_picks_of_runs_on_one_prompt(db):
    r1 = store_run(db, ["a1", "a2"], [1.0, 2.0], sampler="best_of_n", picks=[1])
    r2 = store_run(db, ["b1", "b2"], [1.0, 2.0], sampler="smc", picks=[0])
    r3 = store_run(db, ["c1"], [0.0], sampler="knockout")
    ids = db.write(lambda s: compare_runs(s, [r1, r2, r3]))
    assert len(ids) == 3
    rows = db.read(lambda s: [s.get(Comparison, i) for i in ids])
    assert all(r.strategy == "runs" for r in rows)
    other = store_run(db, ["d"], [1.0], prompt="another prompt")
    with pytest.raises(InvalidInput, match="same prompt"):
        db.write(lambda s: compare_runs(s, [r1, other]))


def test_cross_run_pairs_pit_different_samplers_on_one_prompt_and_never_an_arm_against_itself(db):
    from storage import CROSS_RUN, cross_run_comparisons, present

    best = store_run(db, ["a1", "a2"], [1.0, 2.0], sampler="best_of_n", picks=[1])
    best_again = store_run(db, ["a3"], [0.5], sampler="best_of_n")  # the same arm: its newest run stands for it
    smc = store_run(db, ["b1", "b2"], [1.0, 2.0], sampler="smc", picks=[0])
    other_model = store_run(db, ["c1"], [0.0], sampler="smc", model="other-model")
    elsewhere = store_run(db, ["d1"], [1.0], sampler="knockout", prompt="another prompt")  # alone on its prompt
    ids = db.write(lambda s: cross_run_comparisons(s, [best, best_again, smc, other_model, elsewhere]))
    assert len(ids) == 3  # three arms on the prompt: best_of_n, smc, smc on other-model
    shown = [db.read(lambda s, i=i: present(s, i)) for i in ids]
    arms = [{(x.sampler, x.model) for x in (p.left, p.right)} for p in shown]
    assert all(len(a) == 2 for a in arms)  # never one arm against itself
    texts = {x.text for p in shown for x in (p.left, p.right)}
    assert texts == {"a3", "b1", "c1"}  # the newest best_of_n run's pick, smc's pick, the other model's only candidate
    rows = db.read(lambda s: [s.get(Comparison, i) for i in ids])
    assert {r.strategy for r in rows} == {CROSS_RUN} and all(r.blind for r in rows)
    # the sides are drawn, seeded: the same call again reuses the same comparisons unchanged
    assert db.write(lambda s: cross_run_comparisons(s, [best, best_again, smc, other_model, elsewhere])) == ids
    with pytest.raises(InvalidInput, match="no run 999"):
        db.write(lambda s: cross_run_comparisons(s, [best, 999]))


def test_cross_run_sides_are_random_not_always_the_first_run_on_the_left(db):
    from storage import cross_run_comparisons

    lefts = []
    for k in range(16):
        a = store_run(db, [f"x{k}"], [1.0], sampler="best_of_n", prompt=f"p{k}")
        b = store_run(db, [f"y{k}"], [1.0], sampler="smc", prompt=f"p{k}")
        (cid,) = db.write(lambda s, a=a, b=b: cross_run_comparisons(s, [a, b]))
        lefts.append(db.read(lambda s, cid=cid: s.get(Comparison, cid).left_side))
    assert set(lefts) == {"a", "b"}
