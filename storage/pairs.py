"""Pair strategies: which candidates of a run to show side by side.

Each strategy is a pure function of the run's candidates (and its knockout
matches), so it is testable without a database; :func:`make_comparisons`
stores the pairs it picks as comparisons.

=============  ==================================================================
strategy       pair(s)
=============  ==================================================================
random         ``count`` distinct pairs drawn uniformly by a seeded rng
max_min        highest-reward vs lowest-reward candidate (the conventional DPO
               construction)
sweet_spot     highest-reward vs the candidate whose reward is nearest
               mu - 2 sigma of the run's rewards. Xiao et al., "Finding the
               Sweet Spot: Preference Data Construction for Scaling Preference
               Optimization", ACL 2025 (arXiv:2502.16825): with many samples,
               the minimum-reward rejection hurts; the rejected response at
               mu - 2 sigma works best. mu, sigma: mean and (population)
               standard deviation of the candidates' rewards.
knockout       the games of the run's knockout tournament (``match`` events;
               byes are skipped), in play order
all_pairs      every pair, or a seeded uniform sample of ``max_pairs`` of them
uncertain:R    the ``count`` pairs where the learned reward R is least sure:
               P(a beats b) = sigmoid(r_a - r_b) closest to 1/2 (uncertainty
               sampling, Lewis & Gale 1994; for preference labels, the
               active-learning baseline of e.g. Mukherjee et al. 2024,
               "Optimal Design for Human Preference Elicitation"). With a
               second reward q, the priority is (1 - w) * u + w * |p - q|,
               u = 1 - |2p - 1|, p and q the two rewards' P(a beats b):
               pairs where they disagree come first as well.
=============  ==================================================================

Across runs (:func:`cross_run_comparisons`, strategy ``across_runs``): the picks
of runs on the same prompt with different samplers or models, e.g. the cells of
a Compare sweep. Only these pairs can rank samplers: a pair within one run has
the same sampler and model on both sides.

``uncertain:R`` needs the rewards' values of the run's candidates; storage
runs no model, so the caller passes a ``scorer`` (candidate contents -> R's
values, and optionally ``other_scorer`` for q).

Candidates with identical content (same text and image) are merged first,
keeping the first: a preference between identical outputs carries no signal
(and would give DPO a chosen equal to its rejected). Reward-based strategies
use only candidates with a finite reward. Candidate A is the first of the pair
(the higher reward where rewards decide); which one is shown on the left is
drawn by the seeded rng and recorded in ``comparisons.left_side``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from storage.errors import InvalidInput
from storage.models import Candidate, Comparison, Run
from storage.runs import load_run

STRATEGIES = ("random", "max_min", "sweet_spot", "knockout", "all_pairs")
#: strategies that take an argument (not in STRATEGIES, which lists the ones usable as they are)
PARAMETRIC = ("uncertain:NAME",)

#: (prompt, candidate contents (text, image)) -> one reward value per candidate
Scorer = Callable[[str, Sequence[tuple[str, str | None]]], Sequence[float]]


@dataclass(frozen=True)
class PairCandidate:
    id: int
    node_id: str
    reward: float | None
    content: tuple[str, str | None]  # (text, image): identical content is merged


Pair = tuple[int, int]


def unique_content(candidates: Sequence[PairCandidate]) -> list[PairCandidate]:
    seen: set[tuple[str, str | None]] = set()
    out = []
    for cand in candidates:
        if cand.content not in seen:
            seen.add(cand.content)
            out.append(cand)
    return out


def _rewarded(candidates: Sequence[PairCandidate]) -> list[PairCandidate]:
    return [c for c in candidates if c.reward is not None and np.isfinite(c.reward)]


def random_pairs(candidates: Sequence[PairCandidate], rng: random.Random, count: int = 1) -> list[Pair]:
    pool = list(itertools.combinations([c.id for c in candidates], 2))
    return rng.sample(pool, min(count, len(pool)))


def max_min_pair(candidates: Sequence[PairCandidate]) -> list[Pair]:
    scored = _rewarded(candidates)
    if len(scored) < 2:
        return []
    best = max(scored, key=lambda c: c.reward)  # first of equals: max/min keep the earliest
    worst = min(scored, key=lambda c: c.reward)
    return [] if best.id == worst.id else [(best.id, worst.id)]


def sweet_spot_pair(candidates: Sequence[PairCandidate], k: float = 2.0) -> list[Pair]:
    """Highest reward vs the candidate nearest mu - k*sigma (k = 2 in the paper)."""
    scored = _rewarded(candidates)
    if len(scored) < 2:
        return []
    rewards = np.array([c.reward for c in scored], dtype=float)
    target = rewards.mean() - k * rewards.std()
    best = max(scored, key=lambda c: c.reward)
    others = [c for c in scored if c.id != best.id]
    rejected = min(others, key=lambda c: abs(c.reward - target))
    return [(best.id, rejected.id)]


def knockout_pairs(
    candidates: Sequence[PairCandidate], matches: Sequence[tuple[str, str | None]]
) -> list[Pair]:
    by_node = {c.node_id: c.id for c in candidates}
    pairs = []
    for a, b in matches:
        if b is None:
            continue  # a bye
        if a not in by_node or b not in by_node:
            missing = a if a not in by_node else b
            raise InvalidInput(f"knockout match names node {missing!r}, which is not a stored candidate")
        pair = (by_node[a], by_node[b])
        if pair[0] != pair[1] and pair not in pairs:
            pairs.append(pair)
    return pairs


def all_pairs(candidates: Sequence[PairCandidate], rng: random.Random, max_pairs: int) -> list[Pair]:
    pool = list(itertools.combinations([c.id for c in candidates], 2))
    if len(pool) <= max_pairs:
        return pool
    keep = sorted(rng.sample(range(len(pool)), max_pairs))
    return [pool[i] for i in keep]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def pair_priority(
    scores: Sequence[float], other: Sequence[float] | None = None, weight: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, priority) for every pair i < j of candidates (see the module docstring)."""
    if not 0 <= weight <= 1:
        raise InvalidInput(f"the disagreement weight must be in [0, 1], got {weight}")
    r = np.asarray(scores, dtype=float)
    ia, ib = np.triu_indices(len(r), k=1)
    p = _sigmoid(r[ia] - r[ib])
    priority = 1 - np.abs(2 * p - 1)
    if other is not None:
        q_scores = np.asarray(other, dtype=float)
        q = _sigmoid(q_scores[ia] - q_scores[ib])
        priority = (1 - weight) * priority + weight * np.abs(p - q)
    return ia, ib, priority


