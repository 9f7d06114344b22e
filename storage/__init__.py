"""Storage: runs, traces, comparisons and human preference votes in a real database.

Open a :class:`Database` (SQLite by default, any SQLAlchemy URL), then call the
repository functions with a session per user event::

    from storage import Database, add_vote, save_run

    db = Database.open()  # migrated to the newest schema
    run_id = db.write(lambda s: save_run(s, trace=trace, task=task, model="smollm2",
                                         reward="length", sampler="best_of_n",
                                         config=config, seed=0))
    shown = db.read(lambda s: next_comparison(s, "ada"))
    vote = db.write(lambda s: add_vote(s, comparison_id=shown.comparison_id,
                                       annotator="ada", outcome=shown.outcome("left"),
                                       idempotency_key=key, shown_at=shown.shown_at))

Every deliberate error is a :class:`storage.errors.StorageError` with a
one-line message, raised before anything is written.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve lazily (PEP 562) so that `import storage` stays cheap: the
# statistics pull in scipy and scikit-learn, exports pyarrow.
_EXPORTS = {
    "storage.db": ("CheckReport", "Database", "RetryPolicy", "resolve_url"),
    "storage.errors": (
        "Conflict",
        "DatabaseBusy",
        "InvalidInput",
        "NotAllowed",
        "NotFound",
        "SchemaError",
        "StorageError",
    ),
    "storage.exports": ("export", "export_rows"),
    "storage.imports": ("ImportReport", "import_file", "import_rows"),
    "storage.models": ("OUTCOMES", "RATIONALE_MAX_CHARS"),
    "storage.pairs": ("CROSS_RUN", "STRATEGIES", "compare_runs", "cross_run_comparisons", "make_comparisons"),
    "storage.runs": ("RunSummary", "StoredCandidate", "StoredRun", "list_runs", "load_run", "save_run"),
    "storage.stats": ("summary",),
    "storage.votes": (
        "Presentation",
        "Shown",
        "VoteResult",
        "add_vote",
        "assign",
        "next_comparison",
        "present",
        "progress",
        "queue_state",
        "start_session",
        "vote_history",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "OUTCOMES",
    "RATIONALE_MAX_CHARS",
    "STRATEGIES",
    "CheckReport",
    "Conflict",
    "Database",
    "DatabaseBusy",
    "ImportReport",
    "InvalidInput",
    "NotAllowed",
    "NotFound",
    "Presentation",
    "RetryPolicy",
    "RunSummary",
    "SchemaError",
    "Shown",
    "StorageError",
    "StoredCandidate",
    "StoredRun",
    "VoteResult",
    "add_vote",
    "assign",
    "CROSS_RUN",
    "compare_runs",
    "cross_run_comparisons",
    "export",
    "export_rows",
    "import_file",
    "import_rows",
    "list_runs",
    "load_run",
    "make_comparisons",
    "next_comparison",
    "present",
    "queue_state",
    "resolve_url",
    "save_run",
    "start_session",
    "summary",
    "vote_history",
]
