"""Exports of the current votes as training and ranking data (JSONL or Parquet).

``dpo`` -- TRL's standard *preference* format, one row per decisive vote
(``a`` or ``b``)::

    prompt, chosen, rejected            # what TRL's DPOTrainer reads
    + chosen_image, rejected_image      # data URIs for image candidates, else null
    + comparison_id, vote_id, annotator, rationale, strategy, voted_at,
      chosen_shown_left, chosen_/rejected_ run_id, model, sampler, reward, reward_name

``kto`` -- TRL's *unpaired preference* format (``prompt, completion, label``),
two rows per vote, one per candidate:

    =========  ===========================================================
    outcome    labels
    =========  ===========================================================
    a / b      winner True, loser False (TRL's own preference -> unpaired
               conversion, ``unpair_preference_dataset``)
    tie        both True: "equally good" (``both_bad`` is the bad tie)
    both_bad   both False
    =========  ===========================================================

``battles`` -- FastChat Chatbot Arena battle rows (``model_a, model_b, winner``
with winner in ``model_a``/``model_b``/``tie``/``tie (bothbad)``), as read by
its ``elo_analysis.py``; as in FastChat, ``model_a`` is the side shown on the
left. The players are the samplers (``by="sampler"``) or models
(``by="model"``) that produced the candidates.

``pickapic`` -- image pairs in the Pick-a-Pic layout (Kirstain et al., 2023,
"Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image
Generation"): ``caption, jpg_0, jpg_1, label_0, label_1`` (1/0 for a
decisive vote, 0.5/0.5 for a tie) plus ``model_0/1, image_0_uid/1_uid,
best_image_uid, user_id, ranking_id, created_at, has_label, are_different``.
Only comparisons of two images; the image columns hold the PNG bytes (the
column names keep Pick-a-Pic's ``jpg_`` for drop-in use), base64 in JSONL.
``both_bad`` has no place in that layout and is left out, as are skips.

Image columns (``chosen_image``/``rejected_image`` in ``dpo``, ``image`` in
``kto``) are written only when some exported candidate is an image: a text
export has none, because TRL's trainers read any ``image`` key as a vision
dataset (``KTOTrainer`` refuses a text model then), while an image export
keeps them for vision-language trainers.

Label-quality comparisons (``storage.quality``; the policy is
:func:`storage.records.training_records`):

* side-swapped repeats: every format keeps one row (``kto``: one pair of rows)
  per (original comparison, annotator). By default (``repeats="original"``)
  that is the vote on the original; the vote on its repeat is used only for
  the self-consistency and position-bias figures, and stands in for the pair
  only where the annotator did not vote on the original. ``repeats=
  "consistent"`` also leaves out the pairs whose repeat vote disagreed with the
  original (``samplescope export --repeats consistent``); ``repeats="all"``
  exports every vote, repeats included, as before label quality existed.
* gold pairs: exported like any other comparison, with the annotators' votes
  (the known answer is not a vote and adds no row); ``gold=False``
  (``--no-gold``) leaves them out, e.g. to keep them as a check set.

Filters (``RecordFilter``; the Data tab's pickers, ``samplescope export
--modality/--model/--sampler``): ``modality="text"`` keeps only comparisons of
two texts, ``"image"`` only of two images, so a DPO or KTO file for a language
model never carries image pairs with empty text; ``model`` and ``sampler`` keep
the comparisons with that model (sampler) on at least one side, so a cross-run
battle of two samplers stays in either sampler's export.

Skips are never exported. Only each annotator's current vote counts. The file
type follows the extension: ``.jsonl`` or ``.parquet``; files are written to a
temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from engines.jsonl import JsonLinesError, read_json_lines
from storage.errors import InvalidInput
from storage.models import EXPORT_FORMATS, PLAYERS
from storage.records import VoteRecord, training_records, vote_records
from storage.rows import prompt_hash

FORMATS = EXPORT_FORMATS

_SIDE_FIELDS = [
    ("run_id", pa.int64()),
    ("model", pa.string()),
    ("sampler", pa.string()),
    ("reward", pa.float64()),
    ("reward_name", pa.string()),
]

DPO_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_image", pa.string()),
        ("rejected_image", pa.string()),
        ("comparison_id", pa.int64()),
        ("vote_id", pa.int64()),
        ("annotator", pa.string()),
        ("rationale", pa.string()),
        ("strategy", pa.string()),
        ("voted_at", pa.string()),
        ("chosen_shown_left", pa.bool_()),
    ]
    + [(f"{role}_{name}", kind) for role in ("chosen", "rejected") for name, kind in _SIDE_FIELDS]
)

KTO_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("label", pa.bool_()),
        ("image", pa.string()),
        ("comparison_id", pa.int64()),
        ("vote_id", pa.int64()),
        ("annotator", pa.string()),
        ("outcome", pa.string()),
    ]
    + _SIDE_FIELDS
)

BATTLE_SCHEMA = pa.schema(
    [
        ("model_a", pa.string()),
        ("model_b", pa.string()),
        ("winner", pa.string()),
        ("judge", pa.string()),
        ("question_id", pa.string()),
        ("comparison_id", pa.int64()),
        ("vote_id", pa.int64()),
        ("anony", pa.bool_()),
        ("tstamp", pa.float64()),
    ]
)

PICKAPIC_SCHEMA = pa.schema(
    [
        ("caption", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("image_0_uid", pa.string()),
        ("image_1_uid", pa.string()),
        ("best_image_uid", pa.string()),
        ("user_id", pa.string()),
        ("ranking_id", pa.int64()),
        ("created_at", pa.string()),
        ("has_label", pa.bool_()),
        ("are_different", pa.bool_()),
    ]
)

SCHEMAS = {"dpo": DPO_SCHEMA, "kto": KTO_SCHEMA, "battles": BATTLE_SCHEMA, "pickapic": PICKAPIC_SCHEMA}

#: per format, the columns that hold images; left out of an export with no image in it
IMAGE_COLUMNS = {"dpo": ("chosen_image", "rejected_image"), "kto": ("image",)}

#: database-local ids: they differ after an import into another database
ID_COLUMNS = ("comparison_id", "vote_id", "chosen_run_id", "rejected_run_id", "run_id")


def _side_columns(prefix: str, side: Any) -> dict[str, Any]:
    return {
        f"{prefix}run_id": side.run_id,
        f"{prefix}model": side.model,
        f"{prefix}sampler": side.sampler,
        f"{prefix}reward": side.reward,
        f"{prefix}reward_name": side.reward_name,
    }


def dpo_rows(records: Sequence[VoteRecord]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        if not rec.decisive:
            continue
        chosen, rejected = rec.winner, rec.loser
        rows.append(
            {
                "prompt": rec.prompt,
                "chosen": chosen.text,
                "rejected": rejected.text,
                "chosen_image": chosen.image,
                "rejected_image": rejected.image,
                "comparison_id": rec.comparison_id,
                "vote_id": rec.vote_id,
                "annotator": rec.annotator,
                "rationale": rec.rationale,
                "strategy": rec.strategy,
                "voted_at": rec.voted_at.isoformat(),
                "chosen_shown_left": rec.left.candidate_id == chosen.candidate_id,
                **_side_columns("chosen_", chosen),
                **_side_columns("rejected_", rejected),
            }
        )
    return rows


def kto_rows(records: Sequence[VoteRecord]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        if rec.outcome == "skip":
            continue
        labels = {
            "a": (True, False),
            "b": (False, True),
            "tie": (True, True),
            "both_bad": (False, False),
        }[rec.outcome]
        for side, label in zip((rec.a, rec.b), labels, strict=True):
            rows.append(
                {
                    "prompt": rec.prompt,
                    "completion": side.text,
                    "label": label,
                    "image": side.image,
                    "comparison_id": rec.comparison_id,
                    "vote_id": rec.vote_id,
                    "annotator": rec.annotator,
                    "outcome": rec.outcome,
                    **_side_columns("", side),
                }
            )
    return rows


def battle_rows(records: Sequence[VoteRecord], by: str = "sampler") -> list[dict[str, Any]]:
    if by not in PLAYERS:
        raise InvalidInput(f"battles are between samplers or models, not {by!r}")
    rows = []
    for rec in records:
        if rec.outcome == "skip":
            continue
        if rec.decisive:
            winner = "model_a" if rec.winner.candidate_id == rec.left.candidate_id else "model_b"
        else:
            winner = "tie" if rec.outcome == "tie" else "tie (bothbad)"
        rows.append(
            {
                "model_a": rec.left.player(by),
                "model_b": rec.right.player(by),
                "winner": winner,
                "judge": rec.annotator,
                "question_id": prompt_hash(rec.prompt)[:16],
                "comparison_id": rec.comparison_id,
                "vote_id": rec.vote_id,
                "anony": rec.blind,
                "tstamp": rec.voted_at.timestamp(),
            }
        )
    return rows


def _png(data_uri: str) -> bytes:
    return base64.b64decode(data_uri.split(",", 1)[1])


def pickapic_rows(records: Sequence[VoteRecord], by: str = "sampler") -> list[dict[str, Any]]:
    if by not in PLAYERS:
        raise InvalidInput(f"pairs are between samplers or models, not {by!r}")
    rows = []
    for rec in records:
        if rec.outcome not in ("a", "b", "tie") or not (rec.left.image and rec.right.image):
            continue
        first, second = rec.left, rec.right
        if rec.outcome == "tie":
            labels, best = (0.5, 0.5), None
        else:
            first_won = rec.winner.candidate_id == first.candidate_id
            labels, best = ((1.0, 0.0), first) if first_won else ((0.0, 1.0), second)
        rows.append(
            {
                "caption": rec.prompt,
                "jpg_0": _png(first.image),
                "jpg_1": _png(second.image),
                "label_0": labels[0],
                "label_1": labels[1],
                "model_0": first.player(by),
                "model_1": second.player(by),
                "image_0_uid": str(first.candidate_id),
                "image_1_uid": str(second.candidate_id),
                "best_image_uid": None if best is None else str(best.candidate_id),
                "user_id": rec.annotator,
                "ranking_id": rec.vote_id,
                "created_at": rec.voted_at.isoformat(),
                "has_label": True,
                "are_different": first.image != second.image,
            }
        )
    return rows


MODALITIES = ("text", "image")


@dataclass(frozen=True)
class RecordFilter:
    """Which comparisons an export keeps (see the module docstring); None keeps all."""

    modality: str | None = None
    model: str | None = None
    sampler: str | None = None

    def __post_init__(self) -> None:
        if self.modality is not None and self.modality not in MODALITIES:
            raise InvalidInput(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")

    def keeps(self, record: VoteRecord) -> bool:
        sides = (record.a, record.b)
        if self.modality is not None and any((s.image is not None) != (self.modality == "image") for s in sides):
            return False
        if self.model is not None and all(s.model != self.model for s in sides):
            return False
        return self.sampler is None or any(s.sampler == self.sampler for s in sides)


def export_rows(
    session: Session, fmt: str, *, by: str = "sampler", repeats: str = "original", gold: bool = True,
    only: RecordFilter | None = None,
) -> list[dict[str, Any]]:
    """The rows of one export format, from the current votes (``repeats``/``gold``/``only``: see the module docstring)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    records = training_records(vote_records(session), repeats=repeats, gold=gold)
    if only is not None:
        records = [r for r in records if only.keeps(r)]
    if fmt == "dpo":
        return _text_only(dpo_rows(records), fmt)
    if fmt == "kto":
        return _text_only(kto_rows(records), fmt)
    if fmt == "pickapic":
        return pickapic_rows(records, by=by)
    return battle_rows(records, by=by)


