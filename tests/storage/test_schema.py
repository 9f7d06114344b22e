"""The migrated schema equals the models; connection settings; append-only votes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import setuptools
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from storage_helpers import store_run

from storage import Database, SchemaError, resolve_url
from storage.migrate import MIGRATIONS_DIR, current_revision, downgrade, head_revision
from storage.models import Base, Comparison, Vote
from storage.votes import add_vote


def test_migrated_schema_equals_models(db):
    with db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == []
    assert db.revision() == head_revision()
    assert db.check().ok


def test_upgrade_is_idempotent_and_downgrade_round_trips(db):
    db.upgrade()
    downgrade(db._write_engine, "base")
    assert current_revision(db.engine) is None
    assert "votes" not in db.check().counts
    db.upgrade()
    assert db.check().ok


def test_sqlite_connection_settings(tmp_path):
    with Database(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_ms=1234) as db:
        with db.engine.connect() as conn:
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("busy_timeout") == 1234
            assert pragma("synchronous") == 1  # NORMAL
            assert pragma("foreign_keys") == 1


def test_default_url_uses_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLESCOPE_HOME", str(tmp_path / "data"))
    assert resolve_url() == f"sqlite:///{tmp_path / 'data' / 'samplescope.db'}"
    monkeypatch.setenv("SAMPLESCOPE_DB", "sqlite:////elsewhere.db")
    assert resolve_url() == "sqlite:////elsewhere.db"
    assert resolve_url("postgresql://u@h/db") == "postgresql://u@h/db"
    monkeypatch.delenv("SAMPLESCOPE_DB")
    monkeypatch.delenv("SAMPLESCOPE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert resolve_url() == f"sqlite:///{tmp_path / '.local/share/samplescope/samplescope.db'}"


def test_open_creates_the_folder_and_migrates(tmp_path):
    with Database.open(f"sqlite:///{tmp_path / 'new' / 'deep' / 's.db'}") as db:
        assert db.check().ok
        assert (tmp_path / "new" / "deep" / "s.db").exists()


def test_migrations_ship_inside_the_package():
    assert MIGRATIONS_DIR.parent == Path(__file__).resolve().parents[2] / "storage"
    packages = setuptools.find_packages(str(MIGRATIONS_DIR.parents[1]), include=["storage*"])
    assert {"storage.migrations", "storage.migrations.versions"} <= set(packages)
    assert (MIGRATIONS_DIR / "script.py.mako").exists()  # package-data "*.mako"


def _one_vote(db):
    run = store_run(db, ["x", "y"], [1.0, 0.0])
    from storage import make_comparisons

    [cid] = db.write(lambda s: make_comparisons(s, run, "max_min"))
    vote = db.write(
        lambda s: add_vote(s, comparison_id=cid, annotator="ada", outcome="a", idempotency_key="k1")
    )
    return cid, vote


@pytest.mark.parametrize("statement", ["UPDATE votes SET outcome = 'b'", "DELETE FROM votes"])
def test_votes_cannot_be_updated_or_deleted(db, statement):
    _one_vote(db)
    with pytest.raises(DBAPIError, match="append-only"):
        with db.engine.begin() as conn:
            conn.execute(text(statement))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT outcome FROM votes")).scalars().all() == ["a"]


def test_database_enforces_vote_rules(db):
    cid, first = _one_vote(db)
    now = datetime.now(UTC)
    base = {"comparison_id": cid, "annotator_id": 1, "voted_at": now, "created_at": now}
    bad_rows = [
        {**base, "revision": 1, "outcome": "maybe", "idempotency_key": "x1"},  # CHECK outcome
        {**base, "revision": 1, "outcome": "b", "idempotency_key": "x2"},  # second first vote
        {**base, "revision": 2, "outcome": "b", "idempotency_key": "x3"},  # revision 2 must supersede
        {**base, "revision": 1, "outcome": "b", "idempotency_key": "k1", "supersedes_id": None},  # key reuse
        {
            **base,
            "revision": 2,
            "outcome": "b",
            "idempotency_key": "x4",
            "supersedes_id": 999,
        },  # no such vote
        {
            **base,
            "revision": 2,
            "outcome": "b",
            "idempotency_key": "x5",
            "supersedes_id": first.vote_id,
            "rationale": "r" * 2001,
        },  # CHECK length
    ]
    for row in bad_rows:
        with pytest.raises(IntegrityError):
            with db.engine.begin() as conn:
                conn.execute(insert(Vote).values(**row))
    ok = {**base, "revision": 2, "outcome": "b", "idempotency_key": "x6", "supersedes_id": first.vote_id}
    with db.engine.begin() as conn:
        conn.execute(insert(Vote).values(**ok))
    # a vote may be superseded only once: a second correction of the same vote is refused
    with pytest.raises(IntegrityError):
        with db.engine.begin() as conn:
            conn.execute(insert(Vote).values(**{**ok, "revision": 3, "idempotency_key": "x7"}))


def test_comparison_needs_two_distinct_candidates(db):
    run = store_run(db, ["x", "y"], [1.0, 0.0])
    with pytest.raises(IntegrityError):
        with db.engine.begin() as conn:
            conn.execute(
                insert(Comparison).values(
                    prompt_id=1,
                    candidate_a_id=1,
                    candidate_b_id=1,
                    left_side="a",
                    blind=True,
                    strategy="x",
                    created_at=datetime.now(UTC),
                )
            )
    assert run == 1


def test_check_reports_problems(tmp_path):
    with Database(f"sqlite:///{tmp_path / 'empty.db'}") as db:
        report = db.check()
        assert not report.ok
        assert any("revision" in p for p in report.problems)
        assert any("table votes is missing" in p for p in report.problems)


def test_a_newer_schema_is_refused_not_downgraded(db):
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaError, match="newer than this samplescope knows"):
        db.upgrade()
    assert not db.check().ok


def test_in_memory_and_home_relative_sqlite_urls(tmp_path, monkeypatch):
    from storage_helpers import make_trace

    from storage import load_run, save_run

    with Database.open("sqlite://") as db:
        run = db.write(
            lambda s: save_run(
                s,
                trace=make_trace(["a"], [1.0]),
                task={"prompt": "p"},
                model="m",
                reward="r",
                sampler="s",
                config={},
                seed=0,
            )
        )
        assert db.read(lambda s: load_run(s, run)).candidates[0].text == "a"
        assert db.check().ok
    monkeypatch.setenv("HOME", str(tmp_path))
    with Database.open("sqlite:///~/sub/x.db") as db:
        assert (tmp_path / "sub" / "x.db").exists() and db.check().ok
