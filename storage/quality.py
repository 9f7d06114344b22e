"""Label quality control, as labelling tools offer it.

* Overlap: :func:`set_overlap` caps how many annotators vote on an open
  comparison (each pair shown to k annotators); ``next_comparison`` honours it.
* Gold pairs: :func:`mark_gold` gives a comparison a known answer (``a``,
  ``b`` or ``tie``); it stays in the queues like any other, and each
  annotator's accuracy on gold pairs is measured (Wilson 95% interval).
* Side-swapped repeats: :func:`make_repeats` adds, for a comparison, a second
  one with the same candidates and the other side on the left. An annotator
  who votes on both is *self-consistent* when both votes name the same
  candidate (outcomes name candidates, not sides).
* Position bias per annotator: the share of their decisive votes won by the
  candidate on the left (Wilson interval; 1/2 is unbiased).
* Agreement with the others: on comparisons an annotator shares with others,
  the share of (their vote, another's vote) pairs that agree, and Cohen's
  kappa with each other annotator (weighted by shared comparisons); plus the
  overall Krippendorff's alpha (``storage.stats.annotator_agreement``).

Votes on repeats count in the consistency figures only, not in agreement or
gold accuracy (the original pair already counts).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import InvalidInput
from storage.models import Assignment, Comparison, ComparisonQuality
from storage.records import VoteRecord, vote_records
from storage.rows import require
from storage.stats import LABELS, Proportion, _kappa, annotator_agreement

GOLD_ANSWERS = ("a", "b", "tie")


def _row(session: Session, comparison_id: int) -> ComparisonQuality:
    require(session, Comparison, comparison_id, "comparison")
    row = session.get(ComparisonQuality, comparison_id)
    if row is None:
        row = ComparisonQuality(comparison_id=comparison_id)
        session.add(row)
    return row


def set_overlap(session: Session, comparison_ids: Sequence[int], k: int | None) -> None:
    """At most ``k`` annotators vote on each of these comparisons while it is open (None: no cap)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000):
        raise InvalidInput(f"overlap must be an integer from 1 to 1000, got {k!r}")
    for cid in comparison_ids:
        _row(session, cid).overlap = k
    session.flush()


def mark_gold(session: Session, comparison_id: int, answer: str) -> None:
    """Give a comparison a known answer (``a``, ``b`` or ``tie``, naming candidates)."""
    if answer not in GOLD_ANSWERS:
        raise InvalidInput(f"a gold answer is one of {', '.join(GOLD_ANSWERS)}, got {answer!r}")
    _row(session, comparison_id).gold = answer
    session.flush()


def make_repeats(session: Session, comparison_ids: Sequence[int]) -> list[int]:
    """For each comparison, a new one with the same candidates and the sides swapped; their ids.

    A repeat keeps the original's queue (its assignments) and blindness.
    """
    out = []
    for cid in comparison_ids:
        original = require(session, Comparison, cid, "comparison")
        if session.get(ComparisonQuality, cid) is not None and session.get(ComparisonQuality, cid).repeat_of_id:
            raise InvalidInput(f"comparison {cid} is itself a repeat; repeat the original")
        repeat = Comparison(
            prompt_id=original.prompt_id,
            candidate_a_id=original.candidate_a_id,
            candidate_b_id=original.candidate_b_id,
            left_side="b" if original.left_side == "a" else "a",
            blind=original.blind,
            strategy="repeat",
        )
        session.add(repeat)
        session.flush()
        session.add(ComparisonQuality(comparison_id=repeat.id, repeat_of_id=original.id))
        for annotator_id in session.scalars(select(Assignment.annotator_id).where(Assignment.comparison_id == cid)):
            session.add(Assignment(comparison_id=repeat.id, annotator_id=annotator_id))
        session.flush()
        out.append(repeat.id)
    return out


def quality_rows(session: Session) -> dict[int, ComparisonQuality]:
    return {row.comparison_id: row for row in session.scalars(select(ComparisonQuality))}


def annotator_quality(records: Sequence[VoteRecord], rows: dict[int, ComparisonQuality]) -> list[dict[str, Any]]:
    """One row per annotator: agreement, kappa, gold accuracy, position bias, self-consistency."""
    repeats = {cid: row.repeat_of_id for cid, row in rows.items() if row.repeat_of_id}
    gold = {cid: row.gold for cid, row in rows.items() if row.gold}
    labels: dict[str, dict[int, str]] = defaultdict(dict)  # originals only
    repeat_votes: dict[str, dict[int, str]] = defaultdict(dict)  # original id -> outcome on its repeat
    left_wins: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rec in records:
        if rec.outcome not in LABELS:
            continue
        if rec.decisive:
            counts = left_wins[rec.annotator]
            counts[0] += rec.winner.candidate_id == rec.left.candidate_id
            counts[1] += 1
        if rec.comparison_id in repeats:
            repeat_votes[rec.annotator][repeats[rec.comparison_id]] = rec.outcome
        else:
            labels[rec.annotator][rec.comparison_id] = rec.outcome
    names = sorted(set(labels) | set(repeat_votes))
    agree: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    kappas: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for first, second in itertools.combinations(names, 2):
        shared = sorted(set(labels[first]) & set(labels[second]))
        if not shared:
            continue
        same = sum(labels[first][c] == labels[second][c] for c in shared)
        kappa = _kappa([labels[first][c] for c in shared], [labels[second][c] for c in shared])
        for who in (first, second):
            agree[who][0] += same
            agree[who][1] += len(shared)
            if kappa is not None:
                kappas[who].append((kappa, len(shared)))
    table = []
    for name in names:
        gold_n = [c for c in labels[name] if c in gold]
        gold_p = Proportion.of(sum(labels[name][c] == gold[c] for c in gold_n), len(gold_n))
        consistent = [c for c in repeat_votes[name] if c in labels[name]]
        consistency = Proportion.of(sum(repeat_votes[name][c] == labels[name][c] for c in consistent), len(consistent))
        agreement = Proportion.of(*agree[name])
        weighted = kappas[name]
        table.append(
            {
                "annotator": name,
                "votes": len(labels[name]) + len(repeat_votes[name]),
                "agreement": agreement.rate,
                "agreement_n": agreement.n,
                "kappa": sum(k * n for k, n in weighted) / sum(n for _, n in weighted) if weighted else None,
                "gold": asdict(gold_p),
                "gold_accuracy": gold_p.rate,
                "position_bias": asdict(Proportion.of(*left_wins[name])),
                "self_consistency": asdict(consistency),
            }
        )
    return table


def quality_summary(session: Session) -> dict[str, Any]:
    """Every annotator's quality figures, the gold and repeat comparisons, and Krippendorff's alpha."""
    rows = quality_rows(session)
    records = vote_records(session)
    originals = [r for r in records if not (rows.get(r.comparison_id) and rows[r.comparison_id].repeat_of_id)]
    return {
        "annotators": annotator_quality(records, rows),
        "gold_ids": sorted(cid for cid, row in rows.items() if row.gold),
        "repeat_ids": sorted(cid for cid, row in rows.items() if row.repeat_of_id),
        "overlap": {cid: row.overlap for cid, row in rows.items() if row.overlap},
        "krippendorff_alpha": annotator_agreement(originals)["krippendorff_alpha"],
    }