def uncertain_pairs(
    candidates: Sequence[PairCandidate],
    scores: Sequence[float],
    count: int = 1,
    *,
    other: Sequence[float] | None = None,
    weight: float = 0.5,
) -> list[Pair]:
    """The ``count`` pairs with the highest priority (see the module docstring); ties by order."""
    if len(scores) != len(candidates) or (other is not None and len(other) != len(candidates)):
        raise InvalidInput("uncertain pairs need one score per candidate")
    ia, ib, priority = pair_priority(scores, other, weight)
    order = np.argsort(-priority, kind="stable")[:count]
    return [(candidates[ia[k]].id, candidates[ib[k]].id) for k in order]


def choose_pairs(
    strategy: str,
    candidates: Sequence[PairCandidate],
    *,
    rng: random.Random,
    matches: Sequence[tuple[str, str | None]] = (),
    count: int = 1,
    max_pairs: int = 100,
    prompt: str = "",
    scorer: Scorer | None = None,
    other_scorer: Scorer | None = None,
) -> list[Pair]:
    """The pairs ``strategy`` picks from ``candidates`` (after merging identical content)."""
    if strategy == "knockout":  # the tournament's own games, even between equal texts
        by_id = {c.id: c for c in candidates}
        return [p for p in knockout_pairs(candidates, matches) if by_id[p[0]].content != by_id[p[1]].content]
    pool = unique_content(candidates)
    if strategy.startswith("uncertain:"):
        if scorer is None:
            raise InvalidInput(f"{strategy} needs the learned reward's scores (the app and CLI pass them)")
        contents = [c.content for c in pool]
        other = list(other_scorer(prompt, contents)) if other_scorer is not None else None
        return uncertain_pairs(pool, list(scorer(prompt, contents)), count, other=other)
    choosers: dict[str, Callable[[], list[Pair]]] = {
        "random": lambda: random_pairs(pool, rng, count),
        "max_min": lambda: max_min_pair(pool),
        "sweet_spot": lambda: sweet_spot_pair(pool),
        "all_pairs": lambda: all_pairs(pool, rng, max_pairs),
    }
    if strategy not in choosers:
        raise InvalidInput(f"unknown pair strategy {strategy!r}; choose one of {', '.join(STRATEGIES + PARAMETRIC)}")
    return choosers[strategy]()


def draw_sides(rng: random.Random, n: int) -> list[str]:
    """Which candidate ('a' or 'b') each of ``n`` comparisons shows on the left."""
    return ["a" if rng.random() < 0.5 else "b" for _ in range(n)]


