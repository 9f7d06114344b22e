"""Statistics, checked against hand calculations and independent fits."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from storage_helpers import store_run

from storage import add_vote, compare_runs
from storage.records import Side, VoteRecord
from storage.stats import (
    ELO_SCALE,
    annotator_agreement,
    bradley_terry,
    position_bias,
    reward_agreement,
    summary,
)

_ids = itertools.count(1)


def side(sampler="s", reward=None, reward_name="r", model="m"):
    cid = next(_ids)
    return Side(
        candidate_id=cid,
        run_id=1,
        text=f"t{cid}",
        image=None,
        reward=reward,
        model=model,
        sampler=sampler,
        reward_name=reward_name,
    )


def record(outcome, a=None, b=None, *, annotator="ada", comparison_id=None, left_side="a"):
    return VoteRecord(
        vote_id=next(_ids),
        comparison_id=comparison_id or next(_ids),
        annotator=annotator,
        outcome=outcome,
        rationale=None,
        left_side=left_side,
        blind=True,
        strategy="x",
        prompt="p",
        a=a or side(),
        b=b or side(),
        voted_at=datetime.now(UTC),
        latency_ms=None,
    )


def wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_reward_agreement_counts_decisive_votes_with_different_rewards():
    recs = [
        record("a", side(reward=2.0), side(reward=1.0)),  # agrees
        record("b", side(reward=2.0), side(reward=1.0)),  # disagrees
        record("b", side(reward=0.0), side(reward=1.0)),  # agrees
        record("a", side(reward=3.0), side(reward=-1.0)),  # agrees
        record("tie", side(reward=3.0), side(reward=1.0)),  # not decisive
        record("a", side(reward=1.0), side(reward=1.0)),  # equal rewards: skipped, counted
        record("a", side(reward=None), side(reward=1.0)),  # unscored
        record("a", side(reward=5.0, reward_name="x"), side(reward=1.0)),  # different rewards
    ]
    result = reward_agreement(recs)
    overall = result["overall"]
    assert (overall["successes"], overall["n"]) == (3, 4) and overall["rate"] == 0.75
    assert (overall["low"], overall["high"]) == pytest.approx(wilson(3, 4))
    assert result["equal_rewards_skipped"] == 1 and set(result["by_reward"]) == {"r"}
    assert reward_agreement([])["overall"]["rate"] is None


def test_cohen_kappa_matches_the_hand_formula():
    x = ["a", "a", "b", "b", "tie", "a", "b", "both_bad", "a", "b"]
    y = ["a", "b", "b", "b", "tie", "a", "a", "both_bad", "a", "tie"]
    recs = [record(o, annotator="ada", comparison_id=100 + i) for i, o in enumerate(x)]
    recs += [record(o, annotator="bob", comparison_id=100 + i) for i, o in enumerate(y)]
    recs += [record("a", annotator="bob", comparison_id=999)]  # not shared: ignored by kappa
    [pair] = annotator_agreement(recs)["pairs"]
    po = sum(p == q for p, q in zip(x, y, strict=True)) / len(x)
    pe = sum((x.count(c) / len(x)) * (y.count(c) / len(y)) for c in ("a", "b", "tie", "both_bad"))
    assert pair["n"] == 10 and pair["agreement"] == po
    assert pair["kappa"] == pytest.approx((po - pe) / (1 - pe))


def nominal_alpha(units):
    """Krippendorff's alpha, nominal, from the coincidence matrix (hand implementation)."""
    values = sorted({v for u in units for v in u})
    o = {(c, k): 0.0 for c in values for k in values}
    for u in units:
        m = len(u)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            o[(u[i], u[j])] += 1 / (m - 1)
    n_c = {c: sum(o[(c, k)] for k in values) for c in values}
    n = sum(n_c.values())
    d_o = sum(o[(c, k)] for c in values for k in values if c != k)
    d_e = sum(n_c[c] * n_c[k] for c in values for k in values if c != k) / (n - 1)
    return 1 - d_o / d_e


def test_krippendorff_alpha_matches_the_coincidence_matrix():
    units = [["a", "a", "b"], ["b", "b"], ["tie", "tie", "tie"], ["a", "b"], ["both_bad", "both_bad"], ["a"]]
    names = ["ada", "bob", "cy"]
    recs = [
        record(v, annotator=names[j], comparison_id=500 + i)
        for i, u in enumerate(units)
        for j, v in enumerate(u)
    ]
    result = annotator_agreement(recs)
    assert result["krippendorff_alpha"] == pytest.approx(nominal_alpha(units))
    assert result["comparisons_with_two_or_more"] == 5 and result["annotators"] == 3
    assert len(result["pairs"]) == 3


def test_undefined_agreement_is_none():
    same = [record("a", annotator=n, comparison_id=1) for n in ("ada", "bob")]
    result = annotator_agreement(same)
    assert result["pairs"][0]["agreement"] == 1.0
    assert result["pairs"][0]["kappa"] is None  # one label only: chance agreement is 1
    assert annotator_agreement([record("a")])["krippendorff_alpha"] is None


