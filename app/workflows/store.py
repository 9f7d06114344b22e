"""The app's two storage calls: open the database, store a finished run (CLI and UI share them)."""

from __future__ import annotations

from storage import Database, save_run


def open_database(url: str | None):
    """The database at ``url`` (else SAMPLESCOPE_DB, else the user data folder), migrated."""

    return Database.open(url)


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
