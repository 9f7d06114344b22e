"""Fixtures for the app tests: a real SQLite file database, services, tabs built without a server."""

from __future__ import annotations

import pytest

from tests.app.helpers import open_db


@pytest.fixture
def db(tmp_path):
    database = open_db(tmp_path / "app.db")
    yield database
    database.close()


@pytest.fixture
def services(db):
    from app.ui.services import Services

    # update_interval 0: every sampler event gives a live update, so tests see each step
    return Services(db=db, default_model="toy:abc", update_interval=0.0)
