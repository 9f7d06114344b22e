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


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium for a browser test module (skipped without playwright or chromium)."""
    import os

    from tests.app.helpers import CHROMIUM, CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (make system-deps installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
