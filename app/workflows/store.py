"""The app's two storage calls: open the database, store a finished run (CLI and UI share them)."""

from __future__ import annotations

from pathlib import Path

from storage import Database, save_run
from storage.db import data_home


def open_database(url: str | None):
    """The database at ``url`` (else SAMPLESCOPE_DB, else the user data folder), migrated."""

    return Database.open(url)


def rewards_home() -> Path:
    """Where learned rewards live: ``rewards`` in the data folder (``storage.db.data_home``'s rule, the
    only one). Engines are handed this folder (``RunRequest.rewards_folder``, ``RewardEnv``)."""
    return data_home() / "rewards"


def save_request_run(db, request, trace) -> int:
    """Store a finished run made from a RunRequest; returns the run id."""

    config = dict(request.params)
    if request.budget.as_dict():
        config["budget"] = request.budget.as_dict()
    return db.write(
        lambda s: save_run(
            s,
            trace=trace,
            task=request.task,
            model=request.model,
            reward=request.reward,
            sampler=request.sampler,
            config=config,
            seed=request.seed,
        )
    )