def _text_only(rows: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Rows without the image columns when no row has an image (a text export)."""
    columns = IMAGE_COLUMNS[fmt]
    if any(row.get(c) is not None for row in rows for c in columns):
        return rows
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]


def schema_for(fmt: str, rows: Sequence[dict[str, Any]]) -> pa.Schema:
    """The file schema of an export: the format's, less the image columns its rows left out."""
    schema = SCHEMAS[fmt]
    for column in [c for c in IMAGE_COLUMNS.get(fmt, ()) if not rows or c not in rows[0]]:
        schema = schema.remove(schema.get_field_index(column))
    return schema


def file_kind(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise InvalidInput(f"{path}: use a .jsonl or .parquet file name")


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path, schema: pa.Schema) -> None:
    """Write rows as JSONL or Parquet (by extension), atomically."""
    path = Path(path)
    kind = file_kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if kind == "jsonl":
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False, default=_bytes_as_base64) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _bytes_as_base64(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or Parquet file (InvalidInput names the bad line)."""
    path = Path(path)
    kind = file_kind(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if kind == "parquet":
        return pq.read_table(path).to_pylist()
    try:
        return read_json_lines(path)  # one newline rule with prompt files (engines.jsonl)
    except JsonLinesError as exc:
        problem = {"utf-8": "not valid UTF-8", "json": f"not JSON ({exc.detail})",
                   "object": "each line must be a JSON object"}[exc.reason]
        raise InvalidInput(f"{path}:{exc.line}: {problem}") from None


def export(
    session: Session, fmt: str, path: str | Path, *, by: str = "sampler", repeats: str = "original", gold: bool = True,
    only: RecordFilter | None = None,
) -> int:
    """Write one export format to ``path`` (.jsonl or .parquet); the number of rows."""
    file_kind(path)  # fail before the query on a bad name
    rows = export_rows(session, fmt, by=by, repeats=repeats, gold=gold, only=only)
    write_rows(rows, path, schema_for(fmt, rows))
    return len(rows)