def store_pairs(
    session: Session,
    prompt_id: int,
    pairs: Sequence[Pair],
    *,
    strategy: str,
    sides: Sequence[str],
    blind: bool,
) -> list[int]:
    """Comparisons for ``pairs`` (left side from ``sides``); their ids.

    A pair that already has a comparison, in either order, reuses it unchanged.
    """
    ids = []
    for (a, b), left in zip(pairs, sides, strict=True):
        existing = session.scalars(
            select(Comparison.id).where(
                or_(
                    and_(Comparison.candidate_a_id == a, Comparison.candidate_b_id == b),
                    and_(Comparison.candidate_a_id == b, Comparison.candidate_b_id == a),
                )
            )
        ).first()
        if existing is not None:
            ids.append(existing)
            continue
        comparison = Comparison(
            prompt_id=prompt_id,
            candidate_a_id=a,
            candidate_b_id=b,
            left_side=left,
            blind=blind,
            strategy=strategy,
        )
        session.add(comparison)
        session.flush()
        ids.append(comparison.id)
    return ids


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise InvalidInput(f"{name} must be an integer from 1 to 100000, got {value!r}")


def make_comparisons(
    session: Session,
    run_id: int,
    strategy: str,
    *,
    seed: int = 0,
    count: int = 1,
    max_pairs: int = 100,
    blind: bool = True,
    assign_to: Sequence[str] = (),
    scorer: Scorer | None = None,
    other_scorer: Scorer | None = None,
    overlap: int | None = None,
) -> list[int]:
    """Comparisons between candidates of one run, chosen by ``strategy``; their ids.

    ``assign_to`` puts them in those annotators' queues (then only they may vote);
    ``overlap`` caps how many annotators vote on each (``storage.quality``).
    """
    from storage.votes import assign  # votes imports nothing of pairs; avoid a cycle at import time

    _check_count(count, "count")
    _check_count(max_pairs, "max_pairs")
    if strategy not in STRATEGIES and not (strategy.startswith("uncertain:") and len(strategy) > 10):
        raise InvalidInput(f"unknown pair strategy {strategy!r}; choose one of {', '.join(STRATEGIES + PARAMETRIC)}")
    stored = load_run(session, run_id)
    candidates = [
        PairCandidate(id=c.id, node_id=c.node_id, reward=c.reward, content=(c.text, c.image))
        for c in stored.candidates
    ]
    matches = [(m.a, m.b) for m in stored.trace.matches]
    rng = random.Random(f"{seed}:{run_id}:{strategy}")
    pairs = choose_pairs(
        strategy, candidates, rng=rng, matches=matches, count=count, max_pairs=max_pairs,
        prompt=stored.prompt, scorer=scorer, other_scorer=other_scorer,
    )
    prompt_id = session.scalars(select(Run.prompt_id).where(Run.id == run_id)).one()
    ids = store_pairs(
        session, prompt_id, pairs, strategy=strategy, sides=draw_sides(rng, len(pairs)), blind=blind
    )
    if assign_to:
        assign(session, ids, assign_to)
    if overlap is not None:
        from storage.quality import set_overlap

        set_overlap(session, ids, overlap)
    return ids


def _representative(session: Session, run: Run) -> Candidate:
    """A run's answer: its first picked candidate, else its highest-reward one."""
    cands = session.scalars(select(Candidate).where(Candidate.run_id == run.id).order_by(Candidate.id)).all()
    picked = [c for c in cands if c.picked]
    scored = [c for c in cands if c.reward is not None]
    choice = picked[0] if picked else (max(scored, key=lambda c: c.reward) if scored else None)
    if choice is None:
        raise InvalidInput(f"run {run.id} has no picked or rewarded candidate to compare")
    return choice


def compare_runs(
    session: Session,
    run_ids: Sequence[int],
    *,
    seed: int = 0,
    blind: bool = True,
    assign_to: Sequence[str] = (),
) -> list[int]:
    """Comparisons between the final picks of runs on the same prompt (sampler vs sampler).

    Each run contributes its first picked candidate (or, if it picked none, its
    highest-reward one); every pair of runs gives one comparison. These are the
    battles the Bradley-Terry ranking of samplers is fitted on.
    """
    from storage.votes import assign

    runs = [session.get(Run, rid) for rid in run_ids]
    if len(run_ids) < 2 or any(r is None for r in runs):
        raise InvalidInput("compare_runs needs at least two existing run ids")
    if len({r.prompt_id for r in runs}) != 1:
        raise InvalidInput("compare_runs needs runs on the same prompt")
    representatives = [_representative(session, run) for run in runs]
    pairs = [
        (x.id, y.id)
        for x, y in itertools.combinations(representatives, 2)
        if (x.text, x.image) != (y.text, y.image)
    ]
    rng = random.Random(f"{seed}:runs:{','.join(map(str, run_ids))}")
    sides = draw_sides(rng, len(pairs))
    ids = store_pairs(session, runs[0].prompt_id, pairs, strategy="runs", sides=sides, blind=blind)
    if assign_to:
        assign(session, ids, assign_to)
    return ids


