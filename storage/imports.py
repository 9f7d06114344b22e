"""Import TRL preference data (``prompt``, ``chosen``, ``rejected``) as votes.

Each row becomes: the prompt (deduplicated by hash), two candidates in a
synthetic run (``source="import"``, status ``imported``, no events), a
comparison between them (reused when the pair is already compared, in either
order) and a vote for the chosen one.

Rows written by our own ``dpo`` export carry metadata columns, and import
honours them, so ``export -> import -> export`` gives the same rows (apart from
database-local ids, :data:`storage.exports.ID_COLUMNS`):

* ``annotator`` (default ``import``), ``rationale``, ``voted_at``;
* ``chosen_``/``rejected_`` ``model``, ``sampler``, ``reward_name`` pick the
  synthetic run (one per prompt, model, sampler and reward name; default
  ``import``) and ``..._reward`` the candidate's reward;
* ``chosen_image``/``rejected_image``, ``strategy`` (default ``import``) and
  ``chosen_shown_left`` (default: drawn by a seeded rng).

Importing is idempotent: a row's vote has an idempotency key derived from its
content, so importing a file twice stores nothing new. All rows are checked
before anything is written; one bad row refuses the whole file (the error names
its line). TRL's conversational format (lists of messages) is refused rather
than flattened.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import InvalidInput, StorageError
from storage.exports import ID_COLUMNS, read_rows
from storage.models import RATIONALE_MAX_CHARS, Candidate, Comparison, Run
from storage.pairs import draw_sides, store_pairs
from storage.rows import check_name, get_or_create_prompt
from storage.serial import check_optional_text, check_text
from storage.votes import add_vote


@dataclass(frozen=True)
class ImportReport:
    rows: int
    votes_created: int
    votes_existing: int
    runs_created: int
    comparisons: int


@dataclass(frozen=True)
class _Side:
    text: str
    image: str | None
    model: str
    sampler: str
    reward_name: str
    reward: float | None


@dataclass(frozen=True)
class _Row:
    line: int
    prompt: str
    chosen: _Side
    rejected: _Side
    annotator: str
    rationale: str | None
    strategy: str
    voted_at: datetime | None
    chosen_shown_left: bool | None
    key: str


def _side(raw: dict[str, Any], role: str, where: str) -> _Side:
    text = raw.get(role)
    if isinstance(text, list):
        raise InvalidInput(
            f"{where}: '{role}' is a list of messages; only the standard text format is supported"
        )
    reward = raw.get(f"{role}_reward")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, int | float)):
        raise InvalidInput(f"{where}: {role}_reward must be a number")
    return _Side(
        text=check_text(text, f"{where}: {role}"),
        image=check_optional_text(raw.get(f"{role}_image"), f"{where}: {role}_image"),
        model=check_name(raw.get(f"{role}_model") or "import", f"{where}: {role}_model"),
        sampler=check_name(raw.get(f"{role}_sampler") or "import", f"{where}: {role}_sampler"),
        reward_name=check_name(raw.get(f"{role}_reward_name") or "import", f"{where}: {role}_reward_name"),
        reward=float(reward) if reward is not None and math.isfinite(reward) else None,
    )


def _parse_time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise InvalidInput(f"{where}: voted_at must be an ISO 8601 time")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_row(raw: Any, line: int) -> _Row:
    where = f"row {line}"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: must be an object with prompt, chosen and rejected")
    prompt = raw.get("prompt")
    if isinstance(prompt, list):
        raise InvalidInput(
            f"{where}: 'prompt' is a list of messages; only the standard text format is supported"
        )
    prompt = check_text(prompt, f"{where}: prompt")
    chosen, rejected = _side(raw, "chosen", where), _side(raw, "rejected", where)
    if (chosen.text, chosen.image) == (rejected.text, rejected.image):
        raise InvalidInput(f"{where}: chosen and rejected are identical")
    shown_left = raw.get("chosen_shown_left")
    if shown_left is not None and not isinstance(shown_left, bool):
        raise InvalidInput(f"{where}: chosen_shown_left must be true or false")
    content = {k: v for k, v in raw.items() if k not in ID_COLUMNS}
    digest = hashlib.sha256(
        json.dumps(content, sort_keys=True, ensure_ascii=True, default=str).encode()
    ).hexdigest()
    return _Row(
        line=line,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        annotator=check_name(raw.get("annotator") or "import", f"{where}: annotator"),
        rationale=check_optional_text(
            raw.get("rationale"), f"{where}: rationale", max_chars=RATIONALE_MAX_CHARS
        ),
        strategy=check_name(raw.get("strategy") or "import", f"{where}: strategy"),
        voted_at=_parse_time(raw.get("voted_at"), where),
        chosen_shown_left=shown_left,
        key=f"import:{digest[:48]}",
    )


class _Importer:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.runs_created = 0

    def run_for(self, prompt_id: int, prompt: str, side: _Side) -> int:
        found = self.session.scalars(
            select(Run.id).where(
                Run.source == "import",
                Run.prompt_id == prompt_id,
                Run.model == side.model,
                Run.sampler == side.sampler,
                Run.reward == side.reward_name,
            )
        ).first()
        if found is not None:
            return found
        run = Run(
            prompt_id=prompt_id,
            title="imported preferences",
            model=side.model,
            reward=side.reward_name,
            sampler=side.sampler,
            config={},
            seed=0,
            task={"prompt": prompt},
            cost={},
            status="imported",
            source="import",
        )
        self.session.add(run)
        self.session.flush()
        self.runs_created += 1
        return run.id

    def candidate_for(self, run_id: int, side: _Side) -> int:
        node_id = "import-" + hashlib.sha256(json.dumps([side.text, side.image]).encode()).hexdigest()[:32]
        found = self.session.scalars(
            select(Candidate.id).where(Candidate.run_id == run_id, Candidate.node_id == node_id)
        ).first()
        if found is not None:
            return found
        cand = Candidate(
            run_id=run_id,
            node_id=node_id,
            text=side.text,
            image=side.image,
            reward=side.reward,
            tokens=0,
            picked=False,
            meta={"imported": True},
        )
        self.session.add(cand)
        self.session.flush()
        return cand.id


def import_rows(session: Session, rows: Sequence[Any], *, seed: int = 0) -> ImportReport:
    """Store preference rows as comparisons with votes (see the module docstring)."""
    parsed = [parse_row(raw, line) for line, raw in enumerate(rows, start=1)]
    importer = _Importer(session)
    created = existing = 0
    comparisons: set[int] = set()
    for row in parsed:
        prompt = get_or_create_prompt(session, row.prompt)
        chosen_id = importer.candidate_for(importer.run_for(prompt.id, row.prompt, row.chosen), row.chosen)
        rejected_id = importer.candidate_for(
            importer.run_for(prompt.id, row.prompt, row.rejected), row.rejected
        )
        if row.chosen_shown_left is None:
            side = draw_sides(random.Random(f"{seed}:import:{row.key}"), 1)[0]
        else:  # a new comparison has the chosen candidate as A
            side = "a" if row.chosen_shown_left else "b"
        [comparison_id] = store_pairs(
            session, prompt.id, [(chosen_id, rejected_id)], strategy=row.strategy, sides=[side], blind=True
        )
        comparisons.add(comparison_id)
        chosen_is_a = session.get(Comparison, comparison_id).candidate_a_id == chosen_id
        try:
            result = add_vote(
                session,
                comparison_id=comparison_id,
                annotator=row.annotator,
                outcome="a" if chosen_is_a else "b",
                idempotency_key=row.key,
                rationale=row.rationale,
                voted_at=row.voted_at,
            )
        except StorageError as exc:
            raise type(exc)(f"row {row.line}: {exc}") from None
        created += result.created
        existing += not result.created
    return ImportReport(
        rows=len(parsed),
        votes_created=created,
        votes_existing=existing,
        runs_created=importer.runs_created,
        comparisons=len(comparisons),
    )


def import_file(session: Session, path: str | Path, *, seed: int = 0) -> ImportReport:
    """Import a TRL preference JSONL (or Parquet) file; see :func:`import_rows`."""
    return import_rows(session, read_rows(path), seed=seed)
