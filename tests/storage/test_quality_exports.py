"""Exports and statistics with label-quality comparisons: side-swapped repeats count once, gold pairs as stated."""

from __future__ import annotations

from collections import Counter

import pytest
from storage_helpers import dump, store_run

from storage import add_vote, export, export_rows, make_comparisons, summary
from storage.errors import InvalidInput
from storage.exports import FORMATS, read_rows
from storage.quality import make_repeats, mark_gold
from storage.records import training_records, vote_records


def cast(db, cid, who, outcome):
    return db.write(
        lambda s: add_vote(s, comparison_id=cid, annotator=who, outcome=outcome, idempotency_key=f"{who}:{cid}")
    ).vote_id


def image(n):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4), color=n).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def quality(db):
    """Four pairs: c0 repeated (ada consistent, bob not), c1 repeated (only cy voted, on the repeat),
    c2 a gold pair (answer a) voted by ada and bob, c3 plain; the candidates are images so that
    every format, Pick-a-Pic included, has rows."""
    run = store_run(db, ["one", "two", "three", "four", "five"], [1.0, 2.0, 3.0, 4.0, 5.0])
    from storage.models import Candidate

    def set_images(s):
        for cand in s.query(Candidate).filter(Candidate.run_id == run):
            cand.image = image(cand.id * 20 % 255)

    db.write(set_images)
    c = db.write(lambda s: make_comparisons(s, run, "all_pairs", max_pairs=4))
    r0, r1 = db.write(lambda s: make_repeats(s, [c[0], c[1]]))
    db.write(lambda s: mark_gold(s, c[2], "a"))
    ids = {
        "ada c0": cast(db, c[0], "ada", "a"), "ada r0": cast(db, r0, "ada", "a"),
        "bob c0": cast(db, c[0], "bob", "a"), "bob r0": cast(db, r0, "bob", "b"),
        "cy r1": cast(db, r1, "cy", "tie"),
        "ada c2": cast(db, c[2], "ada", "a"), "bob c2": cast(db, c[2], "bob", "b"),
        "ada c3": cast(db, c[3], "ada", "b"),
    }
    return c, (r0, r1), ids


def test_a_repeated_pair_is_exported_once_per_annotator_with_the_original_vote(db, quality):
    c, (r0, r1), ids = quality
    dpo = db.read(lambda s: export_rows(s, "dpo"))
    votes = Counter((frozenset((r["chosen"], r["rejected"])), r["annotator"]) for r in dpo)
    assert max(votes.values()) == 1  # no pair twice for one annotator
    by_vote = {r["vote_id"] for r in dpo}
    # ada and bob: the vote on the original counts, the repeat's only in the consistency figures
    assert {ids["ada c0"], ids["bob c0"]} <= by_vote and not {ids["ada r0"], ids["bob r0"]} & by_vote
    for fmt in FORMATS:
        rows = db.read(lambda s, f=fmt: export_rows(s, f))
        assert rows, fmt
        exported = {r.get("vote_id", r.get("ranking_id")) for r in rows}
        assert not {ids["ada r0"], ids["bob r0"]} & exported, fmt
        if fmt == "kto":
            per_vote = Counter(r["vote_id"] for r in rows)
            assert set(per_vote.values()) == {2}  # one pair of rows per vote, none doubled
    # cy voted only on the repeat: that vote is the pair's one label from cy (a tie: kto, battles)
    kto = db.read(lambda s: export_rows(s, "kto"))
    assert {r["vote_id"] for r in kto if r["annotator"] == "cy"} == {ids["cy r1"]}


def test_repeats_all_is_the_behaviour_before_label_quality_and_consistent_drops_disagreements(db, quality):
    c, _, ids = quality
    every = {r.vote_id for r in db.read(vote_records)}
    assert {r["vote_id"] for r in db.read(lambda s: export_rows(s, "battles", repeats="all"))} == every
    consistent = {r["vote_id"] for r in db.read(lambda s: export_rows(s, "battles", repeats="consistent"))}
    assert ids["ada c0"] in consistent  # ada said a twice
    assert ids["bob c0"] not in consistent and ids["bob r0"] not in consistent  # bob said a, then b
    assert ids["cy r1"] in consistent and ids["ada c3"] in consistent
    with pytest.raises(InvalidInput, match="repeat policy"):
        db.read(lambda s: export_rows(s, "dpo", repeats="twice"))


def test_gold_pairs_are_exported_with_the_annotators_votes_or_left_out(db, quality, tmp_path):
    c, _, ids = quality
    dpo = db.read(lambda s: export_rows(s, "dpo"))
    gold_rows = [r for r in dpo if r["comparison_id"] == c[2]]
    # the annotators' votes, as cast (bob disagreed with the known answer); no row for the answer itself
    assert sorted((r["annotator"], r["vote_id"]) for r in gold_rows) == [("ada", ids["ada c2"]), ("bob", ids["bob c2"])]
    without = db.read(lambda s: export_rows(s, "dpo", gold=False))
    assert [r for r in dpo if r["comparison_id"] != c[2]] == without
    before = dump(db)
    n = db.read(lambda s: export(s, "kto", tmp_path / "kto.jsonl", gold=False))
    assert n == len(read_rows(tmp_path / "kto.jsonl")) and all(r["comparison_id"] != c[2] for r in read_rows(tmp_path / "kto.jsonl"))
    assert dump(db) == before


def test_a_gold_pairs_repeat_is_gold_too(db, quality):
    c, (r0, _), ids = quality
    db.write(lambda s: mark_gold(s, c[0], "a"))
    kept = training_records(db.read(vote_records), repeats="all", gold=False)
    assert not {ids["ada c0"], ids["ada r0"], ids["bob r0"]} & {r.vote_id for r in kept}


def test_rankings_count_a_repeated_pair_once(db, quality):
    c, _, ids = quality
    result = db.read(lambda s: summary(s, bootstrap=0))
    all_votes = db.read(lambda s: summary(s, bootstrap=0, repeats="all"))
    assert all_votes["votes"] == 8 and result["votes"] == 6 and result["repeat_votes_left_out"] == 2
    assert result["outcomes"]["a"] == all_votes["outcomes"]["a"] - 1  # ada's repeat 'a' is not a second label
    # position bias still sees every vote: repeats exist to measure it
    assert result["position_bias"] == all_votes["position_bias"]


def test_without_quality_comparisons_every_policy_exports_what_it_did_before(db):
    run = store_run(db, ["x", "y", "z"], [0.0, 1.0, 2.0])
    c = db.write(lambda s: make_comparisons(s, run, "all_pairs"))
    for cid, who, outcome in [(c[0], "ada", "a"), (c[1], "ada", "tie"), (c[0], "bob", "b"), (c[2], "bob", "both_bad")]:
        cast(db, cid, who, outcome)
    for fmt in ("dpo", "kto", "battles"):
        old = db.read(lambda s, f=fmt: export_rows(s, f, repeats="all"))
        assert old and db.read(lambda s, f=fmt: export_rows(s, f)) == old
        assert db.read(lambda s, f=fmt: export_rows(s, f, repeats="consistent", gold=False)) == old