#: the pair source that answers "which sampler (or model) is better": picks of different runs on one prompt
CROSS_RUN = "across_runs"


def cross_run_comparisons(
    session: Session,
    run_ids: Sequence[int],
    *,
    seed: int = 0,
    per_prompt: int = 6,
    blind: bool = True,
    assign_to: Sequence[str] = (),
) -> list[int]:
    """Blind comparisons between the picks of runs that share a prompt but differ in sampler or model.

    ``run_ids`` are grouped by prompt; within a prompt, each (sampler, model) arm is
    represented by its newest run's pick (:func:`_representative`), and every two arms
    give one comparison, at most ``per_prompt`` per prompt (a seeded sample). Pairs of
    one arm with itself are never made: they cannot say which sampler is better.
    Runs without a pick or reward, and pairs with identical content, are left out.
    Sides are drawn by the seeded rng (``comparisons.left_side``); strategy
    ``across_runs``. These are the battles the Bradley-Terry ranking is fitted on.
    """
    from storage.votes import assign

    _check_count(per_prompt, "per_prompt")
    runs = [session.get(Run, int(rid)) for rid in dict.fromkeys(run_ids)]
    missing = [rid for rid, run in zip(dict.fromkeys(run_ids), runs, strict=True) if run is None]
    if missing:
        raise InvalidInput(f"no run {missing[0]}")
    by_prompt: dict[int, dict[tuple[str, str], Run]] = {}
    for run in sorted(runs, key=lambda r: r.id):
        by_prompt.setdefault(run.prompt_id, {})[(run.sampler, run.model)] = run  # the newest run of an arm wins
    rng = random.Random(f"{seed}:{CROSS_RUN}:{','.join(map(str, sorted(r.id for r in runs)))}")
    ids: list[int] = []
    for prompt_id, arms in sorted(by_prompt.items()):
        picks = []
        for run in arms.values():
            try:
                picks.append(_representative(session, run))
            except InvalidInput:
                continue  # a run with nothing picked or scored has no answer to compare
        pairs = [(x.id, y.id) for x, y in itertools.combinations(picks, 2) if (x.text, x.image) != (y.text, y.image)]
        if len(pairs) > per_prompt:
            pairs = rng.sample(pairs, per_prompt)
        ids += store_pairs(session, prompt_id, pairs, strategy=CROSS_RUN, sides=draw_sides(rng, len(pairs)), blind=blind)
    if assign_to:
        assign(session, ids, assign_to)
    return ids


#: a candidate of a stored run, by the run and the trace's node id
NodeRef = tuple[int, str]


def store_built_pairs(
    session: Session,
    pairs: Sequence[tuple[NodeRef, NodeRef]],
    *,
    strategy: str,
    seed: int = 0,
    blind: bool = True,
) -> list[int]:
    """Comparisons for training pairs a rule built (``engines.pairs``): (chosen, rejected) each named by
    (run id, node id), possibly from two runs on one prompt (temporal pairs); their ids.

    The chosen side is candidate A; the left side is drawn by the seeded rng as for every strategy.
    Every candidate must be stored and both of a pair on the same prompt; nothing is written otherwise.
    """
    if not strategy or len(strategy) > 64:
        raise InvalidInput(f"a pair strategy name has 1 to 64 characters, got {strategy!r}"[:200])
    refs = {ref for pair in pairs for ref in pair}
    rows: dict[NodeRef, Candidate] = {}
    for run_id in {r for r, _ in refs}:
        for cand in session.scalars(select(Candidate).where(Candidate.run_id == run_id)):
            rows[(run_id, cand.node_id)] = cand
    prompts = dict(session.execute(select(Run.id, Run.prompt_id).where(Run.id.in_({r for r, _ in refs}))).tuples().all())
    ids_pairs, prompt_ids = [], []
    for chosen, rejected in pairs:
        for ref in (chosen, rejected):
            if ref not in rows:
                raise InvalidInput(f"run {ref[0]} has no stored candidate {ref[1]!r}")
        if prompts[chosen[0]] != prompts[rejected[0]]:
            raise InvalidInput(f"a pair's two candidates must answer the same prompt (runs {chosen[0]} and {rejected[0]})")
        ids_pairs.append((rows[chosen].id, rows[rejected].id))
        prompt_ids.append(prompts[chosen[0]])
    rng = random.Random(f"{seed}:{strategy}:{','.join(f'{a}-{b}' for a, b in ids_pairs)}")
    sides = draw_sides(rng, len(ids_pairs))
    out: list[int] = []
    for pair, left, prompt_id in zip(ids_pairs, sides, prompt_ids, strict=True):
        out += store_pairs(session, prompt_id, [pair], strategy=strategy, sides=[left], blind=blind)
    return out
