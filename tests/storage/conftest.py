"""Fixtures for the storage tests.

``db`` is a migrated, empty database: a SQLite file in a temp folder, and, when
``SAMPLESCOPE_TEST_PG`` names a PostgreSQL server (``make test`` starts one), the
same test again on a fresh schema of that server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage import Database

PG_URL = os.environ.get("SAMPLESCOPE_TEST_PG")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "pg",
        id="pg",
        marks=[pytest.mark.pg, pytest.mark.skipif(not PG_URL, reason="SAMPLESCOPE_TEST_PG is not set")],
    ),
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's database: point the data folder at a temp dir."""
    monkeypatch.setenv("SAMPLESCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SAMPLESCOPE_DB", raising=False)


@pytest.fixture
def pg_schema_url() -> Iterator[Callable[[], str]]:
    """Makes fresh PostgreSQL schemas (dropped afterwards); returns URLs that use them."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        made.append(schema)
        return (
            make_url(PG_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )

    yield make
    with admin.connect() as conn:
        for schema in made:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("pg_schema_url")()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database.open(db_url)
    yield database
    database.close()