def simulate(strengths, n, rng, tie_rate=0.0):
    names = list(strengths)
    recs = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        if rng.random() < tie_rate:
            outcome = "tie"
        else:
            p = 1 / (1 + math.exp(strengths[b] - strengths[a]))
            outcome = "a" if rng.random() < p else "b"
        recs.append(record(outcome, side(sampler=a), side(sampler=b)))
    return recs


def test_bradley_terry_recovers_strengths_with_intervals():
    truth = {"best_of_n": 1.0, "smc": 0.0, "greedy": -1.0}
    recs = simulate(truth, 3000, np.random.default_rng(0))
    table = bradley_terry(recs, bootstrap=50, seed=1)
    assert [row["name"] for row in table] == ["best_of_n", "smc", "greedy"]
    theta = {row["name"]: (row["rating"] - 1000) / ELO_SCALE for row in table}
    assert theta["best_of_n"] - theta["smc"] == pytest.approx(1.0, abs=0.15)
    assert theta["smc"] - theta["greedy"] == pytest.approx(1.0, abs=0.15)
    for row in table:
        assert row["low"] < row["rating"] < row["high"]
        assert row["high"] - row["low"] < 60  # 3000 battles pin ratings down to tens of Elo points
    assert sum(row["battles"] for row in table) == 2 * 3000
    # same seed, same intervals
    assert bradley_terry(recs, bootstrap=50, seed=1) == table


def test_bradley_terry_agrees_with_fastchat_style_logistic_regression():
    recs = simulate({"p": 0.5, "q": 0.0, "r": -0.3, "s": 0.2}, 800, np.random.default_rng(3), tie_rate=0.2)
    table = {row["name"]: (row["rating"] - 1000) / ELO_SCALE for row in bradley_terry(recs, bootstrap=0)}
    names = sorted(table)
    rows, ys, weights = [], [], []
    for rec in recs:  # FastChat duplicates a tie as a win for each side; weigh each copy 1/2
        x = np.zeros(len(names))
        x[names.index(rec.a.sampler)], x[names.index(rec.b.sampler)] = 1, -1
        for y in [1] if rec.outcome == "a" else [0] if rec.outcome == "b" else [1, 0]:
            rows.append(x)
            ys.append(y)
            weights.append(1.0 if rec.outcome in ("a", "b") else 0.5)
    lr = LogisticRegression(fit_intercept=False, C=1e6, tol=1e-10, max_iter=10000)
    lr.fit(np.array(rows), ys, sample_weight=weights)
    coef = lr.coef_[0] - lr.coef_[0].mean()
    ours = np.array([table[n] for n in names])
    assert ours - ours.mean() == pytest.approx(coef, abs=0.01)  # only our weak ridge differs


def test_bradley_terry_edge_cases():
    unbeaten = [record("a", side(sampler="x"), side(sampler="y")) for _ in range(5)]
    table = bradley_terry(unbeaten, bootstrap=10)
    assert table[0]["name"] == "x" and all(math.isfinite(r["rating"]) for r in table)
    assert bradley_terry([record("a", side(sampler="x"), side(sampler="x"))]) == []  # self battles
    ties = [record("tie", side(sampler="x"), side(sampler="y")) for _ in range(4)]
    table = bradley_terry(ties, bootstrap=0)
    assert table[0]["rating"] == pytest.approx(table[1]["rating"]) and table[0]["score"] == 2.0


def test_position_bias_is_the_left_win_rate():
    recs = [record("a", left_side="a") for _ in range(7)] + [record("b", left_side="a") for _ in range(3)]
    recs += [record("b", left_side="b") for _ in range(2)] + [record("tie", left_side="a")]
    result = position_bias(recs)
    assert (result["successes"], result["n"]) == (9, 12)
    assert (result["low"], result["high"]) == pytest.approx(wilson(9, 12))
    assert 0 < result["p_value"] < 1


def test_summary_from_the_database_is_json_ready(db):
    r1 = store_run(db, ["x1"], [1.0], sampler="best_of_n")
    r2 = store_run(db, ["y1"], [0.0], sampler="smc")
    r3 = store_run(db, ["z1"], [0.5], sampler="greedy")
    cids = db.write(lambda s: compare_runs(s, [r1, r2, r3]))
    for who in ("ada", "bob"):
        for cid in cids:
            db.write(
                lambda s, c=cid, w=who: add_vote(
                    s, comparison_id=c, annotator=w, outcome="a", idempotency_key=f"{w}{c}"
                )
            )
    result = db.read(lambda s: summary(s, bootstrap=20))
    json.dumps(result, allow_nan=False)
    assert result["votes"] == 6 and result["outcomes"]["a"] == 6
    assert result["reward_agreement"]["overall"]["n"] == 6
    assert result["annotator_agreement"]["pairs"][0]["agreement"] == 1.0
    assert len(result["ranking"]["players"]) == 3
