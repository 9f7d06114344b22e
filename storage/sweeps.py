"""Stored sweeps: the plan, and a table of finished cells, each linked to the run it made.

``create_sweep`` stores a plan (``engines.sweep.SweepPlan.as_dict()``) against a stored
prompt set. ``record_cell`` stores one finished cell's run (``save_run``, source
``sweep``) and its cell row in the caller's transaction, so a cell is either wholly
stored or not at all; ``done_keys`` is what a resumed sweep skips. ``sweep_cells`` gives
the flat rows (what the statistics, the CSV / Parquet export and the report read),
``list_sweeps`` the sweeps newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engines.trace import COST_FIELDS
from storage.errors import InvalidInput
from storage.models import PromptSet as PromptSetRow
from storage.models import Sweep, SweepCell, utcnow
from storage.rows import require
from storage.runs import save_run
from storage.serial import check_optional_text, to_jsonable

STATUSES = ("running", "done", "cancelled", "failed")


@dataclass(frozen=True)
class SweepSummary:
    id: int
    title: str | None
    prompt_set: str
    status: str
    cells_done: int
    cells_planned: int
    arms: list[str]
    axis: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["created_at"] = self.created_at.isoformat()
        return out

    def label(self) -> str:
        return (f"#{self.id} {self.title or ''} {self.prompt_set}: {', '.join(self.arms)} "
                f"({self.cells_done}/{self.cells_planned} cells, {self.status})").replace("  ", " ")


def create_sweep(session: Session, *, prompt_set_id: int, spec: dict[str, Any], cells_planned: int,
                 title: str | None = None) -> int:
    require(session, PromptSetRow, prompt_set_id, "prompt set")
    sweep = Sweep(prompt_set_id=prompt_set_id, spec=to_jsonable(spec, "sweep spec"), status="running",
                  cells_planned=int(cells_planned), title=check_optional_text(title, "title", max_chars=200))
    session.add(sweep)
    session.flush()
    return sweep.id


def set_status(session: Session, sweep_id: int, status: str) -> None:
    if status not in STATUSES:
        raise InvalidInput(f"sweep status must be one of {', '.join(STATUSES)}, got {status!r}")
    sweep = require(session, Sweep, sweep_id, "sweep")
    sweep.status = status
    sweep.updated_at = utcnow()


def load_sweep(session: Session, sweep_id: int) -> tuple[Sweep, PromptSetRow]:
    sweep = require(session, Sweep, sweep_id, "sweep")
    return sweep, session.get(PromptSetRow, sweep.prompt_set_id)


def done_keys(session: Session, sweep_id: int) -> set[tuple[str, float, int]]:
    rows = session.execute(select(SweepCell.arm, SweepCell.level, SweepCell.prompt_index).where(SweepCell.sweep_id == sweep_id))
    return {(arm, float(level), int(prompt)) for arm, level, prompt in rows}


def record_cell(session: Session, sweep_id: int, result: Any) -> int:
    """Store a finished ``engines.sweep.CellResult``: its run, then its cell row; returns the cell id."""
    request = result.request
    config = dict(request.params)
    if request.budget.as_dict():
        config["budget"] = request.budget.as_dict()
    run_id = save_run(session, trace=result.trace, task=request.task, model=request.model, reward=request.reward,
                      sampler=request.sampler, config=config, seed=request.seed, source="sweep",
                      title=f"sweep {sweep_id}: {result.key.arm} @ {result.key.level:g}")
    cell = SweepCell(sweep_id=sweep_id, arm=result.key.arm, level=float(result.key.level), prompt_index=result.key.prompt,
                     run_id=run_id, seed=request.seed, engine=request.model, status=result.status,
                     quality=result.quality, steer=result.steer,
                     cost=to_jsonable({**result.cost, **result.extra}, "cell cost"))
    session.add(cell)
    sweep = session.get(Sweep, sweep_id)
    sweep.updated_at = utcnow()
    session.flush()
    return cell.id


def sweep_cells(session: Session, sweep_id: int) -> list[dict[str, Any]]:
    """Flat rows, one per stored cell, in (arm, level, prompt) order."""
    require(session, Sweep, sweep_id, "sweep")
    cells = session.scalars(select(SweepCell).where(SweepCell.sweep_id == sweep_id)
                            .order_by(SweepCell.arm, SweepCell.level, SweepCell.prompt_index))
    out = []
    for c in cells:
        cost = dict(c.cost or {})
        row = {"sweep": sweep_id, "arm": c.arm, "level": c.level, "prompt": c.prompt_index, "run_id": c.run_id,
               "seed": c.seed, "engine": c.engine, "status": c.status, "quality": c.quality, "steer": c.steer}
        row.update({k: cost.get(k, 0) for k in COST_FIELDS})
        out.append(row)
    return out


def list_sweeps(session: Session, limit: int = 100) -> list[SweepSummary]:
    counts = (select(SweepCell.sweep_id, func.count(SweepCell.id).label("n")).group_by(SweepCell.sweep_id).subquery())
    rows = session.execute(
        select(Sweep, PromptSetRow.name, counts.c.n).join(PromptSetRow, PromptSetRow.id == Sweep.prompt_set_id)
        .outerjoin(counts, counts.c.sweep_id == Sweep.id).order_by(Sweep.id.desc()).limit(limit)
    )
    return [SweepSummary(id=s.id, title=s.title, prompt_set=name, status=s.status, cells_done=int(n or 0),
                         cells_planned=s.cells_planned, arms=[a["label"] for a in s.spec.get("arms", [])],
                         axis=s.spec.get("axis", "size"), created_at=s.created_at) for s, name, n in rows]


def export_cells(session: Session, sweep_id: int, path: str | Path) -> int:
    """Write the sweep's cells as CSV or Parquet (by the file's extension); returns the row count."""
    path = Path(path)
    rows = sweep_cells(session, sweep_id)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InvalidInput(f"export a sweep as .csv or .parquet, got {path.name!r}")
    import pyarrow as pa

    columns = ["sweep", "arm", "level", "prompt", "run_id", "seed", "engine", "status", "quality", "steer", *COST_FIELDS]
    table = pa.Table.from_pylist(rows, schema=_schema(columns)) if rows else pa.table({c: [] for c in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    return len(rows)


def _schema(columns: list[str]):
    import pyarrow as pa

    kinds = {"sweep": pa.int64(), "arm": pa.string(), "level": pa.float64(), "prompt": pa.int64(), "run_id": pa.int64(),
             "seed": pa.int64(), "engine": pa.string(), "status": pa.string(), "quality": pa.float64(),
             "steer": pa.float64(), "wall_seconds": pa.float64()}
    return pa.schema([(c, kinds.get(c, pa.float64())) for c in columns])
