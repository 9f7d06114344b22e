"""Label quality: overlap caps, gold pairs, side-swapped repeats, per-annotator agreement; uncertain pairs."""

from __future__ import annotations

import random

import pytest

from storage import add_vote, make_comparisons
from storage.errors import InvalidInput
from storage.pairs import PairCandidate, choose_pairs, uncertain_pairs
from storage.quality import make_repeats, mark_gold, quality_summary, set_overlap
from storage.votes import next_comparison, present
from tests.storage.storage_helpers import dump, store_run


def _vote(db, cid, who, outcome):
    return db.write(lambda s: add_vote(s, comparison_id=cid, annotator=who, outcome=outcome, idempotency_key=f"{who}-{cid}"))


def _comparisons(db, n=3):
    run_id = store_run(db, [f"text {i}" for i in range(6)], [float(i) for i in range(6)])
    return db.write(lambda s: make_comparisons(s, run_id, "all_pairs", max_pairs=n))


def test_overlap_caps_how_many_annotators_see_an_open_pair(db):
    (cid,) = _comparisons(db, 1)
    db.write(lambda s: set_overlap(s, [cid], 2))
    for who in ("ann", "bob"):
        assert db.read(lambda s, w=who: next_comparison(s, w)).comparison_id == cid
        _vote(db, cid, who, "a")
    assert db.read(lambda s: next_comparison(s, "cat")) is None  # two annotators had it: no third
    with pytest.raises(InvalidInput):
        db.write(lambda s: set_overlap(s, [cid], 0))


def test_gold_accuracy_per_annotator(db):
    ids = _comparisons(db, 3)
    for cid in ids:
        db.write(lambda s, c=cid: mark_gold(s, c, "a"))
    for cid in ids:
        _vote(db, cid, "good", "a")
    for cid, outcome in zip(ids, ("a", "b", "b"), strict=True):
        _vote(db, cid, "sloppy", outcome)
    rows = {r["annotator"]: r for r in db.read(quality_summary)["annotators"]}
    assert rows["good"]["gold"]["successes"] == 3 and rows["good"]["gold_accuracy"] == 1.0
    assert rows["sloppy"]["gold_accuracy"] == pytest.approx(1 / 3)
    assert rows["good"]["agreement"] == pytest.approx(1 / 3)  # they agree on one of three shared pairs
    before = dump(db)
    with pytest.raises(InvalidInput, match="gold answer"):
        db.write(lambda s: mark_gold(s, ids[0], "both_bad"))
    assert dump(db) == before


def test_side_swapped_repeats_measure_consistency_and_position_bias(db):
    ids = _comparisons(db, 3)
    repeats = db.write(lambda s: make_repeats(s, ids))
    for original, repeat in zip(ids, repeats, strict=True):
        first, second = db.read(lambda s, o=original: present(s, o)), db.read(lambda s, r=repeat: present(s, r))
        assert second.left.candidate_id == first.right.candidate_id  # the sides are swapped
        # "lefty" always presses left: on a swapped repeat that names the other candidate
        _vote(db, original, "lefty", first.left_side)
        _vote(db, repeat, "lefty", second.left_side)
        _vote(db, original, "steady", "a")
        _vote(db, repeat, "steady", "a")
    summary = db.read(quality_summary)
    rows = {r["annotator"]: r for r in summary["annotators"]}
    assert rows["lefty"]["self_consistency"]["rate"] == 0.0 and rows["lefty"]["position_bias"]["rate"] == 1.0
    assert rows["steady"]["self_consistency"]["rate"] == 1.0
    assert summary["repeat_ids"] == repeats
    with pytest.raises(InvalidInput, match="itself a repeat"):
        db.write(lambda s: make_repeats(s, [repeats[0]]))


def test_uncertain_pairs_are_closest_to_a_coin_flip():
    cands = [PairCandidate(id=i, node_id=f"n{i}", reward=None, content=(f"t{i}", None)) for i in range(4)]
    scores = [0.0, 0.1, 3.0, -3.0]
    assert uncertain_pairs(cands, scores, 1) == [(0, 1)]
    # with another reward that ranks 0 and 1 the same way, a disagreement elsewhere wins
    other = [0.0, 0.1, -3.0, 3.0]
    assert uncertain_pairs(cands, scores, 1, other=other, weight=0.9) == [(2, 3)]
    with pytest.raises(InvalidInput, match="needs the learned reward"):
        choose_pairs("uncertain:x", cands, rng=random.Random(0))
    picked = choose_pairs("uncertain:x", cands, rng=random.Random(0), scorer=lambda prompt, contents: scores, count=2)
    assert picked == [(0, 1), (1, 2)]  # u = 0.95, then 0.105


def test_uncertain_strategy_stores_comparisons_with_overlap(db):
    run_id = store_run(db, ["a", "bb", "ccc", "dddd"], [0.0, 1.0, 2.0, 3.0])
    seen = []

    def scorer(prompt, contents):
        seen.append(prompt)
        return [float(len(text)) * (1 if len(text) != 4 else 0.5) for text, _ in contents]

    ids = db.write(lambda s: make_comparisons(s, run_id, "uncertain:toy", count=1, scorer=scorer, overlap=1))
    pair = db.read(lambda s: present(s, ids[0]))
    assert {pair.left.text, pair.right.text} == {"bb", "dddd"}  # lengths 2 and 2.0 after the half weight
    assert seen == ["Say something nice."]
    assert db.read(quality_summary)["overlap"] == {ids[0]: 1}
