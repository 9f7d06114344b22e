from tests.storage.conftest import _isolated_home  # noqa: F401
import pytest

from storage import Database


@pytest.fixture
def db(tmp_path):
    database = Database.open(f"sqlite:///{tmp_path / 'votes.db'}")
    yield database
    database.close()
