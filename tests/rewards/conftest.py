import pytest

from storage import Database


@pytest.fixture
def db(tmp_path):
    database = Database.open(f"sqlite:///{tmp_path / 'votes.db'}")
    yield database
    database.close()


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Heads are fitted on tiny tensors: one thread is fastest, and far faster on a shared, busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
